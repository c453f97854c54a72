"""``tfrec-kuai loop``: the daily loop on a small world, uninterrupted and killed with ``kill -9``.

One uninterrupted run of two days (module fixture) and one run killed during day 1's serving and
resumed by the same command: every step for real (the Beam job on the DirectRunner, Keras
training of the tiny config, the export, a ``serving.server`` subprocess hot-swapping versions
over gRPC, its PredictionLog read back). Slow: each run trains six tiny models."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.chromium import check_page
from tests.fixtures_model import tiny_config
from tfrec_kuai import cli
from tfrec_kuai.online.loop import plan

DAYS = 2
FIXED_KEYS = {"day", "model_version", "watch_time_per_user_day", "skip_rate", "failed_requests", "beam_s",
              "train_s", "export_s"}
LOG_FILES = ("log_standard_abtest.csv", "log_random_abtest.csv")


@pytest.fixture(scope="module")
def loop_args(world300, tmp_path_factory):
    config = str(tmp_path_factory.mktemp("loop_config") / "tiny.json")
    with open(config, "w") as f:
        json.dump(tiny_config().to_dict(), f)
    return ["--days", str(DAYS), "--users", "150", "--history_length", "10", "--seed", "3", "--world", world300,
            "--config", config, "--reference", "logging", "--reference", "frozen", "--no_progress"]


@pytest.fixture(scope="module")
def loop_dir(loop_args, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("loop") / "out")
    assert cli.main(["loop", "--output", out] + loop_args) == 0
    return out


def _metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        return json.load(f)


def _day_rows(folder, day):
    rows = []
    for name in LOG_FILES:
        with open(os.path.join(folder, "days", str(day), name)) as f:
            rows += [[int(x) for x in line.split(",")] for line in f.read().splitlines()[1:]]
    return np.array(rows, np.int64).reshape(-1, 19)


def _server_gone(pid, within_s=10.0):
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True          # a zombie has stopped serving; its parent reaps it
        except FileNotFoundError:
            return True
        time.sleep(0.2)
    return False


def _check_reconciles(folder):
    """Rows of every day's logs = the day's metrics impressions = the Beam job's rows in = its train
    examples; every impression attributed to a version of that day or the next; no failed request;
    no impression twice; the request log holds every day's requests."""
    from serving.prediction_log import log_files, read_records

    out = _metrics(folder)
    assert [d["day"] for d in out["days"]] == list(range(1, DAYS + 1))
    assert out["versions"] == list(range(1, DAYS + 2))
    for v in out["versions"]:
        assert os.path.isfile(os.path.join(folder, "serving", "kuai", str(v), "saved_model.pb"))
    keys = []
    for d in out["days"]:
        assert FIXED_KEYS <= set(d), FIXED_KEYS - set(d)
        rows = _day_rows(folder, d["day"])
        assert len(rows) == d["impressions"] == d["beam_rows"]["input"] == d["beam_rows"]["train_examples"] > 0
        assert d["failed_requests"] == 0 and d["unattributed_requests"] == 0
        assert "-1" not in d["versions"] and sum(d["versions"].values()) == d["impressions"]
        assert sum(d["requests_by_version"].values()) == d["requests"] > 0
        # day d's impressions all chosen by version d (trained on day d - 1); from day 2 on, the
        # swap from d - 1 happened under the day's first request, repeated until d answered
        assert d["versions"] == {str(d["day"]): d["impressions"]} and d["model_version"] == d["day"]
        if d["day"] == 1:
            assert d["requests_by_version"] == {"1": d["requests"]} and not d["swap_under_traffic"]
        else:
            assert set(d["requests_by_version"]) == {str(d["day"] - 1), str(d["day"])}
            assert d["requests_by_version"][str(d["day"] - 1)] >= 1 and d["swap_under_traffic"]
        assert all(d[k] > 0 for k in ("beam_s", "evaluate_s", "train_s", "export_s"))
        # offline beside online: the serving model judged on the day's examples it never trained on
        assert 0.0 < d["offline"]["auc_skip"] < 1.0 and d["offline"]["gauc_skip"] > 0.0
        keys.append(rows[:, [0, 1, 4]])
    keys = np.concatenate(keys)
    assert len(np.unique(keys, axis=0)) == len(keys), "an impression is logged twice"
    # the served model's records: at least every finished day's requests (a killed day's too)
    records = list(read_records(log_files(os.path.join(folder, "requests", "kuai"))))
    assert len(records) >= sum(d["requests"] for d in out["days"])
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    assert state["done"] == [f"{d}/{s}" for d, s in plan(DAYS, simulate=False)]
    # continual training: every day after day 0 starts from the day before's models
    assert [state["steps"][f"{d}/Trainer"]["warm_start"] for d in range(DAYS + 1)] == [False] + [True] * DAYS
    return out


@pytest.mark.slow
def test_the_loop_runs_its_days_and_reconciles(loop_dir):
    out = _check_reconciles(loop_dir)
    assert out["setup"]["finished"]
    assert out["day0"]["beam_rows"]["input"] == 30_000
    for d in out["days"]:
        for name in ("logging", "frozen"):
            ref = d["references"][name]
            assert ref["impressions"] > 0 and ref["watch_time_per_user_day"] > 0
    # frozen is version 1 kept serving: on day 1 (served by version 1) it is the loop itself
    assert out["days"][0]["references"]["frozen"] == {k: out["days"][0][k] for k in
                                                      ("watch_time_per_user_day", "skip_rate", "impressions")}
    with open(os.path.join(loop_dir, "server.json")) as f:
        assert _server_gone(json.load(f)["pid"]), "the loop's server outlived the loop"


