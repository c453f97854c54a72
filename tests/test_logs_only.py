"""The interaction log alone, without the video and user tables, goes through every stage.

docs/design.md §3 makes the side tables optional; many users have only the log. simulate → the Beam
job without ``--video_features`` / ``--user_features`` (empty author and tag vocabularies) →
train both stages → evaluate → export (fused and portable) → a real ``serving.server`` process
answering a gRPC Predict(recommend), and the portable SavedModel's own ``recommend`` signature →
the report. Every author and tag is then out-of-vocabulary, and the training log, the model
folder, ``metrics.json`` and the report say which side information was absent.
"""
import json
import os
import subprocess

import numpy as np
import pytest

from tfrec_kuai import demo
from tfrec_kuai.data.examples import read_corpus

pytestmark = pytest.mark.slow


def quiet_env():
    """The environment of a user who set no TensorFlow log level (this process' default is not one)."""
    env = dict(os.environ)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TFREC_KUAI_TF_LOG_DEFAULTED"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def logs_only_dir(tmp_path_factory):
    """Every step of the demo on 600 impressions, with the Beam job given the logs alone; the
    output of each step, by title."""
    out = str(tmp_path_factory.mktemp("logs_only"))
    outputs = {}
    for title, command in demo.pipeline_steps(out, impressions=600, seed=5, epochs=1, history_length=10,
                                               side_tables=False, simulate_args=("--users", "8", "--days", "3",
                                                                                 "--no_progress"),
                                               beam_args=("--eval_days", "1"),
                                               train_args=("--steps_per_epoch", "1", "--batch_size", "32")):
        done = subprocess.run(command, capture_output=True, text=True, env=quiet_env())
        assert done.returncode == 0, f"{title} failed:\n{done.stderr[-3000:]}"
        outputs[title] = done
    return out, outputs


def test_the_examples_know_no_author_and_no_tag(logs_only_dir):
    out, _ = logs_only_dir
    vocab = os.path.join(out, "examples", "vocab")
    assert open(os.path.join(vocab, "author_id.txt")).read() == ""
    assert open(os.path.join(vocab, "tag.txt")).read() == ""
    assert open(os.path.join(vocab, "video_id.txt")).read().split(), "videos are still known"


def test_training_says_which_side_information_was_absent(logs_only_dir):
    out, outputs = logs_only_dir
    for stage, title in (("ranking", "train ranking (feedback-aware, multi-objective)"),
                         ("retrieval", "train retrieval (two-tower)")):
        assert "video table absent" in outputs[title].stdout and "user table absent" in outputs[title].stdout
        # The CLI keeps TensorFlow's C++ start-up notices off stderr.
        assert "oneDNN" not in outputs[title].stderr and "cuInit" not in outputs[title].stderr
        with open(os.path.join(out, "models", stage, "examples.json")) as f:
            record = json.load(f)
        assert record["side_information"]["absent"] == ["video_features", "user_features"]
        assert record["side_information"]["video_features"]["status"] == "absent"
        assert record["history_length"] == 10


def test_evaluation_has_its_metrics_and_names_the_absent_tables(logs_only_dir):
    out, _ = logs_only_dir
    with open(os.path.join(out, "eval", "ranking", "metrics.json")) as f:
        ranking = json.load(f)
    with open(os.path.join(out, "eval", "retrieval", "metrics.json")) as f:
        retrieval = json.load(f)
    assert ranking["eval_examples"] > 0 and 0.0 <= ranking["auc_skip"] <= 1.0
    assert ranking["side_information"]["absent"] == ["video_features", "user_features"]
    assert retrieval["eval_queries"] > 0 and 0.0 <= retrieval["recall_at_50"] <= 1.0
    assert retrieval["trained_on"]["side_information"]["video_features"]["status"] == "absent"


def test_the_fused_export_serves_recommendations(logs_only_dir):
    out, _ = logs_only_dir
    examples = os.path.join(out, "examples")
    corpus_ids = set(int(v) for v in read_corpus(examples)["video_id"])
    with demo.ServerProcess(os.path.join(out, "serving", "kuai")) as server:
        server.wait_available()
        answers = demo.recommend_for_users(server.port, examples, users=1, show=3)
        assert server.process.poll() is None
    (_, outputs), = answers
    ids = outputs["video_id"][0]
    assert len(ids) > 0 and set(int(v) for v in ids) <= corpus_ids
    assert np.all(np.isfinite(outputs["score"][0]))


def test_the_portable_export_recommends_through_its_signature(logs_only_dir):
    import tensorflow as tf
    from tfrec_kuai.data.examples import read_serialized_examples
    out, _ = logs_only_dir
    base = os.path.join(out, "serving_portable", "kuai")
    loaded = tf.saved_model.load(os.path.join(base, max(os.listdir(base), key=lambda v: int(v) if v.isdigit() else -1)))
    recommend = loaded.signatures["recommend"]
    parsed = tf.io.parse_example(read_serialized_examples(os.path.join(out, "examples"), "eval", 2),
                                 {name: tf.io.FixedLenFeature(spec.shape[1:], spec.dtype)
                                  for name, spec in recommend.structured_input_signature[1].items()})
    outputs = recommend(**parsed)
    assert outputs["video_id"].shape[0] == 2 and outputs["video_id"].shape[1] > 0
    assert np.all(np.isfinite(outputs["score"].numpy()))


def test_the_report_names_the_absent_side_tables(logs_only_dir):
    out, _ = logs_only_dir
    done = subprocess.run(demo.report_command(out), capture_output=True, text=True, env=quiet_env())
    assert done.returncode == 0, done.stderr[-3000:]
    page = open(os.path.join(out, "report", "index.html")).read()
    assert "video table absent" in page and "user table absent" in page
    assert "ranking model trained with" in page
