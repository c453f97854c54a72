"""A heavy user is processed in bounded pieces with exactly the windows of the whole."""
import numpy as np

from beam_pipelines import user_examples
from tests.log_rows import T0
from tfrec_kuai.schema import LOG_COLUMNS, local_calendar


def _user_log(n, seed):
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, len(LOG_COLUMNS)), np.int64)
    c = {name: i for i, name in enumerate(LOG_COLUMNS)}
    rows[:, c["user_id"]] = 42
    # many same-time events, over about two days from T0 (so that the eval date 20220410 has some)
    rows[:, c["time_ms"]] = T0 + np.sort(rng.integers(0, n // 3, n)) * 100_000
    rows[:, c["video_id"]] = rng.integers(0, 10**6, n)
    rows[:, c["date"]] = local_calendar(rows[:, c["time_ms"]])[0]
    rows[:, c["play_time_ms"]] = rng.integers(0, 60000, n)
    rows[:, c["duration_ms"]] = rng.integers(1000, 60000, n)
    rows[:, c["hourmin"]] = 1200
    keep, _ = user_examples.sort_and_dedup(rows, np.arange(n))
    return rows[keep]


def test_slices_equal_whole_user():
    rows = _user_log(5000, seed=1)
    whole, whole_eval = user_examples.batch_columns([rows], None, None, 20, [20220410])
    pieces = user_examples.slices(rows, 20, 700)
    assert len(pieces) == 8 and all(len(r) - ctx <= 700 for r, ctx in pieces)
    assert sum(len(r) - ctx for r, ctx in pieces) == len(rows)
    # pieces of one user next to another user's rows in the same batch
    other = _user_log(50, seed=2)
    cut, cut_eval = user_examples.batch_columns(pieces + [other], None, None, 20, [20220410])
    assert len(cut_eval) == len(rows) + len(other)
    for key, value in whole.items():
        np.testing.assert_array_equal(cut[key][:len(rows)], value, err_msg=key)
    np.testing.assert_array_equal(cut_eval[:len(rows)], whole_eval)
    assert 0 < whole_eval.sum() < len(rows)
    alone, _ = user_examples.batch_columns([other], None, None, 20, [20220410])
    np.testing.assert_array_equal(cut["hist_video_id"][len(rows):], alone["hist_video_id"])


def test_small_user_is_one_piece():
    rows = _user_log(30, seed=3)
    assert len(user_examples.slices(rows, 50, 4096)) == 1