@pytest.mark.slow
def test_the_report_renders(loop_dir, tmp_path):
    page = os.path.join(loop_dir, "report", "index.html")
    with open(page) as f:
        text = f.read()
    assert "finished" in text and "v1:" in text
    check_page(page, images=5, tmp=str(tmp_path))


def _state(folder):
    with open(os.path.join(folder, "state.json")) as f:
        return json.load(f)


def _kill_when(command, ready, settle_s, timeout_s=300):
    """Start the loop's command, ``kill -9`` it ``settle_s`` after ``ready()`` holds."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while not ready() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert ready(), "the loop never reached the step to kill it in"
    time.sleep(settle_s)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_kill_9_and_resume(loop_dir, loop_args, tmp_path):
    """Killed during day 1's serving, resumed and killed again during day 2's training, the same
    command finishes: the loop reconciles row for row, every day's log is the uninterrupted run's
    byte for byte (the same world draws, the same cohort rebuilt from disk, the same models:
    training on the CPU with a fixed seed is repeatable, and each day is served whole by the
    version trained the day before — the swap's repeated requests only decide when the new
    version answers, not what it answers), and each killed loop's server died with it."""
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "tfrec_kuai.cli", "loop", "--output", out] + loop_args
    server_file = os.path.join(out, "server.json")
    _kill_when(command, lambda: os.path.exists(server_file), 0.5)       # day 1's requests running
    with open(server_file) as f:
        assert _server_gone(json.load(f)["pid"]), "kill -9 of the loop left its server running"
    assert "1/Serving" not in _state(out)["done"] and not os.path.exists(os.path.join(out, "days", "1"))
    os.remove(server_file)

    _kill_when(command, lambda: os.path.exists(os.path.join(out, "models", "2.tmp")), 2.0)   # day 2's Trainer
    with open(server_file) as f:
        assert _server_gone(json.load(f)["pid"]), "kill -9 of the loop left its server running"
    assert _state(out)["done"][-1] == "2/Evaluator"

    assert cli.main(["loop", "--output", out] + loop_args) == 0
    resumed = _check_reconciles(out)
    for day in range(1, DAYS + 1):
        for name in LOG_FILES + ("ground_truth.csv",):
            with open(os.path.join(out, "days", str(day), name), "rb") as a, \
                    open(os.path.join(loop_dir, "days", str(day), name), "rb") as b:
                assert a.read() == b.read(), f"day {day}'s {name} differs from the uninterrupted run's"
    assert [d["impressions"] for d in resumed["days"]] == [d["impressions"] for d in _metrics(loop_dir)["days"]]
    assert not os.path.exists(os.path.join(out, "models", "2.tmp"))


def test_loop_misuse_is_one_line_and_exit_2(world300, tmp_path, capsys):
    base = ["loop", "--output", str(tmp_path / "out"), "--world", world300]
    for argv in (base + ["--days", "0"], base + ["--days", "1", "--reference", "oracel"],
                 base + ["--days", "1", "--variant", "bogus"], ["loop", "--days", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "error:" in err, err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("not a loop")
    cases = [(["loop", "--output", str(tmp_path / "busy"), "--world", world300, "--days", "1", "--users", "10"],
              "holds no state.json"),
             (["loop", "--output", str(tmp_path / "out2"), "--world", str(tmp_path / "nothing"), "--days", "1"],
              "no such folder"),
             (["loop", "--output", str(tmp_path / "out3"), "--world", world300, "--days", "1", "--config",
               str(tmp_path / "none.json")], "--config"),
             (["loop", "--output", str(tmp_path / "out4"), "--world", world300, "--days", "1", "--users", "301"],
              "--users 301: the world has only 300 users")]
    for argv, text in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and text in err, err
    assert not any(os.path.exists(tmp_path / f"out{i}") for i in (2, 3, 4))
    assert os.listdir(tmp_path / "busy") == ["x.txt"]


def test_a_resume_with_other_options_is_refused(world300, tmp_path, capsys):
    """A loop folder remembers the options that made it: resuming it with another seed is refused
    before anything runs, and the folder is left as it was."""
    from tfrec_kuai.online.loop import FIXED, Loop

    options = {k: None for k in FIXED}
    options.update(variant="full", users=10, seed=0, history_length=5, world=world300, references=[], xla="off",
                   page_size=10, chunk_users=10, impressions=1, world_users=0, world_days=1)
    Loop(str(tmp_path / "loop"), 1, options)            # creates the folder and its state, runs nothing
    before = open(tmp_path / "loop" / "state.json").read()
    argv = ["loop", "--output", str(tmp_path / "loop"), "--world", world300, "--days", "1", "--users", "10",
            "--history_length", "5", "--chunk_users", "10", "--impressions", "1", "--world_days", "1", "--seed", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--seed 0" in err, err
    assert open(tmp_path / "loop" / "state.json").read() == before
