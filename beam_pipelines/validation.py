"""Typing and range checks of KuaiRand log rows; every rejected row gets exactly one reason.

The checks run on a block of raw lines at a time (bytes, as read from the file), so that the
common case — a well-formed row — costs one ``split`` and one ``int`` per field; only a row that
fails the fast path is looked at again to name its reason. Row-level reasons (in the order they
are tested):

``not_utf8``            bytes that do not decode as UTF-8
``broken_quoting``      a ``"`` that the CSV rules cannot close or that is followed by junk
``empty_row``           a blank line inside the file
``wrong_column_count``  not 19 fields
``bad_duration``        ``duration_ms`` empty, zero or negative (labels divide by it)
``missing_field``       any other empty field
``non_numeric``         a field that is not a number, or not a whole number
``negative_time``       negative ``time_ms``, ``play_time_ms`` or stay time
``out_of_range``        numbers beyond int64, negative ids, flags other than 0/1, an impossible date or hourmin, tab < 0
``unknown_video``       ``video_id`` absent from ``--video_features`` (when given)
``unknown_user``        ``user_id`` absent from ``--user_features`` (when given)

``duplicate_event`` (the same ``user_id, video_id, time_ms`` seen again) needs all of a user's rows
and is decided in the per-user step (``user_examples.py``).
"""
from __future__ import annotations

import csv

import numpy as np

from tfrec_kuai.schema import COLUMN_INDEX, FLAG_COLUMNS, LOG_COLUMNS

NUM_COLUMNS = len(LOG_COLUMNS)
REASONS = ("not_utf8", "broken_quoting", "empty_row", "wrong_column_count", "bad_duration", "missing_field",
           "non_numeric", "negative_time", "out_of_range", "unknown_video", "unknown_user", "duplicate_event")
_DUR = COLUMN_INDEX["duration_ms"]
_FLAGS = [COLUMN_INDEX[c] for c in FLAG_COLUMNS]
_TIMES = [COLUMN_INDEX[c] for c in ("time_ms", "play_time_ms", "profile_stay_time", "comment_stay_time")]
_IDS = [COLUMN_INDEX["user_id"], COLUMN_INDEX["video_id"]]
HEADER_PREFIX = b"user_id,"
_I64 = np.iinfo(np.int64)


def _split_quoted(text):
    """Fields of a line that contains quotes, or None when the quoting is broken."""
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        return None
    if len(rows) != 1:
        return None
    # csv accepts `12"3` leniently; a quote inside an unquoted field is broken quoting here.
    fields = rows[0]
    raw_fields = text.split(",")
    if len(raw_fields) == len(fields) and any('"' in r and not (r.startswith('"') and r.endswith('"'))
                                              for r in raw_fields):
        return None
    return fields


def _to_int(field):
    """int of a numeric field ("12", "12.0", " 12 "); ValueError when not a whole number."""
    try:
        return int(field)
    except ValueError:
        value = float(field)
        if value != value or value in (float("inf"), float("-inf")) or value != int(value):
            raise ValueError(field) from None
        return int(value)


def _slow_reason(fields):
    """The reason of a 19-field row that failed the fast path, or its values."""
    if not fields[_DUR].strip():
        return "bad_duration", None
    if any(not f.strip() for f in fields):
        return "missing_field", None
    try:
        return None, [_to_int(f) for f in fields]
    except (ValueError, OverflowError):
        return "non_numeric", None


def _fast_parse(lines):
    """All lines at once when they are all plain well-formed rows, else None.

    One ``np.fromstring`` over the joined block replaces 19 ``int()`` calls per row (~10x);
    NumPy's "could not be read to its end" warning is turned into the signal to fall back to
    :func:`parse_lines_slow`, which then names the bad rows.
    """
    import warnings

    if not lines:
        return None
    for line in lines:
        if line.count(b",") != NUM_COLUMNS - 1 or b'"' in line:
            return None
    block = b",".join(lines)
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(block, dtype=np.int64, sep=",")
        except (DeprecationWarning, ValueError):
            return None
    if values.size != len(lines) * NUM_COLUMNS:
        return None
    if (values == _I64.max).any() or (values == _I64.min).any():
        return None  # fromstring saturates out-of-range numbers; the slow path rejects them
    return values.reshape(len(lines), NUM_COLUMNS)


