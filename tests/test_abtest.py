"""``tfrec-kuai abtest``: metrics and lifts, the oracle above random, a policy against itself, the
requests a model policy gets against the Beam job's examples, and CLI misuse."""
import filecmp
import json
import os

import numpy as np
import pytest

from tfrec_kuai import cli
from tfrec_kuai.online.abtest import run_abtest
from tfrec_kuai.online.policies import PopularPolicy
from tfrec_kuai.online.requests import RequestBuilder
from tfrec_kuai.online.worldlog import read_world_log
from tfrec_kuai.sim.world import World

CONTRACT_KEYS = {"users", "impressions", "watch_time_per_user_day", "skip_rate", "valid_rate", "long_rate",
                 "likes_per_1000", "hates_per_1000", "visits_per_user_day", "distinct_videos", "repeat_rate",
                 "follows_per_1000", "distinct_authors"}


def _ab(world, tmp_path, arms, **kw):
    kw.setdefault("users", 120)
    kw.setdefault("days", 1)
    kw.setdefault("seed", 1)
    return run_abtest(world, arms, output=str(tmp_path), progress=False, replicates=400, **kw)


def test_oracle_beats_random_and_metrics_follow_the_contract(world300, tmp_path):
    out = _ab(world300, tmp_path, [("random", "random"), ("popular", "popular"), ("oracle", "oracle")], paired=True)
    assert json.load(open(tmp_path / "metrics.json")) == out
    for name, arm in out["arms"].items():
        assert CONTRACT_KEYS <= arm.keys(), name
        assert arm["users"] == 120 and arm["impressions"] > 0
        assert arm["repeat_rate"] == 0.0                                  # these policies never reshow a video
        with open(tmp_path / "arms" / name / "log_standard_abtest.csv") as f:
            rows = f.read().splitlines()
        with open(tmp_path / "arms" / name / "log_random_abtest.csv") as f:
            rows += f.read().splitlines()[1:]
        assert len(rows) - 1 == arm["impressions"]                          # every served impression logged
    for metric in CONTRACT_KEYS - {"users", "impressions", "distinct_videos", "distinct_authors"}:
        assert set(out["lift"]["oracle"][metric]) == {"value", "low", "high"}
    watch = out["lift"]["oracle"]["watch_time_per_user_day"]
    assert watch["low"] > 0 and watch["low"] <= watch["value"] <= watch["high"]     # the interval excludes 0
    assert out["lift"]["popular"]["watch_time_per_user_day"]["value"] > 0
    assert out["lift"]["oracle"]["skip_rate"]["high"] < 0
    assert out["arms"]["random"]["visits_per_user_day"] == out["arms"]["oracle"]["visits_per_user_day"]


def test_a_paired_policy_against_itself_replays_exactly(world300, tmp_path):
    """Common random numbers: the same policy under two names serves and sees the same things,
    so every lift is exactly 0 with a zero-width interval, and the two logs are the same file."""
    out = _ab(world300, tmp_path, [("a", "popular"), ("b", "popular")], paired=True, users=60)
    for metric, lift in out["lift"]["b"].items():
        if lift["value"] is not None:
            assert lift["value"] == 0.0 and lift["low"] in (0.0, None) and lift["high"] in (0.0, None), metric
    for profile in ("by_day", "skip_rate_by_position", "visit_lengths"):     # the page's plots, intervals too
        assert out["arms"]["a"][profile] == out["arms"]["b"][profile], profile
    for name in ("log_standard_abtest.csv", "ground_truth.csv"):
        assert filecmp.cmp(tmp_path / "arms" / "a" / name, tmp_path / "arms" / "b" / name, shallow=False)


def test_a_hash_split_of_a_policy_against_itself_shows_no_lift(world300, tmp_path):
    """random vs random on a hash split (different users in each arm): the 95 % interval of the
    watch-time and skip-rate lifts covers 0 in most seeds, and the lifts are not trivially 0."""
    covered, values = {"watch_time_per_user_day": 0, "skip_rate": 0}, []
    seeds = range(6)
    for seed in seeds:
        out = _ab(world300, tmp_path / str(seed), [("a", "random"), ("b", "random")], users=300, seed=seed)
        assert out["arms"]["a"]["users"] + out["arms"]["b"]["users"] == 300
        assert 90 < out["arms"]["a"]["users"] < 210                        # a hash split, about half each
        for metric in covered:
            lift = out["lift"]["b"][metric]
            covered[metric] += lift["low"] <= 0 <= lift["high"]
            values.append(lift["value"])
    assert all(count >= 5 for count in covered.values()), covered
    assert all(v != 0 for v in values)


