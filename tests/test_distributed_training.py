"""``tfrec-kuai train --distribute multi_worker``: two worker processes on 127.0.0.1 (TF_CONFIG).

The same command, config and data as a one-worker run; the two-worker model must reach the same
quality on the eval day (the global batch is the same, so the optimisation is the same up to
which examples share a step), and only the chief writes the model directory.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.fixtures_model import tiny_config

pytestmark = pytest.mark.slow

TRAIN = dict(batch_size=256, epochs=1, steps_per_epoch=30, validation="none", seed=0, learning_rate=0.01)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train_command(examples, model_dir, config_path, *extra):
    return [sys.executable, "-m", "tfrec_kuai.cli", "train", "--examples", examples, "--model_dir", model_dir,
            "--stage", "ranking", "--config", config_path, "--verbose", "0", *extra]


@pytest.fixture(scope="module")
def distributed_setup(tiny_examples_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    config_path = str(root / "ranking_tiny.json")
    tiny_config("ranking", **TRAIN).save(config_path)
    return tiny_examples_dir, str(root), config_path


def _auc_skip(examples, model_dir, output):
    from tfrec_kuai.evaluate.evaluation import evaluate
    return evaluate(examples, model_dir, output, log=lambda *a: None)["auc_skip"]


def test_two_workers_match_one_worker(distributed_setup):
    examples, root, config_path = distributed_setup
    single_dir, multi_dir = os.path.join(root, "single"), os.path.join(root, "multi")
    subprocess.run(_train_command(examples, single_dir, config_path), check=True, timeout=600)

    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(_train_command(examples, multi_dir, config_path, "--distribute", "multi_worker"),
                                        env=env))
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], f"worker exit codes {codes}"

    # Only the chief (worker 0) wrote the model directory; worker 1 wrote its scratch folder.
    assert os.path.exists(os.path.join(multi_dir, "config.json"))
    assert os.path.exists(os.path.join(multi_dir, "weights", "model.index"))
    scratch = os.path.join(root, ".multi-worker-1")
    assert os.path.isdir(scratch) and scratch != multi_dir

    history_single = json.load(open(os.path.join(single_dir, "history.json")))
    history_multi = json.load(open(os.path.join(multi_dir, "history.json")))
    assert len(history_multi["loss"]) == len(history_single["loss"]) == TRAIN["epochs"]

    auc_single = _auc_skip(examples, single_dir, os.path.join(root, "eval_single"))
    auc_multi = _auc_skip(examples, multi_dir, os.path.join(root, "eval_multi"))
    assert auc_single > 0.55 and auc_multi > 0.55, (auc_single, auc_multi)
    assert abs(auc_single - auc_multi) < 0.03, (auc_single, auc_multi)


def test_multi_worker_strategy_gets_the_longer_heartbeat_timeout():
    """The coordination service the strategy uses is the one configured with HEARTBEAT_TIMEOUT_S
    (a one-worker cluster, in its own process: the service is configured once per process)."""
    code = ("from tfrec_kuai.train import distribute\n"
            "from tensorflow.python.eager import context\n"
            "distribute.make_strategy('multi_worker')\n"
            "c = context.context().config.experimental.coordination_config\n"
            "print(c.service_type, c.heartbeat_timeout_in_ms, distribute.HEARTBEAT_TIMEOUT_S)\n")
    cluster = {"cluster": {"worker": [f"127.0.0.1:{_free_ports(1)[0]}"]}, "task": {"type": "worker", "index": 0}}
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TF_CONFIG=json.dumps(cluster)),
                         capture_output=True, text=True, timeout=300, check=True).stdout.split()
    assert out[0] == "standalone" and int(out[1]) == int(out[2]) * 1000 == 60_000
