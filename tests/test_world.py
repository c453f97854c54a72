"""The world as an environment (tfrec_kuai.sim.world): reactions and the leave model against their
closed forms, common random numbers, and the served log's format."""
import numpy as np
import pytest

from tfrec_kuai.schema import COLUMN_INDEX as C
from tfrec_kuai.schema import compute_labels
from tfrec_kuai.sim import behaviour, crn
from tfrec_kuai.sim.leave import LeaveParams, leave_probability
from tfrec_kuai.sim.world import World
from tfrec_kuai.online.policies import OraclePolicy, PopularPolicy
from tfrec_kuai.online.worldlog import read_world_log


@pytest.fixture(scope="module")
def world(tiny_log_dir):
    return World(tiny_log_dir, seed=3)


@pytest.fixture(scope="module")
def world_log(tiny_log_dir):
    return read_world_log(tiny_log_dir)


def _within(observed, expected_p, n, sds=4.5):
    """|observed share - expected| within ``sds`` binomial standard deviations."""
    sd = np.sqrt(expected_p * (1 - expected_p) / n)
    assert abs(observed - expected_p) <= sds * sd + 1e-12, (observed, expected_p, sd)


def _pair(world, want_skip=0.5):
    """A (user row, video) pair whose skip probability at streak 0 is near ``want_skip``."""
    cat, pop = world.catalogue, world.population
    videos = np.arange(len(cat.video_id))
    match = pop.match(np.zeros(len(videos), np.int64), videos)
    p = behaviour.skip_probability(world.beh, behaviour.skip_logit_static(world.beh, match, cat.duration_ms[videos]), 0)
    return 0, int(np.argmin(np.abs(p - want_skip)))


def test_reactions_match_the_behaviour_models_truth(world):
    """Many draws of one (user, video) at streaks 0 and 3: skip, long view, like and the mean play
    time agree with behaviour.truth within binomial error."""
    user, video = _pair(world)
    n = 40_000
    for streak in (0, 3):
        keys = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.arange(n))
        outcome, truth, skipped, _, _, _ = world.react(np.full(n, user), np.full(n, user), np.full(n, video),
                                                       np.full(n, streak), np.full(n, 1), keys)
        labels = compute_labels(outcome["play_time_ms"], world.catalogue.duration_ms[np.full(n, video)])
        _within(skipped.mean(), truth["p_skip"][0], n)
        assert np.array_equal(skipped, labels["skip"] == 1)          # a drawn skip is a logged skip
        _within(labels["long"].mean(), truth["p_long"][0], n)
        _within(labels["valid"].mean(), truth["p_valid"][0], n)
        _within(outcome["is_like"].mean(), truth["p_like"][0], n)
        play_s = outcome["play_time_ms"] / 1000.0
        assert abs(play_s.mean() - truth["expected_watch_s"][0]) < 4.5 * play_s.std() / np.sqrt(n) + 1e-3
    # the streak raises the skip chance, as in the offline log
    assert behaviour.skip_probability(world.beh, 0.0, 3) > behaviour.skip_probability(world.beh, 0.0, 0)


def test_leave_model_matches_its_closed_form(world):
    """P(leave) = sigmoid(base + a·streak + b·log1p(videos) − c·long view), and the drawn leaves
    follow it in every cell of (skipped, long view, visit length)."""
    lp = world.leave
    expected = 1 / (1 + np.exp(-(lp.base + lp.skip_streak * 2 + lp.visit_length * np.log1p(5) - lp.satisfying)))
    assert np.isclose(leave_probability(lp, 2, 5, True), expected)
    assert leave_probability(lp, 9, 5, False) == leave_probability(lp, lp.streak_cap, 5, False)  # capped
    assert leave_probability(lp, 0, 30, False) > leave_probability(lp, 0, 1, False)              # long visits end
    user, video = _pair(world)
    n = 40_000
    for streak, videos_in_visit in ((0, 1), (2, 20)):
        keys = (np.ones(n, np.int64), np.zeros(n, np.int64), np.arange(n))
        outcome, _, skipped, leave, _, p_leave = world.react(
            np.full(n, user), np.full(n, user), np.full(n, video), np.full(n, streak), np.full(n, videos_in_visit), keys)
        long_view = compute_labels(outcome["play_time_ms"], world.catalogue.duration_ms[np.full(n, video)])["long"]
        for cell in (skipped, ~skipped & (long_view == 1), ~skipped & (long_view == 0)):
            assert cell.sum() > 1000
            p = np.unique(p_leave[cell])
            assert len(p) == 1                                         # one closed-form value per cell
            new_streak = streak + 1 if skipped[cell][0] else 0
            assert np.isclose(p[0], leave_probability(lp, new_streak, videos_in_visit, long_view[cell][0]))
            _within(leave[cell].mean(), p[0], int(cell.sum()))


