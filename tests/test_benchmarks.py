"""The benchmarks' own bookkeeping: they must time the model they are asked to (today's default, or
the ranking config file given), never one left in their work folder by an earlier build; and the
parts of them that compute (a grown corpus, a log's heaviest user, a profile's parts) are right."""
import os
import sys

import pytest

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


def test_the_grown_corpus_copies_real_rows_under_new_ids():
    import numpy as np
    import bench_retrieve_corpus
    corpus = {"video_id": np.array([5, 9, 2], np.int64), "author_id": np.array([1, 2, 3], np.int64),
              "tag": np.array([7, 8, 9], np.int64), "duration_s": np.array([1.0, 2.0, 3.0], np.float32)}
    grown = bench_retrieve_corpus.grown_corpus(corpus, 1000)
    assert all(len(v) == 1000 for v in grown.values())
    assert len(np.unique(grown["video_id"])) == 1000 and (grown["video_id"][3:] > 9).all()
    rows = {(a, t, d) for a, t, d in zip(corpus["author_id"], corpus["tag"], corpus["duration_s"])}
    assert {(a, t, d) for a, t, d in zip(grown["author_id"], grown["tag"], grown["duration_s"])} == rows
    assert (bench_retrieve_corpus.grown_corpus(corpus, 2)["video_id"] == [5, 9]).all()


def test_the_largest_user_is_counted_over_both_logs(tiny_log_dir):
    import numpy as np
    import bench_pipeline_scale
    logs = [np.loadtxt(os.path.join(tiny_log_dir, name), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
            for name in ("log_standard_sim.csv", "log_random_sim.csv")]
    users = np.concatenate([log[:, 0] for log in logs])
    assert bench_pipeline_scale.largest_user(tiny_log_dir) == np.bincount(users).max()


@pytest.mark.slow
def test_the_profile_puts_each_op_of_a_traced_step_in_one_part(tiny_examples_dir, tmp_path):
    import profile_training_step as profile
    from tfrec_kuai import ops
    assert profile.part_of("history/encoder/feedback_weighted_attention/FeedbackWeightedAttention",
                           "FeedbackWeightedAttention") == "attention op, forward"
    assert profile.part_of("Adam/UnsortedSegmentSum", "UnsortedSegmentSum").startswith("optimizer")
    assert profile.part_of("gradient_tape/history/encoder/Slice", "Slice").endswith("(backward)")
    implementation = "fused" if ops.fused_available() else "composite"
    config, times, wall, path = profile.profile(tiny_examples_dir, implementation, steps=2, warmup=2,
                                                logdir=str(tmp_path), batch_size=64)
    assert os.path.isfile(path) and wall > 0
    parts = {profile.part_of(scope, op_type) for scope, op_type in times}
    assert {"optimizer (Adam, sparse updates)", "embedding lookups and their gradients"} <= parts
    if implementation == "fused":
        assert {"attention op, forward", "attention op, backward"} <= parts
    else:
        assert "attention, composite ops (forward + backward)" in parts


def test_the_attention_benchmark_reads_the_bandwidth_it_compares_against_in_the_same_run(capsys):
    import bench_attention
    from tfrec_kuai import ops
    impls = ["fused", "composite"] if ops.fused_available() else ["composite"]
    rows = bench_attention.main(["--shapes", "main", "--fills", "1.0", "--repeats", "1", "--warmup", "0",
                                 "--impls", *impls])
    forward = [r for r in rows if r["mode"] == "fwd" and r["impl"] != "isa"]
    assert {r["impl"] for r in forward} == {*impls, "stream"}
    stream = next(r for r in forward if r["impl"] == "stream")
    assert stream["of_stream"] == pytest.approx(1.0) and stream["gbps"] > 0
    for r in forward:
        # of stream = this forward's GB/s of minimal bytes over the stream's GB/s of its tensors.
        assert r["of_stream"] == pytest.approx(r["gbps"] / stream["gbps"])
    assert all(r["impl"] != "stream" for r in rows if r["mode"] == "fwd+bwd")
    out = capsys.readouterr().out
    assert "of stream" in out and f"fused kernels: {ops.fused_isa() or 'not built'}" in out
    if ops.fused_available():
        from tfrec_kuai import _native
        isa_rows = [r for r in rows if r["impl"] == "isa"]
        if _native.fwa_isa_supported("avx2"):   # the two copies of the kernels, timed in the same run
            assert sorted(r["mode"] for r in isa_rows) == ["fwd", "fwd+bwd"]
            assert all(r["speedup"] == pytest.approx(r["baseline_ms"] / r["avx2_ms"]) for r in isa_rows)
        else:
            assert not isa_rows
