"""History windows of one user's events: the native builder and its pure-Python reference.

For every event ``i`` of a user (events sorted by ``time_ms``) the window holds the user's events
with a time *strictly* earlier than ``time_ms[i]``, newest first, truncated to ``L`` and padded
(ids -1, floats 0, feedback 0) — docs/design.md §6. Events that share a timestamp never see each other,
so no window can leak the target or anything logged with it.

The Beam job calls :func:`build_history_windows`, which uses the C++ builder of the pybind11
module ``tfrec_kuai._native`` (one pass over the sorted events, GIL released) and falls back, with
a logged warning, to :func:`build_history_windows_python` when the module is not built. The Python
version is the reference the tests hold the native one to; it does the same O(N·L) work in Python
loops, far slower (benchmarks/RESULTS.md has the ratio), which is why the native one exists.
"""
from __future__ import annotations

import logging

import numpy as np

from tfrec_kuai.schema import HISTORY_INPUTS

OUTPUT_KEYS = HISTORY_INPUTS  # a window is what the model reads of the history: 7 sequences and hist_len
_warned = False


def native_available():
    try:
        from tfrec_kuai import _native
    except ImportError:
        return False
    return hasattr(_native, "build_history_windows")


def build_history_windows_python(time_ms, video_id, author_id, tag, play_s, duration_s, feedback, history_length):
    """Reference implementation (plain Python loops over the events)."""
    L = int(history_length)
    if L < 1:
        raise ValueError("history_length must be >= 1")
    t = [int(x) for x in np.asarray(time_ms, np.int64)]
    n = len(t)
    if any(t[i] < t[i - 1] for i in range(1, n)):
        raise ValueError("time_ms must be sorted in non-decreasing order")
    src = {
        "hist_video_id": np.asarray(video_id, np.int64).tolist(),
        "hist_author_id": np.asarray(author_id, np.int64).tolist(),
        "hist_tag": np.asarray(tag, np.int64).tolist(),
        "hist_play_s": np.asarray(play_s, np.float32).tolist(),
        "hist_duration_s": np.asarray(duration_s, np.float32).tolist(),
        "hist_feedback": np.asarray(feedback, np.int64).tolist(),
    }
    rows = {k: [] for k in OUTPUT_KEYS}
    first_same = 0  # first event sharing time t[i]: everything before it is strictly earlier
    for i in range(n):
        if i > 0 and t[i] != t[i - 1]:
            first_same = i
        earlier = list(range(first_same - 1, max(first_same - 1 - L, -1), -1))
        pad = L - len(earlier)
        for key, values in src.items():
            fill = -1 if key in ("hist_video_id", "hist_author_id", "hist_tag") else 0
            rows[key].append([values[j] for j in earlier] + [fill] * pad)
        rows["hist_age_s"].append([(t[i] - t[j]) / 1000.0 for j in earlier] + [0.0] * pad)
        rows["hist_len"].append(len(earlier))
    out = {}
    for key in OUTPUT_KEYS:
        dtype = np.float32 if key in ("hist_play_s", "hist_duration_s", "hist_age_s") else np.int64
        shape = (n,) if key == "hist_len" else (n, L)
        out[key] = np.asarray(rows[key], dtype=dtype).reshape(shape)
    return out


def build_history_windows(time_ms, video_id, author_id, tag, play_s, duration_s, feedback, history_length,
                          implementation="auto"):
    """``{hist_*: [N, L], hist_len: [N]}`` for one user's time-sorted events.

    ``implementation``: ``"native"`` (C++; raises when not built), ``"python"`` (reference) or
    ``"auto"`` (native when importable, else Python with a one-time warning).
    """
    global _warned
    args = (np.ascontiguousarray(time_ms, np.int64), np.ascontiguousarray(video_id, np.int64),
            np.ascontiguousarray(author_id, np.int64), np.ascontiguousarray(tag, np.int64),
            np.ascontiguousarray(play_s, np.float32), np.ascontiguousarray(duration_s, np.float32),
            np.ascontiguousarray(feedback, np.int64), int(history_length))
    if implementation == "python":
        return build_history_windows_python(*args)
    if implementation not in ("auto", "native"):
        raise ValueError(f"implementation must be auto, native or python, got {implementation!r}")
    try:
        from tfrec_kuai import _native
        native = _native.build_history_windows
    except (ImportError, AttributeError):
        if implementation == "native":
            raise ImportError("tfrec_kuai._native is not built: run `pip install --no-build-isolation -e .`") from None
        if not _warned:
            logging.warning("tfrec_kuai._native is not built; using the slow pure-Python history builder")
            _warned = True
        return build_history_windows_python(*args)
    return dict(native(*args))
