"""``tfrec-kuai train --distribute multi_worker | parameter_server``: clusters of real processes on
127.0.0.1 (TF_CONFIG), each run reaching the quality of the one-worker run of the same command,
config and data on the eval day.

* ``multi_worker``: two worker processes; the global batch is the same, so the optimisation is
  the same up to which examples share a step, and only the chief writes the model directory.
* ``parameter_server``: two ``ps`` and two ``worker`` tasks serving, the chief training; the id
  tables are sharded over both ``ps`` tasks and the saved model evaluates like any other.
"""
import json
import os
import re
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


@pytest.fixture(scope="module")
def one_worker_auc(distributed_setup):
    """The eval-day skip AUC of the one-process run of the command the clusters run."""
    examples, root, config_path = distributed_setup
    single_dir = os.path.join(root, "single")
    subprocess.run(_train_command(examples, single_dir, config_path), check=True, timeout=600)
    return _auc_skip(examples, single_dir, os.path.join(root, "eval_single"))


def _tf_config(cluster, kind, index):
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_two_workers_match_one_worker(distributed_setup, one_worker_auc):
    examples, root, config_path = distributed_setup
    multi_dir = os.path.join(root, "multi")

    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=_tf_config(cluster, "worker", index))
        workers.append(subprocess.Popen(_train_command(examples, multi_dir, config_path, "--distribute", "multi_worker"),
                                        env=env))
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], f"worker exit codes {codes}"

    # Only the chief (worker 0) wrote the model directory; worker 1 wrote its scratch folder.
    assert os.path.exists(os.path.join(multi_dir, "config.json"))
    assert os.path.exists(os.path.join(multi_dir, "weights", "model.index"))
    scratch = os.path.join(root, ".multi-worker-1")
    assert os.path.isdir(scratch) and scratch != multi_dir

    history_multi = json.load(open(os.path.join(multi_dir, "history.json")))
    assert len(history_multi["loss"]) == TRAIN["epochs"]
    _assert_one_worker_quality(one_worker_auc, _auc_skip(examples, multi_dir, os.path.join(root, "eval_multi")))


def _assert_one_worker_quality(auc_single, auc_cluster):
    assert auc_single > 0.55 and auc_cluster > 0.55, (auc_single, auc_cluster)
    assert abs(auc_single - auc_cluster) < 0.03, (auc_single, auc_cluster)


def test_parameter_server_cluster_shards_the_tables_and_matches_one_worker(distributed_setup, one_worker_auc):
    """Chief + 2 workers + 2 ps, every task running the same command. The tiny tables (57 KB and
    28 KB) are split by an 8 KiB smallest shard, which keeps every dense kernel (≤ 5.5 KB) whole."""
    examples, root, config_path = distributed_setup
    ps_dir = os.path.join(root, "parameter_server")
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(5)]
    cluster = {"chief": addresses[:1], "worker": addresses[1:3], "ps": addresses[3:]}
    command = _train_command(examples, ps_dir, config_path, "--distribute", "parameter_server",
                             "--min_shard_bytes", "8192")
    servers = []
    try:
        for kind, index in (("ps", 0), ("ps", 1), ("worker", 0), ("worker", 1)):
            servers.append(subprocess.Popen(command, env=dict(os.environ, TF_CONFIG=_tf_config(cluster, kind, index)),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        chief = subprocess.run(command, env=dict(os.environ, TF_CONFIG=_tf_config(cluster, "chief", 0)),
                               capture_output=True, text=True, timeout=300)
        assert chief.returncode == 0, chief.stdout[-3000:] + chief.stderr[-3000:]
        # The servers serve until stopped: none exited while the chief trained.
        assert [s.poll() for s in servers] == [None] * 4
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=60)

    shards = next(line for line in chief.stdout.splitlines() if line.startswith("embedding tables over the ps"))
    for table in ("video_id", "author_id"):
        match = re.search(table + r" (\d+)x\d+ in 2 shards \((\d+) rows on /job:ps/task:(\d), "
                                  r"(\d+) rows on /job:ps/task:(\d)\)", shards)
        assert match, shards
        rows, first, first_task, second, second_task = (int(g) for g in match.groups())
        assert first + second == rows and {first_task, second_task} == {0, 1}, shards
    history = json.load(open(os.path.join(ps_dir, "history.json")))
    assert len(history["loss"]) == TRAIN["epochs"] and history["examples_per_s"][0] > 0
    _assert_one_worker_quality(one_worker_auc, _auc_skip(examples, ps_dir, os.path.join(root, "eval_ps")))


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
