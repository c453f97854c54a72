"""From one user's validated log rows to the columns of that user's examples (docs/design.md §4, §6).

One sort per user (by time, then video id, then where the row was read), duplicates of
``user_id, video_id, time_ms`` dropped after the first, labels and feedback bits vectorised, and
the history windows from the native builder over the sorted events. Pure NumPy, no Beam: the
per-user step (``examples_by_user.py``) wraps it, and the request builder of the online loop and
the tests call it directly.

Split: a row is in the eval split when the Beijing date of its ``time_ms`` is an eval date, the
same clock that orders the histories, so every eval target is later than every train target
(the logged ``date`` can be an hour ahead: 23:09 is logged as hour 0 of the next date). The
``date`` feature keeps the logged value.

Picture posts (``duration_ms = 0``) are history events, not targets: the §4 labels that need a
duration (skip, valid, long, complete, watch ratio) are undefined for them, so their feedback
bits carry only the flags (like ... hate), with play time and a zero duration.
"""
from __future__ import annotations

import numpy as np

from tfrec_kuai.data import history
from tfrec_kuai.schema import (BINARY_LABELS, COLUMN_INDEX, FLAG_LABELS, LABEL_NAMES, VOCAB_FEATURES, compute_labels,
                               feedback_bits, local_calendar)

C = COLUMN_INDEX
DURATION_LABELS = ("skip", "valid", "long", "complete", "watch_ratio")


def split_date(time_ms):
    """The date a row is split by: the Beijing date of its ``time_ms`` (YYYYMMDD)."""
    return local_calendar(time_ms)[0]


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


def batch_columns(user_rows, video_table, user_table, history_length, eval_dates, implementation="auto"):
    """Example columns of several users at once, plus ``is_eval`` per row.

    ``user_rows``: list of [n_i, 19] int64 arrays, one per user, each sorted by time and
    deduplicated — or ``(rows, context)`` pairs from :func:`slices`, whose context rows
    (:func:`target_mask`) only feed the windows of the rest and yield no example; picture posts (duration 0) feed the
    windows and yield no example either. Everything but the history windows is
    vectorised over the whole batch (a handful of NumPy calls per batch instead of per user); the
    windows are built per item, since a window must never cross users.
    Returns ``(columns keyed by the §6 names, is_eval [N])``.
    """
    items = [(r, 0) if isinstance(r, np.ndarray) else r for r in user_rows]
    user_rows = [r for r, _ in items]
    values = np.concatenate(user_rows) if user_rows else np.zeros((0, len(C)), np.int64)
    n, L = len(values), int(history_length)
    video_id = values[:, C["video_id"]]
    if video_table is not None:
        author_id, tag = video_table.lookup(video_id)
    else:
        author_id = np.full(n, -1, np.int64)
        tag = np.full(n, -1, np.int64)
    play = values[:, C["play_time_ms"]]
    duration = values[:, C["duration_ms"]]
    flags = {c: values[:, C[c]] for c in FLAG_LABELS.values()}
    labels = compute_labels(play, duration, flags)
    picture = duration <= 0
    if picture.any():
        for name in DURATION_LABELS:
            labels[name] = np.where(picture, 0, labels[name]).astype(labels[name].dtype)
    duration_s = (duration / 1000.0).astype(np.float32)
    play_s = (play / 1000.0).astype(np.float32)
    feedback = feedback_bits(labels)
    time_ms = values[:, C["time_ms"]]
    # Rows that yield an example: not picture posts, not context. Only theirs get windows: a
    # request (one target after hundreds of context rows) must not pay for [rows, L] of every row.
    keep = ~picture
    if any(isinstance(context, np.ndarray) or context for _, context in items):
        keep &= np.concatenate([target_mask(r, context) for r, context in items])
    m = int(keep.sum())
    windows = {k: np.empty((m, L), np.float32 if k in ("hist_play_s", "hist_duration_s", "hist_age_s") else np.int64)
               for k in history.OUTPUT_KEYS if k != "hist_len"}
    windows["hist_len"] = np.empty(m, np.int64)
    start = out = 0
    for rows in user_rows:
        end = start + len(rows)
        kept = keep[start:end]
        count = int(kept.sum())
        if count:
            part = history.build_history_windows(time_ms[start:end], video_id[start:end], author_id[start:end],
                                                 tag[start:end], play_s[start:end], duration_s[start:end],
                                                 feedback[start:end], L, implementation=implementation)
            for k, v in part.items():
                windows[k][out:out + count] = v if count == len(rows) else v[kept]
        start, out = end, out + count
    cols = {
        "user_id": values[:, C["user_id"]], "video_id": video_id, "author_id": author_id, "tag": tag,
        "hour": values[:, C["hourmin"]] // 100, "tab": values[:, C["tab"]], "date": values[:, C["date"]],
        "time_ms": time_ms, "is_rand": values[:, C["is_rand"]], "duration_s": duration_s,
    }
    after = {}           # after the windows, in the columns' order of §6
    if user_table is not None and n:
        # a user the table lacks gets -1 in every column, as an empty cell
        pos, found = user_table.index(values[:, C["user_id"]])
        for name, column in user_table.columns.items():
            after[name] = np.where(found, column[pos], -1).astype(column.dtype) if len(column) else \
                np.full(n, -1, column.dtype)
    for name in BINARY_LABELS + ("watch_s", "watch_ratio"):
        after[f"label_{name}"] = labels[name]
    is_eval = np.isin(split_date(time_ms), np.asarray(sorted(eval_dates), dtype=np.int64))
    if m != n:
        cols = {k: v[keep] for k, v in cols.items()}
        after = {k: v[keep] for k, v in after.items()}
        is_eval = is_eval[keep]
    cols = {**cols, **windows, **after}
    return cols, is_eval