def test_common_random_numbers(world):
    """The uniforms are a function of their keys only: the same video gives the same reaction
    whichever arm shows it, and another video at the same key is coupled (a video skipped more
    often is skipped whenever the first one was)."""
    n = 5000
    users = np.arange(n) % world.num_users
    keys = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.arange(n) // world.num_users)
    a, b = np.full(n, 10), np.full(n, 20)
    first = world.react(users, users, a, np.zeros(n, np.int64), np.ones(n), keys)
    again = world.react(users, users, a, np.zeros(n, np.int64), np.ones(n), keys)
    other = world.react(users, users, b, np.zeros(n, np.int64), np.ones(n), keys)
    for x, y in zip(first[0].values(), again[0].values()):
        assert np.array_equal(x, y)
    assert np.array_equal(first[2], again[2]) and np.array_equal(first[3], again[3])
    higher = other[1]["p_skip"] >= first[1]["p_skip"]
    assert np.all(other[2][higher & first[2]])                       # coupled, not independent
    assert not np.array_equal(first[2], other[2])
    # a Stream's draws do not depend on how many rows it has beside them
    whole = crn.Stream(1, 2, np.arange(10), 0).random((3, 10))
    part = crn.Stream(1, 2, np.arange(4, 6), 0).random((3, 2))
    assert np.array_equal(whole[:, 4:6], part)
    u = crn.uniforms(5, np.arange(200_000))
    _within((u < 0.3).mean(), 0.3, len(u))
    assert abs(crn.Stream(4, np.arange(100_000)).poisson(3.0, 100_000).mean() - 3.0) < 4.5 * np.sqrt(3 / 100_000)


def test_arms_meet_the_same_users_and_visits(world, world_log):
    """Two policies on the same users: the same visits per day and the same first impression time
    of every visit that does not wait for the previous one; and the served rows are KuaiRand rows
    after the world's log, strictly increasing in time per user."""
    users = np.arange(world.num_users)
    runs = []
    for policy in (PopularPolicy("popular", world, world_log), OraclePolicy("oracle", world)):
        cohort = world.cohort(users, world_log, 1)
        cols, _, extra = world.serve(cohort, policy, days=2).columns()
        runs.append((cols, extra))
    (c1, e1), (c2, e2) = runs
    first1 = {(r, d, v): t for r, d, v, p, t in zip(e1["cohort_row"], e1["day"], e1["visit"], e1["position"],
                                                    c1["time_ms"]) if p == 0}
    first2 = {(r, d, v): t for r, d, v, p, t in zip(e2["cohort_row"], e2["day"], e2["visit"], e2["position"],
                                                    c2["time_ms"]) if p == 0}
    assert first1.keys() == first2.keys() and len(first1) > 10
    _, nominal, _ = world.visits(users, 0)
    starts = [(k, t) for k, t in first1.items() if k[1] == 0 and k[2] == 0]
    assert starts and all(first2[k] == t == nominal[k[0], 0] for k, t in starts)   # a day's first visit: its nominal start
    assert not np.array_equal(c1["video_id"][:50], c2["video_id"][:50])
    for cols in (c1, c2):
        labels = compute_labels(cols["play_time_ms"], cols["duration_ms"])
        assert np.array_equal(cols["is_click"], labels["valid"]) and np.array_equal(cols["long_view"], labels["long"])
        assert cols["time_ms"].min() >= world.first_day_ms > world_log[:, C["time_ms"]].max()
        order = np.lexsort((cols["time_ms"], cols["user_id"]))
        same = cols["user_id"][order][1:] == cols["user_id"][order][:-1]
        assert np.all(np.diff(cols["time_ms"][order])[same] > 0)


def test_leave_params_round_trip_through_params_json(tiny_log_dir):
    world = World(tiny_log_dir, leave=LeaveParams(base=-1.0))
    assert world.leave.base == -1.0
    from tfrec_kuai.sim.simulator import SimParams
    params = SimParams(leave=LeaveParams(satisfying=0.1), like_topics=(1, 3))
    assert SimParams.from_dict(params.to_dict()) == params
    without = params.to_dict()
    del without["leave"]
    assert SimParams.from_dict(without).leave == LeaveParams()      # a folder from before the leave model
