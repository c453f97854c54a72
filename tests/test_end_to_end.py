"""End to end through the entry points of ``make demo`` on a tiny log.

simulate → Beam job → train both stages → evaluate → export (fused + portable) → a real
``python -m serving.server`` process → gRPC Predict(recommend) with the official stubs → report.
"""
import os
import subprocess

import numpy as np
import pytest

from tfrec_kuai import demo
from tfrec_kuai.data.examples import read_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    for _title, command in demo.pipeline_steps(out, impressions=6000, seed=3, epochs=1, history_length=20,
                                               train_args=("--steps_per_epoch", "8", "--batch_size", "256")):
        subprocess.run(command, check=True)
    return out


def test_real_recommendations_come_back_over_grpc(demo_dir):
    examples = os.path.join(demo_dir, "examples")
    corpus_ids = set(int(v) for v in read_corpus(examples)["video_id"])
    with demo.ServerProcess(os.path.join(demo_dir, "serving", "kuai")) as server:
        server.wait_available()
        answers = demo.recommend_for_users(server.port, examples, users=2, show=5)
        assert server.process.poll() is None, "the server must keep running after the requests"
    assert len(answers) == 2
    for features, outputs in answers:
        ids = outputs["video_id"][0]
        assert len(ids) > 0
        assert len(set(ids.tolist())) == len(ids), "recommend returns distinct videos"
        assert set(int(v) for v in ids) <= corpus_ids, "every recommendation is a corpus video"
        scores = outputs["score"][0]
        assert np.all(np.diff(scores) <= 1e-6), "best first"
        assert np.all((outputs["p_skip"][0] >= 0) & (outputs["p_skip"][0] <= 1))
        history = demo.describe_history(features)
        assert sum(len(v) for v in history.values()) > 0


def test_both_exports_written_in_tf_serving_layout(demo_dir):
    for base in ("serving", "serving_portable"):
        versions = os.listdir(os.path.join(demo_dir, base, "kuai"))
        assert [v for v in versions if v.isdigit()], f"{base} has a numeric version folder"
        version_dir = os.path.join(demo_dir, base, "kuai", max(v for v in versions if v.isdigit()))
        assert os.path.exists(os.path.join(version_dir, "saved_model.pb"))
        assert os.path.exists(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests"))


def test_report_is_written_with_its_figures(demo_dir):
    subprocess.run(demo.report_command(demo_dir), check=True)
    report = os.path.join(demo_dir, "report")
    page = open(os.path.join(report, "index.html")).read()
    pngs = [f for f in os.listdir(report) if f.endswith(".png")]
    for figure in ("data_by_duration.png", "history_lengths.png", "training_curves.png"):
        assert figure in pngs
        assert f'src="{figure}"' in page
        assert os.path.getsize(os.path.join(report, figure)) > 5000
    assert "skip AUC" in page and "oracle" in page
    assert "Recall@50" in page