def history_only(user_rows, video_table, eval_dates):
    """``(picture posts, their id counts in train)`` among the rows of ``user_rows`` that are not context.

    They are history events only (see the module docstring), counted in ``metadata.json`` apart
    from the dead letter; their ids count for the vocabularies like those of train targets, so a
    picture post in a history has an embedding of its own.
    """
    items = [(r, 0) if isinstance(r, np.ndarray) else r for r in user_rows]
    parts = [r[target_mask(r, c) & (r[:, C["duration_ms"]] <= 0)] for r, c in items]
    rows = np.concatenate(parts) if parts else np.zeros((0, len(C)), np.int64)
    if not len(rows):
        return 0, {}
    train = ~np.isin(split_date(rows[:, C["time_ms"]]), np.asarray(sorted(eval_dates), dtype=np.int64))
    return len(rows), row_id_counts(rows, video_table, train)


def row_id_counts(rows, video_table, mask=None):
    """Occurrences of each vocabulary id among log rows ([n, 19]; author and tag through the video table).

    ``mask`` selects rows (None: all). The history rows of an incremental run count through it
    (``read_logs.py``), so an id seen only in the history keeps its vocabulary entry.
    """
    cols = {"user_id": rows[:, C["user_id"]], "video_id": rows[:, C["video_id"]]}
    if video_table is not None:
        cols["author_id"], cols["tag"] = video_table.lookup(cols["video_id"])
    else:
        cols["author_id"] = cols["tag"] = np.full(len(rows), -1, np.int64)
    return id_counts(cols, np.ones(len(rows), bool) if mask is None else mask)


def target_mask(rows, context):
    """Which rows of a ``(rows, context)`` item may yield examples.

    ``context`` is a count (the first rows only feed the windows of the rest: :func:`slices`) or
    a bool array marking the context rows wherever they are (the history rows of an incremental
    run, which are sorted among the user's new rows).
    """
    if isinstance(context, np.ndarray):
        return ~context
    return np.arange(len(rows)) >= context


def slices(values, history_length, max_rows, context=None):
    """A heavy user's sorted rows as ``(rows, context)`` pieces of at most ``max_rows`` rows.

    The piece for rows ``[a, b)`` starts ``context`` rows earlier, at ``first(a) - L`` where
    ``first(a)`` is the first row sharing row a's timestamp: every window of a row ``>= a`` only
    reaches back that far (it holds the L events strictly before the row's first same-time row).
    So a user of any size is processed in bounded memory, with the windows of the whole.

    ``context``: None, or a bool array [n] marking rows that are context wherever they are (the
    history rows of an incremental run); the pieces' contexts are then bool arrays too
    (:func:`target_mask`).
    """
    n = len(values)
    if n <= max_rows:
        return [(values, 0 if context is None else context)]
    times = values[:, C["time_ms"]]
    out = []
    for a in range(0, n, max_rows):
        b = min(a + max_rows, n)
        start = max(0, int(np.searchsorted(times, times[a], side="left")) - int(history_length))
        if context is None:
            out.append((values[start:b], a - start))
        else:
            out.append((values[start:b], context[start:b] | (np.arange(b - start) < a - start)))
    return out


def max_duration(values):
    """``{video_id: longest duration_ms logged}`` (the corpus falls back to it)."""
    vid = values[:, C["video_id"]]
    dur = values[:, C["duration_ms"]]
    order = np.lexsort((dur, vid))
    last = np.ones(len(order), bool)
    last[:-1] = vid[order][1:] != vid[order][:-1]
    return dict(zip(vid[order][last].tolist(), dur[order][last].tolist()))


def split_stats(cols, mask):
    """Counts and label sums of the rows in ``mask`` (for metadata label rates)."""
    return {"examples": int(mask.sum()),
            "label_sums": {name: float(np.asarray(cols[name])[mask].sum()) for name in LABEL_NAMES}}


def id_counts(cols, mask):
    """Occurrences of each id of the vocabulary features among the rows in ``mask`` (-1 excluded)."""
    out = {}
    for name in VOCAB_FEATURES:
        ids, counts = np.unique(np.asarray(cols[name])[mask], return_counts=True)
        keep = ids >= 0
        out[name] = dict(zip(ids[keep].tolist(), counts[keep].tolist()))
    return out
