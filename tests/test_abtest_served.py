"""The ``served`` policy over a real loopback server: it gives the in-process arm's metrics and
logs on the same seed (the serving path is the model, nothing else), it calls a server named by
``--server``, and an unreachable server is one line, exit 2, nothing written."""
import filecmp
import json
import os

import pytest

from serving.server import start_in_process
from tfrec_kuai import cli
from tfrec_kuai.online.abtest import run_abtest
from tfrec_kuai.online.abtest_page import PAGE, PLOTS
from serving.model_config import pinned_versions, write_model_config
from tests.fixtures_serving import free_port

LIMIT = 24_000    # bytes: the export's metadata fits, a page request of 20 users does not
LOGS = ("log_standard_abtest.csv", "log_random_abtest.csv", "ground_truth.csv")


def _ab(world, tmp_path, arms, **kw):
    return run_abtest(world, arms, users=8, days=1, seed=3, output=str(tmp_path), paired=True, progress=False,
                      replicates=50, **kw)


def _same_arms(out, tmp_path, a, b):
    """Every metric of arm ``b`` equals arm ``a``'s, every lift is 0, the logs are byte-equal."""
    ma, mb = dict(out["arms"][a]), dict(out["arms"][b])
    assert ma.pop("policy") != mb.pop("policy")
    assert ma == mb and ma["impressions"] > 0 and mb["failed_requests"] == 0
    for metric, lift in out["lift"][b].items():
        if lift["value"] is not None:
            assert lift["value"] == 0.0, metric
    for name in LOGS:
        assert filecmp.cmp(tmp_path / "arms" / a / name, tmp_path / "arms" / b / name, shallow=False), name


@pytest.mark.slow
def test_served_and_in_process_arms_give_the_same_metrics(kuai_exports, tiny_log_dir, tmp_path):
    """``served:<export dir>``: the command serves the export itself (a subprocess on a free
    loopback port, stopped at the end) and its arm equals the in-process arm of the same export."""
    export = os.path.join(kuai_exports["base"], "kuai")
    out = _ab(tiny_log_dir, tmp_path, [("inproc", f"savedmodel:{export}"), ("grpc", f"served:{export}")])
    _same_arms(out, tmp_path, "inproc", "grpc")
    # the server's config is not left here: the folder holds the logs, metrics.json and the page
    assert sorted(os.listdir(tmp_path)) == sorted(["arms", "metrics.json", PAGE, *PLOTS])


@pytest.mark.slow
def test_served_arm_calls_the_server_named_by_server(capsys, kuai_exports, tiny_log_dir, tmp_path):
    """``--server ADDRESS`` with ``served:<model name>``: a server the test started, serving two
    models from one multi-model config (the fused and the portable export); the fused model's arm
    equals the in-process arm of the same export, the portable one serves too; a model name the
    server lacks is refused with its gRPC code."""
    exports = {"kuai": kuai_exports["fused"], "kuai_portable": kuai_exports["portable"]}
    config = write_model_config(str(tmp_path / "models.config"), pinned_versions(exports))
    server = start_in_process(port=0, model_config_file=config, file_system_poll_wait_seconds=0)
    try:
        status = cli.main(["abtest", "--world", tiny_log_dir, "--output", str(tmp_path / "o"), "--users", "8",
                           "--seed", "3", "--paired", "--bootstrap", "50", "--no_progress",
                           "--server", f"127.0.0.1:{server.port}",
                           "--arm", f"inproc=savedmodel:{kuai_exports['fused']}",
                           "--arm", "grpc=served:kuai", "--arm", "portable=served:kuai_portable"])
        capsys.readouterr()
        refused = cli.main(["abtest", "--world", tiny_log_dir, "--output", str(tmp_path / "refused"), "--users", "4",
                            "--no_progress", "--server", f"127.0.0.1:{server.port}",
                            "--arm", "a=random", "--arm", "b=served:nosuch"])
    finally:
        server.stop()
    assert status == 0
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "tfrec-kuai abtest" in line]
    assert refused == 2 and len(err) == 1 and "served:nosuch on 127.0.0.1:" in err[0] and \
        "gRPC NOT_FOUND" in err[0], err        # a model the server does not have: its gRPC code, one line
    assert not (tmp_path / "refused").exists()
    out = json.load(open(tmp_path / "o" / "metrics.json"))
    _same_arms(out, tmp_path / "o", "inproc", "grpc")
    assert out["arms"]["portable"]["impressions"] > 0 and out["arms"]["portable"]["failed_requests"] == 0


def test_an_unreachable_server_is_one_line_and_exit_2(capsys, tiny_log_dir, tmp_path):
    address = f"127.0.0.1:{free_port()}"           # nothing listens there
    status = cli.main(["abtest", "--world", tiny_log_dir, "--output", str(tmp_path / "o"), "--users", "4",
                       "--no_progress", "--server", address, "--arm", "a=random", "--arm", "b=served:kuai"])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("tfrec-kuai abtest: error: ") and \
        f"served:kuai on {address}: gRPC UNAVAILABLE" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_request_the_server_refuses_is_one_line_with_its_code(capsys, kuai_exports, tiny_log_dir, tmp_path):
    """A page request beyond the server's message limit: RESOURCE_EXHAUSTED, not retried, one
    line that says how to fit, exit 2, and the half-written output removed; the server keeps
    serving (its metadata still answers)."""
    config = write_model_config(str(tmp_path / "models.config"), pinned_versions({"kuai": kuai_exports["fused"]}))
    server = start_in_process(port=0, model_config_file=config, file_system_poll_wait_seconds=0,
                              max_message_size_bytes=LIMIT)
    try:
        capsys.readouterr()
        status = cli.main(["abtest", "--world", tiny_log_dir, "--output", str(tmp_path / "o"), "--users", "20",
                           "--no_progress", "--paired", "--server", f"127.0.0.1:{server.port}",
                           "--arm", "a=random", "--arm", "b=served:kuai"])
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "tfrec-kuai abtest" in line]
        from tfrec_kuai.online.served import ServedPolicy
        from tfrec_kuai.sim.world import World
        assert ServedPolicy("served:kuai", World(tiny_log_dir), f"127.0.0.1:{server.port}", "kuai").history_length
    finally:
        server.stop()
    assert status == 2 and len(err) == 1, err
    assert "served:kuai on 127.0.0.1:" in err[0] and "gRPC RESOURCE_EXHAUSTED" in err[0] and "--chunk_users" in err[0]
    assert not (tmp_path / "o").exists(), "a run stopped part-way leaves no half-written output"
