"""The history-window builder: hand-checked windows, and native == pure-Python reference."""
import numpy as np
import pytest

from tfrec_kuai.data import history
from tests.native_required import missing_native


def _events(times):
    n = len(times)
    return dict(time_ms=np.array(times, np.int64), video_id=np.arange(100, 100 + n), author_id=np.arange(n) + 7,
                tag=np.arange(n) % 3, play_s=np.arange(n, dtype=np.float32) + 0.5,
                duration_s=np.full(n, 10.0, np.float32), feedback=np.arange(n) * 2 + 1)


@pytest.mark.parametrize("implementation", ["python", "native"])
def test_known_windows(implementation):
    if implementation == "native" and not history.native_available():
        missing_native("tfrec_kuai._native")
    ev = _events([1000, 2000, 2000, 5000, 9000])
    out = history.build_history_windows(**ev, history_length=3, implementation=implementation)
    # event 0: nothing earlier
    assert out["hist_len"].tolist() == [0, 1, 1, 3, 3]
    assert out["hist_video_id"][0].tolist() == [-1, -1, -1]
    # events 1 and 2 share a timestamp: neither sees the other
    assert out["hist_video_id"][1].tolist() == [100, -1, -1]
    assert out["hist_video_id"][2].tolist() == [100, -1, -1]
    # newest first, truncated to L
    assert out["hist_video_id"][3].tolist() == [102, 101, 100]
    assert out["hist_video_id"][4].tolist() == [103, 102, 101]
    assert out["hist_age_s"][4].tolist() == [4.0, 7.0, 7.0]
    assert out["hist_feedback"][3].tolist() == [5, 3, 1]
    assert out["hist_play_s"][1].tolist() == [0.5, 0.0, 0.0]
    assert out["hist_author_id"][0].tolist() == [-1, -1, -1] and out["hist_tag"][0].tolist() == [-1, -1, -1]


def test_unsorted_times_are_rejected():
    ev = _events([5, 3])
    with pytest.raises(ValueError):
        history.build_history_windows(**ev, history_length=2, implementation="python")
    if history.native_available():
        with pytest.raises(ValueError):
            history.build_history_windows(**ev, history_length=2, implementation="native")


@pytest.mark.skipif(not history.native_available(), reason="tfrec_kuai._native not built")
@pytest.mark.parametrize("n,L,seed", [(0, 4, 0), (1, 1, 1), (60, 7, 2), (300, 50, 3)])
def test_native_equals_python(n, L, seed):
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, n // 2 + 2, n)) * 1000  # many ties on purpose
    ev = dict(time_ms=times, video_id=rng.integers(0, 10**9, n), author_id=rng.integers(-1, 50, n),
              tag=rng.integers(-1, 9, n), play_s=rng.random(n).astype(np.float32) * 30,
              duration_s=rng.random(n).astype(np.float32) * 60, feedback=rng.integers(0, 512, n))
    py = history.build_history_windows(**ev, history_length=L, implementation="python")
    nat = history.build_history_windows(**ev, history_length=L, implementation="native")
    assert set(py) == set(nat)
    for key in py:
        assert nat[key].dtype == py[key].dtype, key
        np.testing.assert_array_equal(nat[key], py[key], err_msg=key)