def parse_lines(lines, block=5000):
    """Parse raw lines (bytes without the newline).

    Returns ``(values [n, 19] int64, kept [n] indices into lines, rejects [(index, reason)])``.
    Blocks of clean rows take the vectorised path; a block with any bad row is parsed row by row.
    """
    values, kept, rejects = [], [], []
    for start in range(0, len(lines), block):
        part = [line[:-1] if line.endswith(b"\r") else line for line in lines[start:start + block]]
        fast = _fast_parse(part)
        if fast is not None:
            values.append(fast)
            kept.append(np.arange(start, start + len(part), dtype=np.int64))
            continue
        v, k, r = parse_lines_slow(part)
        values.append(v)
        kept.append(k + start)
        rejects += [(i + start, reason) for i, reason in r]
    if not values:
        return np.zeros((0, NUM_COLUMNS), np.int64), np.zeros(0, np.int64), rejects
    return np.concatenate(values), np.concatenate(kept), rejects


def parse_lines_slow(lines):
    """Row-by-row parse that names the reason of every bad row (same return as parse_lines)."""
    values, kept, rejects = [], [], []
    for i, raw in enumerate(lines):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rejects.append((i, "not_utf8"))
            continue
        if '"' in text:
            fields = _split_quoted(text)
            if fields is None:
                rejects.append((i, "broken_quoting"))
                continue
        elif not text.strip():
            rejects.append((i, "empty_row"))
            continue
        else:
            fields = text.split(",")
        if len(fields) != NUM_COLUMNS:
            rejects.append((i, "wrong_column_count"))
            continue
        try:
            row = [int(f) for f in fields]
        except ValueError:
            reason, row = _slow_reason(fields)
            if reason:
                rejects.append((i, reason))
                continue
        if any(v >= _I64.max or v <= _I64.min for v in row):
            rejects.append((i, "out_of_range"))
            continue
        values.append(row)
        kept.append(i)
    arr = np.array(values, dtype=np.int64).reshape(-1, NUM_COLUMNS)
    return arr, np.array(kept, dtype=np.int64), rejects


def _valid_date(date):
    year, month, day = date // 10000, (date // 100) % 100, date % 100
    return (year >= 1970) & (year <= 2100) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)


def range_reasons(values, video_table=None, user_table=None):
    """Reason per parsed row (None = valid), vectorised over the rows."""
    n = len(values)
    reasons = np.full(n, None, dtype=object)
    if n == 0:
        return reasons

    def mark(mask, reason):
        mask = mask & (reasons == None)  # noqa: E711  (object array comparison)
        reasons[mask] = reason

    mark(values[:, _DUR] <= 0, "bad_duration")
    mark((values[:, _TIMES] < 0).any(1), "negative_time")
    hourmin = values[:, COLUMN_INDEX["hourmin"]]
    out = ((values[:, _IDS] < 0).any(1) | ((values[:, _FLAGS] != 0) & (values[:, _FLAGS] != 1)).any(1)
           | ~_valid_date(values[:, COLUMN_INDEX["date"]]) | (hourmin < 0) | (hourmin // 100 > 23)
           | (hourmin % 100 > 59) | (values[:, COLUMN_INDEX["tab"]] < 0) | (values[:, COLUMN_INDEX["is_comment"]] < 0))
    mark(out, "out_of_range")
    if video_table is not None:
        mark(~video_table.index(values[:, COLUMN_INDEX["video_id"]])[1], "unknown_video")
    if user_table is not None:
        mark(~user_table.contains(values[:, COLUMN_INDEX["user_id"]]), "unknown_user")
    return reasons


def validate_lines(lines, video_table=None, user_table=None):
    """``(valid values [m, 19], valid line indices [m], rejects [(line index, reason)])``."""
    values, kept, rejects = parse_lines(lines)
    reasons = range_reasons(values, video_table, user_table)
    bad = reasons != None  # noqa: E711
    rejects = rejects + [(int(kept[j]), reasons[j]) for j in np.flatnonzero(bad)]
    return values[~bad], kept[~bad], rejects
