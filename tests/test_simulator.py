"""The simulator: KuaiRand's format, determinism, and the behaviours the models are meant to learn."""
import csv
import filecmp
import json
import os

import numpy as np
import pytest

from tfrec_kuai.schema import LOG_COLUMNS
from tfrec_kuai.sim import behaviour
from tfrec_kuai.sim.catalogue import PURE_VIDEOS
from tfrec_kuai.sim.simulator import TRUTH_COLUMNS, SimParams, simulate


def _load(folder):
    logs = [np.loadtxt(os.path.join(folder, name), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
            for name in ("log_standard_sim.csv", "log_random_sim.csv")]
    log = np.concatenate(logs)
    truth = np.loadtxt(os.path.join(folder, "ground_truth.csv"), delimiter=",", skiprows=1, ndmin=2)
    return log, truth


@pytest.fixture(scope="module")
def sim20k(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sim20k"))
    info = simulate(out, SimParams(impressions=20000, seed=5, chunk_impressions=6000), progress=False)
    return out, info


def test_kuairand_format(sim20k):
    out, info = sim20k
    for name in ("log_standard_sim.csv", "log_random_sim.csv"):
        with open(os.path.join(out, name)) as f:
            assert f.readline().strip().split(",") == list(LOG_COLUMNS)
    log, truth = _load(out)
    c = {n: i for i, n in enumerate(LOG_COLUMNS)}
    assert len(log) == 20000 == len(truth) == info["rows"]["standard"] + info["rows"]["random"]
    with open(os.path.join(out, "log_random_sim.csv")) as f:
        assert all(r["is_rand"] == "1" for r in csv.DictReader(f))
    assert 0.05 < log[:, c["is_rand"]].mean() < 0.15
    # KuaiRand's own label columns follow its rules
    play, dur = log[:, c["play_time_ms"]], log[:, c["duration_ms"]]
    np.testing.assert_array_equal(log[:, c["is_click"]], np.where(dur <= 7000, play >= dur, play > 7000))
    np.testing.assert_array_equal(log[:, c["long_view"]], np.where(dur <= 18000, play >= dur, play >= 18000))
    # dates/hourmin are Beijing time of time_ms; events of a user strictly increase in time
    t = log[:, c["time_ms"]]
    local = (t + 8 * 3600 * 1000).astype("datetime64[ms]")
    assert all(int(str(d).replace("-", "")) == x for d, x in zip(local.astype("datetime64[D]")[:50], log[:50, c["date"]]))
    order = np.lexsort((t, log[:, 0]))
    same = log[order, 0][1:] == log[order, 0][:-1]
    assert np.all(np.diff(t[order])[same] > 0)
    assert set(np.unique(log[:, c["date"]])) <= set(range(20220408, 20220422))
    # ground truth is keyed by (user_id, video_id, time_ms) and unique
    keys = {tuple(r) for r in truth[:, :3].astype(np.int64).tolist()}
    assert keys == {tuple(r) for r in log[:, [0, 1, 4]].tolist()}
    params = json.load(open(os.path.join(out, "params.json")))
    assert params["ground_truth_columns"] == list(TRUTH_COLUMNS) and params["params"]["seed"] == 5


def test_side_tables_are_the_real_pure_ones(sim20k):
    out, _ = sim20k
    with open(os.path.join(out, "video_features_basic_sim.csv")) as a, open(PURE_VIDEOS) as b:
        assert a.read().splitlines() == b.read().splitlines()


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (str(tmp_path / x) for x in "abc")
    for folder, seed in ((a, 3), (b, 3), (c, 4)):
        simulate(folder, SimParams(impressions=3000, seed=seed), progress=False)
    for name in ("log_standard_sim.csv", "ground_truth.csv", "user_features_sim.csv"):
        assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False)
    assert not filecmp.cmp(os.path.join(a, "log_standard_sim.csv"), os.path.join(c, "log_standard_sim.csv"),
                           shallow=False)


def test_generated_catalogue(tmp_path):
    info = simulate(str(tmp_path), SimParams(impressions=2000, seed=1, catalogue="generated", generated_videos=500),
                    progress=False)
    assert info["videos"] == 500
    with open(tmp_path / "video_features_basic_sim.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 500 and any(r["video_duration"] == "" for r in rows) and any("," in r["tag"] for r in rows)


def test_truth_is_calibrated(sim20k):
    """Observed rates match the mean true probabilities: the oracle's numbers are the real ones."""
    log, truth = _load(sim20k[0])
    c = {n: i for i, n in enumerate(LOG_COLUMNS)}
    t = {n: i for i, n in enumerate(TRUTH_COLUMNS)}
    key = {tuple(r): i for i, r in enumerate(truth[:, :3].astype(np.int64).tolist())}
    idx = np.array([key[tuple(r)] for r in log[:, [0, 1, 4]].tolist()])
    tr = truth[idx]
    play, dur = log[:, c["play_time_ms"]], log[:, c["duration_ms"]]
    skip = play < np.minimum(3000, dur)
    for observed, col in ((skip, "p_skip"), (log[:, c["is_click"]], "p_valid"), (log[:, c["long_view"]], "p_long"),
                          (play >= dur, "p_complete"), (log[:, c["is_like"]], "p_like")):
        assert abs(observed.mean() - tr[:, t[col]].mean()) < 0.012, col
    assert abs(play.mean() / 1000 - tr[:, t["expected_watch_s"]].mean()) < 0.03 * play.mean() / 1000


def test_behaviours_in_the_model():
    p = behaviour.BehaviourParams()
    match = np.array([-2.0, 0.0, 2.0])
    short, long_ = np.full(3, 6000.0), np.full(3, 300000.0)
    ps_short = behaviour.skip_probability(p, behaviour.skip_logit_static(p, match, short), 0)
    ps_long = behaviour.skip_probability(p, behaviour.skip_logit_static(p, match, long_), 0)
    # skips rise with mismatch, and with duration (a strongly disliked video is skipped whatever
    # its length, so the duration effect is asserted where the match is not negative)
    assert np.all(np.diff(ps_short) < 0) and np.all(np.diff(ps_long) < 0)
    assert np.all(ps_long[1:] > ps_short[1:]) and ps_long[0] > 0.8 and ps_short[0] > 0.8
    # a skip of a short video is stronger evidence of mismatch than a skip of a long one
    lr_short = ps_short[0] / ps_short[2]
    lr_long = ps_long[0] / ps_long[2]
    assert lr_short > 2 * lr_long
    # consecutive skips raise the next skip's chance
    static = behaviour.skip_logit_static(p, np.zeros(1), np.full(1, 30000.0))
    assert behaviour.skip_probability(p, static, 0) < behaviour.skip_probability(p, static, 2) < \
        behaviour.skip_probability(p, static, 4)
    # watch ratio (expected watch / duration, given no skip) falls with duration
    durations = np.array([6000.0, 30000.0, 120000.0, 600000.0])
    tr = behaviour.truth(p, np.zeros(4), durations, np.zeros(4))
    assert np.all(np.diff(tr["expected_watch_s"] * 1000 / durations) < 0)
    # likes follow interest, hate follows strong mismatch only
    tr = behaviour.truth(p, np.array([-3.0, -0.5, 0.0, 2.0]), np.full(4, 20000.0), np.zeros(4))
    assert np.all(np.diff(tr["p_like"]) > 0) and np.all(np.diff(tr["p_follow"]) > 0)
    assert tr["p_hate"][0] > 10 * tr["p_hate"][2] and tr["p_hate"][1] == tr["p_hate"][2]


def test_author_affinity_moves_engagement_only(tmp_path):
    """With ``author_affinity_sd`` the same seed gives the same plays and skips (the author factors
    come from a stream of their own and skips / watch depth do not read them), while likes and
    follows move with the user's affinity for the video's author."""
    runs = {}
    for sd in (0.0, 1.5):
        folder = str(tmp_path / f"sd{sd}")
        simulate(folder, SimParams(impressions=20000, seed=5, author_affinity_sd=sd), progress=False)
        runs[sd] = _load(folder)
    (log0, truth0), (log1, truth1) = runs[0.0], runs[1.5]
    c = {n: i for i, n in enumerate(LOG_COLUMNS)}
    t = {n: i for i, n in enumerate(TRUTH_COLUMNS)}
    np.testing.assert_array_equal(log0[:, c["play_time_ms"]], log1[:, c["play_time_ms"]])
    for col in ("p_skip", "p_valid", "p_long", "expected_watch_s", "match"):
        np.testing.assert_array_equal(truth0[:, t[col]], truth1[:, t[col]])
    assert not np.array_equal(log0[:, c["is_like"]], log1[:, c["is_like"]])
    # The shift of the like logit is what the affinity adds: recover it from the two truths
    # (p_like = p_watch * sigmoid(...)), on rows watched often enough for the ratio to be exact.
    watched = (1 - truth0[:, t["p_skip"]]) > 0.2
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    follow0 = truth0[watched, t["p_follow"]] / (1 - truth0[watched, t["p_skip"]])
    follow1 = truth1[watched, t["p_follow"]] / (1 - truth1[watched, t["p_skip"]])
    shift = logit(follow1) - logit(follow0)
    assert abs(shift.mean()) < 0.15 and 1.2 < shift.std() < 1.8
    assert np.corrcoef(shift, truth0[watched, t["match"]])[0, 1] ** 2 < 0.01  # a driver of its own
    assert log1[:, c["is_like"]].mean() > 0.5 * log0[:, c["is_like"]].mean()


def test_consecutive_skips_in_the_log(sim20k):
    """In the written log, a skip is more likely right after two skips than right after a view."""
    log, _ = _load(sim20k[0])
    c = {n: i for i, n in enumerate(LOG_COLUMNS)}
    order = np.lexsort((log[:, c["time_ms"]], log[:, 0]))
    lg = log[order]
    skip = lg[:, c["play_time_ms"]] < np.minimum(3000, lg[:, c["duration_ms"]])
    gap = np.diff(lg[:, c["time_ms"]]) - lg[:-1, c["play_time_ms"]]
    same_session = (lg[1:, 0] == lg[:-1, 0]) & (gap < 5000)
    cur, prev1 = skip[2:], skip[1:-1]
    prev2 = skip[:-2]
    ok = same_session[1:] & same_session[:-1]
    after_two_skips = cur[ok & prev1 & prev2].mean()
    after_view = cur[ok & ~prev1].mean()
    assert after_two_skips > after_view + 0.05


def test_feedback_reveals_interest_beyond_exposure(sim20k):
    """The point of the project: what a user did with past videos of a tag predicts the next skip on
    that tag better than how often the tag was shown (exposure alone is a weak signal)."""
    out = sim20k[0]
    log, _ = _load(out)
    c = {n: i for i, n in enumerate(LOG_COLUMNS)}
    with open(os.path.join(out, "video_features_basic_sim.csv")) as f:
        tags = {int(r["video_id"]): int(r["tag"].split(",")[0]) if r["tag"] else -1 for r in csv.DictReader(f)}
    lg = log[np.lexsort((log[:, c["time_ms"]], log[:, 0]))]
    tag = np.array([tags[v] for v in lg[:, 1]])
    dur = lg[:, c["duration_ms"]]
    skip = (lg[:, c["play_time_ms"]] < np.minimum(3000, dur)).astype(float)
    exposure, feedback, y = [], [], []
    starts = np.flatnonzero(np.r_[True, lg[1:, 0] != lg[:-1, 0]])
    for s, e in zip(starts, np.r_[starts[1:], len(lg)]):
        for i in range(s + 20, e):
            h = slice(max(s, i - 50), i)
            same = tag[h] == tag[i]
            if tag[i] < 0 or not same.any():
                continue
            exposure.append(same.mean())
            feedback.append(((1 - 2 * skip[h][same]) / np.log1p(dur[h][same] / 7000)).sum() / (same.sum() + 1))
            y.append(skip[i])
    y = np.array(y)

    def auc(score):
        r = np.argsort(np.argsort(score))
        pos = y == 1
        return (r[pos].sum() - pos.sum() * (pos.sum() - 1) / 2) / (pos.sum() * (~pos).sum())

    assert auc(-np.array(feedback)) > auc(-np.array(exposure)) + 0.02


def test_cli_simulate(tmp_path, capsys):
    from tfrec_kuai import cli

    out = tmp_path / "cli"
    assert cli.main(["simulate", "--output", str(out), "--impressions", "1500", "--seed", "2", "--no_progress",
                     "--random_share", "0.2", "--days", "3"]) == 0
    info = json.load(open(out / "params.json"))
    assert info["rows"]["standard"] + info["rows"]["random"] == 1500
    assert info["params"]["random_share"] == 0.2 and info["params"]["days"] == 3
    assert "wrote 1500 impressions" in capsys.readouterr().out
