"""``tfrec-kuai train --distribute parameter_server``: what is refused before any server starts or
any folder is touched, and the per-worker input. The cluster run itself (chief, 2 workers, 2 ps
on 127.0.0.1) is ``test_distributed_training.py::test_parameter_server_cluster_shards_the_tables_and_matches_one_worker``.
"""
import json
import os

import pytest

from tests.fixtures_model import tiny_config
from tests.test_cli_errors import one_line, run_cli

CLUSTER = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"], "ps": ["127.0.0.1:4", "127.0.0.1:5"]}


def _train(capsys, examples, model_dir, *extra):
    return run_cli(capsys, "train", "--examples", examples, "--model_dir", model_dir, "--verbose", "0", *extra)


@pytest.mark.parametrize("tf_config, what", [
    (None, "no chief, worker or ps task"),
    ({"cluster": {"worker": CLUSTER["worker"]}, "task": {"type": "worker", "index": 0}}, "no chief or ps task"),
    ({"cluster": CLUSTER}, "no 'task'"),
    ({"cluster": CLUSTER, "task": {"type": "ps", "index": 2}}, "no task 'ps' 2 in its cluster"),
], ids=["unset", "no_ps", "no_task", "task_outside"])
def test_parameter_server_without_its_cluster_is_refused(capsys, monkeypatch, tiny_examples_dir, tmp_path,
                                                         tf_config, what):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    model_dir = str(tmp_path / "model")
    status, err = _train(capsys, tiny_examples_dir, model_dir, "--distribute", "parameter_server")
    line = one_line(err)
    assert status == 2 and "needs TF_CONFIG naming a cluster of one 'chief', 'worker' and 'ps' tasks" in line, line
    assert what in line, line
    assert not os.path.exists(model_dir)


def test_parameter_server_refuses_validation_and_warm_start_before_restart(capsys, monkeypatch, tiny_examples_dir,
                                                                           tmp_path):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": CLUSTER, "task": {"type": "chief", "index": 0}}))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "keep.txt").write_text("kept")
    # The packaged config validates on the last training day.
    status, err = _train(capsys, tiny_examples_dir, str(model_dir), "--distribute", "parameter_server", "--restart")
    line = one_line(err)
    assert status == 2 and "does not run --validation last_train_day: pass --validation none" in line, line
    status, err = _train(capsys, tiny_examples_dir, str(model_dir), "--distribute", "parameter_server", "--restart",
                         "--validation", "none", "--warm_start", str(tmp_path / "yesterday"))
    line = one_line(err)
    assert status == 2 and "does not run --warm_start" in line, line
    assert (model_dir / "keep.txt").read_text() == "kept"


def test_min_shard_bytes_needs_parameter_server(capsys, tiny_examples_dir, tmp_path):
    status, err = _train(capsys, tiny_examples_dir, str(tmp_path / "model"), "--min_shard_bytes", "8192")
    line = one_line(err)
    assert status == 2 and "--min_shard_bytes is for --distribute parameter_server, not none" in line, line
    assert not os.path.exists(tmp_path / "model")


def test_each_worker_draws_its_own_shuffle(tiny_examples_dir):
    """Keras traces the per-worker dataset function once and runs it on every worker: its shuffles
    must be left to draw a seed when each worker's dataset starts (seeds 0, 0), even though the
    run set a global seed, or every worker would read the same batches."""
    import tensorflow as tf
    from tfrec_kuai.train import training
    config = tiny_config("ranking").override("model", history_length=50)
    tf.keras.utils.set_random_seed(7)
    creator = training.ps_training_input(tiny_examples_dir, config)
    graph = tf.function(lambda: creator(tf.distribute.InputContext())._variant_tensor).get_concrete_function().graph
    shuffles = [op for op in graph.get_operations() if op.type.startswith("ShuffleDataset")]
    assert len(shuffles) == 2   # the files, then the examples
    for op in shuffles:
        seed, seed2 = (tf.get_static_value(t) for t in op.inputs[2:4])   # after the input and the buffer size
        assert (seed, seed2) == (0, 0), op
    # The seeded reader of a one-process run, traced the same way, has its seeds fixed.
    seeded = tf.function(lambda: training.shuffled_batches(tiny_examples_dir, "train", 64, seed=3)._variant_tensor)
    seeds = [tf.get_static_value(op.inputs[2]) for op in seeded.get_concrete_function().graph.get_operations()
             if op.type.startswith("ShuffleDataset")]
    assert seeds and all(s not in (None, 0) for s in seeds), seeds