def test_requests_carry_what_the_beam_job_writes(tiny_log_dir, tmp_path):
    """Requests a model policy gets, built at run time from the world's log, equal the features the
    Beam job writes for the impression served at that moment, on the same log."""
    from beam_pipelines import build_examples
    from tfrec_kuai.data import examples as data

    world = World(tiny_log_dir, seed=4)
    log = read_world_log(tiny_log_dir)
    recorded = []

    class RecordingPopular(PopularPolicy):
        """The popular policy, keeping the requests a model policy would have been sent."""
        history_length = 50

        def __init__(self, *args):
            super().__init__(*args)
            self.builder = RequestBuilder(world, self.history_length)

        def recommend(self, page):
            recorded.append(self.builder.build(page))
            return super().recommend(page)

    policy = RecordingPopular("popular", world, log)
    cohort = world.cohort(np.arange(world.num_users), log, policy.history_length)
    cols, truth, _ = world.serve(cohort, policy, days=1).columns()
    arm = tmp_path / "arm"
    from tfrec_kuai.online.abtest import ArmLog
    writer = ArmLog(str(arm))
    writer.write(cols, truth)
    writer.close()
    examples = tmp_path / "examples"
    build_examples.run(["--input", f"{tiny_log_dir}/log_*.csv,{arm}/log_*.csv", "--output", str(examples),
                        "--video_features", os.path.join(tiny_log_dir, "video_features_basic_sim.csv"),
                        "--history_length", "50", "--eval_days", "1"])
    by_key = {}
    for split in ("train", "eval"):
        for batch in data.make_dataset(str(examples), split, 4096):
            batch = {k: v.numpy() for k, v in batch.items()}
            for i, key in enumerate(zip(batch["user_id"].tolist(), batch["time_ms"].tolist())):
                by_key[key] = {k: v[i] for k, v in batch.items()}
    names = ("user_id", "hour", "tab", "date", "time_ms", "hist_video_id", "hist_author_id", "hist_tag", "hist_play_s",
             "hist_duration_s", "hist_age_s", "hist_feedback", "hist_len")
    checked = 0
    for request in recorded:
        for i, key in enumerate(zip(request["user_id"].tolist(), request["time_ms"].tolist())):
            example = by_key[key]                      # the impression served at the request's moment
            for name in names:
                np.testing.assert_array_equal(request[name][i], example[name], err_msg=name)
            checked += 1
    pages = sum(len(r["user_id"]) for r in recorded)
    assert checked == pages > 20
    assert max(int(r["hist_len"].max()) for r in recorded) == 50        # full windows, across the log's end


def _run_cli(capsys, *argv):
    try:
        status = cli.main(["abtest", *argv])
    except SystemExit as exit_:                     # argparse refusing a flag value
        status = exit_.code
    return status, capsys.readouterr().err.strip()


@pytest.mark.parametrize("arm, message", [
    ("ctl=bandit", "unknown policy 'bandit'"),
    ("ctl", "expected NAME=POLICY"),
    ("a b=random", "expected NAME=POLICY"),
    ("ctl=savedmodel:", "unknown policy 'savedmodel:'"),
])
def test_bad_arm_specs_are_refused_at_parse_time(capsys, tiny_log_dir, tmp_path, arm, message):
    status, err = _run_cli(capsys, "--world", tiny_log_dir, "--output", str(tmp_path / "o"), "--arm", arm)
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith("tfrec-kuai abtest: error: argument --arm") and message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["missing_world", "not_a_world", "too_many_users", "same_names", "no_export",
                                  "served"])
def test_abtest_misuse_is_one_line_and_exit_2(capsys, tiny_log_dir, tmp_path, case):
    world, arms, users = tiny_log_dir, ["--arm", "a=random", "--arm", "b=popular"], "10"
    expected = {
        "missing_world": f"--world {tmp_path / 'nowhere'}: no such folder",
        "not_a_world": "params.json missing or unreadable",
        "too_many_users": "--users 21: the world has only 20 users",
        "same_names": "--arm names must differ",
        "no_export": f"savedmodel:{tmp_path / 'none'}: no such folder",
        "served": "served:kuai: no such folder (to call a model by name, give --server ADDRESS)",
    }[case]
    if case == "missing_world":
        world = str(tmp_path / "nowhere")
    elif case == "not_a_world":
        world = str(tmp_path)
    elif case == "too_many_users":
        users = "21"
    elif case == "same_names":
        arms = ["--arm", "a=random", "--arm", "a=popular"]
    elif case == "no_export":
        arms = ["--arm", "a=random", "--arm", f"b=savedmodel:{tmp_path / 'none'}"]
    elif case == "served":
        arms = ["--arm", "a=random", "--arm", "b=served:kuai"]
    status, err = _run_cli(capsys, "--world", world, "--output", str(tmp_path / "o"), "--users", users, *arms)
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("tfrec-kuai abtest: error: ") and expected in err, err
    assert not (tmp_path / "o").exists(), "nothing is written for a refused run"


def test_savedmodel_arm_serves_the_export_in_process(kuai_exports, tiny_log_dir, tmp_path):
    """The in-process export as an arm (slow: the session's export fixture): it serves the
    export's own recommendations, paired with the logging policy on the tiny world."""
    out = run_abtest(tiny_log_dir, [("logging", "logging"), ("model", f"savedmodel:{kuai_exports['base']}/kuai")],
                     users=20, days=1, seed=2, output=str(tmp_path), paired=True, progress=False, replicates=200)
    model = out["arms"]["model"]
    assert model["impressions"] > 0 and CONTRACT_KEYS <= model.keys()
    assert model["repeat_rate"] == 0.0          # every seen video is excluded, not only the last L
    assert out["lift"]["model"]["watch_time_per_user_day"]["value"] is not None
