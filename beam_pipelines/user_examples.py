"""From one user's validated log rows to the columns of that user's examples (DESIGN.md §4, §6).

One sort per user (by time, then video id, then where the row was read), duplicates of
``user_id, video_id, time_ms`` dropped after the first, labels and feedback bits vectorised, and
the history windows from the native builder over the sorted events. Pure NumPy, no Beam: the
DoFn in ``build_examples.py`` wraps it and the tests call it directly.
"""
from __future__ import annotations

import numpy as np

from tfrec_kuai import history
from tfrec_kuai.schema import BINARY_LABELS, COLUMN_INDEX, LABEL_NAMES, compute_labels, feedback_bits

C = COLUMN_INDEX


def sort_and_dedup(values, tiebreak):
    """``(order of kept rows, indices of duplicate rows)`` in time order.

    ``tiebreak`` ([n] int64) orders rows of the same key, so the first copy *read* is kept.
    """
    order = np.lexsort((tiebreak, values[:, C["video_id"]], values[:, C["time_ms"]]))
    t = values[order, C["time_ms"]]
    v = values[order, C["video_id"]]
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] = (t[1:] == t[:-1]) & (v[1:] == v[:-1])
    return order[~dup], order[dup]


def user_columns(values, video_table, user_table, history_length, eval_dates, implementation="auto"):
    """Example columns of one user's (sorted, deduplicated) rows plus ``is_eval`` per row.

    ``values``: [n, 19] int64 rows sorted by time. Returns ``(columns, is_eval)`` with columns keyed
    by the §6 names (labels included).
    """
    n = len(values)
    video_id = values[:, C["video_id"]]
    if video_table is not None:
        author_id, tag = video_table.lookup(video_id)
    else:
        author_id = np.full(n, -1, np.int64)
        tag = np.full(n, -1, np.int64)
    play = values[:, C["play_time_ms"]]
    duration = values[:, C["duration_ms"]]
    flags = {c: values[:, C[c]] for c in ("is_like", "is_follow", "is_comment", "is_forward", "is_hate")}
    labels = compute_labels(play, duration, flags)
    duration_s = (duration / 1000.0).astype(np.float32)
    windows = history.build_history_windows(
        values[:, C["time_ms"]], video_id, author_id, tag, (play / 1000.0).astype(np.float32), duration_s,
        feedback_bits(labels), history_length, implementation=implementation)
    cols = {
        "user_id": values[:, C["user_id"]], "video_id": video_id, "author_id": author_id, "tag": tag,
        "hour": values[:, C["hourmin"]] // 100, "tab": values[:, C["tab"]], "date": values[:, C["date"]],
        "time_ms": values[:, C["time_ms"]], "is_rand": values[:, C["is_rand"]], "duration_s": duration_s,
    }
    cols.update(windows)
    if user_table is not None and n:
        for name, value in user_table.row(int(values[0, C["user_id"]])).items():
            cols[name] = np.full(n, value, dtype=np.float32 if user_table.dtypes[name] == "float32" else np.int64)
    for name in BINARY_LABELS + ("watch_s", "watch_ratio"):
        cols[f"label_{name}"] = labels[name]
    is_eval = np.isin(values[:, C["date"]], np.asarray(sorted(eval_dates), dtype=np.int64))
    return cols, is_eval


def split_stats(cols, mask):
    """Counts and label sums of the rows in ``mask`` (for metadata label rates)."""
    return {"examples": int(mask.sum()),
            "label_sums": {name: float(np.asarray(cols[name])[mask].sum()) for name in LABEL_NAMES}}


def id_counts(cols, mask):
    """Occurrences of each id of the vocabulary features among the rows in ``mask`` (-1 excluded)."""
    out = {}
    for name in ("user_id", "video_id", "author_id", "tag"):
        ids, counts = np.unique(np.asarray(cols[name])[mask], return_counts=True)
        keep = ids >= 0
        out[name] = dict(zip(ids[keep].tolist(), counts[keep].tolist()))
    return out
