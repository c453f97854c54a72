"""The benchmarks' own bookkeeping: they must time the model they are asked to (today's default, or
the ranking config file given), never one left in their work folder by an earlier build."""
import os
import sys

import tfrec_kuai  # noqa: F401

from tests.fixtures_model import tiny_config
from tfrec_kuai.train import training
from tfrec_kuai.config import load_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_serving


def test_models_built_by_another_default_are_rebuilt_and_their_exports_dropped(tiny_examples_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(tiny_examples_dir)
    # A ranking model of another config (the tiny one), and an export made from it.
    stale = tiny_config("ranking")
    vocabularies = training.read_vocabularies(tiny_examples_dir)
    training.save_model_dir(training.build_model(stale, vocabularies), stale, str(work / "ranking"))
    (work / "export_xla_on" / "kuai" / "1").mkdir(parents=True)

    ranking_dir, retrieval_dir, _ = bench_serving.build_models(str(work), impressions=0)

    today = load_config(stage="ranking").override("model", history_length=50, stage="ranking")
    assert training.load_config_from_model_dir(ranking_dir).model == today.model
    assert not (work / "export_xla_on").exists()
    # Built with today's default, a model is kept as it is.
    before = os.path.getmtime(os.path.join(retrieval_dir, "config.json"))
    bench_serving.build_models(str(work), impressions=0)
    assert os.path.getmtime(os.path.join(retrieval_dir, "config.json")) == before
    # Another ranking config file asked for: the ranking model is rebuilt with it, retrieval kept.
    path = os.path.join(bench_serving.HERE, "configs", "ranking_experts32.json")
    bench_serving.build_models(str(work), impressions=0, ranking_config=path)
    assert training.load_config_from_model_dir(ranking_dir).model.expert_units == 32
    assert os.path.getmtime(os.path.join(retrieval_dir, "config.json")) == before
