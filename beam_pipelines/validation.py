"""Typing and range checks of KuaiRand log rows; every rejected row gets exactly one reason.

The checks run on a block of raw lines at a time (bytes, as read from the file), so that the
common case — a well-formed row — costs one ``split`` and one ``int`` per field; only a row that
fails the fast path is looked at again to name its reason. Row-level reasons (in the order they
are tested):

``not_utf8``            bytes that do not decode as UTF-8
``broken_quoting``      a ``"`` that the CSV rules cannot close or that is followed by junk
``empty_row``           a blank line inside the file
``wrong_column_count``  not as many fields as the file's header names (19 without a header)
``bad_duration``        ``duration_ms`` empty or negative (0 is a picture post, see below)
``missing_field``       any other empty field
``non_numeric``         a field that is not a plain ASCII number, or not a whole number
                        (``1_000`` and non-ASCII digits, which Python's ``int`` accepts, are not)
``negative_time``       negative ``time_ms``, ``play_time_ms`` or stay time
``out_of_range``        numbers beyond int64, negative ids, flags other than 0/1, an impossible date
                        (``20220231``) or hourmin, tab < 0
``too_long``            ``play_time_ms`` or ``duration_ms`` over :data:`MAX_TIME_MS` (one day): a
                        replay loop can make play exceed duration, but not by a day
``date_mismatch``       ``date`` / ``hourmin`` more than :data:`DATE_TOLERANCE_MS` away from
                        ``time_ms`` read in Beijing time (KuaiRand logs a whole hour, and 23:09
                        may be logged as hour 0 of the next date: up to an hour apart is normal)

A row with ``duration_ms = 0`` is a picture post (KuaiRand: ``upload_type`` PictureSet /
LongPicture, about 3 % of impressions). It is valid: it stays in the user's history (play time,
no duration) but is not a target, because the labels of docs/design.md §4 need a duration
(``user_examples.py`` counts it as ``history_only.picture_post``).

A video or user that the side table given lacks is no reason to reject a row: the side tables
are optional (docs/design.md §3) and may cover part of the log; such a row gets author and tag -1 and
user columns -1 (out of vocabulary), and is counted (:func:`not_in_side_tables`,
``metadata.json`` ``side_information.*.log_rows_not_in_table``).

``duplicate_event`` (the same ``user_id, video_id, time_ms`` seen again) needs all of a user's rows
and is decided in the per-user step (``user_examples.py``).
"""
from __future__ import annotations

import csv
import re

import numpy as np

from tfrec_kuai.schema import BEIJING_OFFSET_MS, COLUMN_INDEX, FLAG_COLUMNS, LOG_COLUMNS, local_calendar

NUM_COLUMNS = len(LOG_COLUMNS)
REASONS = ("not_utf8", "broken_quoting", "empty_row", "wrong_column_count", "bad_duration", "missing_field",
           "non_numeric", "negative_time", "out_of_range", "too_long", "date_mismatch",
           "duplicate_event")
MAX_TIME_MS = 24 * 3600 * 1000       # a play or a duration longer than a day is a broken row
DATE_TOLERANCE_MS = 90 * 60 * 1000   # date/hourmin vs time_ms: a whole hour, rounded either way, plus slack
_PLAY = COLUMN_INDEX["play_time_ms"]
_DUR = COLUMN_INDEX["duration_ms"]
_FLAGS = [COLUMN_INDEX[c] for c in FLAG_COLUMNS]
_TIMES = [COLUMN_INDEX[c] for c in ("time_ms", "play_time_ms", "profile_stay_time", "comment_stay_time")]
_IDS = [COLUMN_INDEX["user_id"], COLUMN_INDEX["video_id"]]
_I64 = np.iinfo(np.int64)
# A plain number: ASCII digits, optional sign, optional fraction / exponent ("5000.0" is how
# pandas writes an integer column with gaps). Python's int() would also take "1_000" and "١٢".
_NUMBER = re.compile(r"[ \t]*[+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?[ \t]*", re.ASCII)


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


def is_number(text):
    """Whether ``text`` is a plain ASCII number (the fields a log row may hold)."""
    return _NUMBER.fullmatch(text) is not None


def _to_int(field):
    """int of a numeric field ("12", "12.0", " 12 "); ValueError when not a plain whole number."""
    if not is_number(field):
        raise ValueError(field)
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


def _fast_parse(lines, num_columns=NUM_COLUMNS):
    """All lines at once when they are all plain well-formed rows, else None.

    One ``np.fromstring`` over the joined block replaces 19 ``int()`` calls per row (~10x);
    NumPy's "could not be read to its end" warning is turned into the signal to fall back to
    :func:`parse_lines_slow`, which then names the bad rows.
    """
    import warnings

    if not lines:
        return None
    for line in lines:
        if line.count(b",") != num_columns - 1 or b'"' in line:
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
    if values.size != len(lines) * num_columns:
        return None
    if (values == _I64.max).any() or (values == _I64.min).any():
        return None  # fromstring saturates out-of-range numbers; the slow path rejects them
    return values.reshape(len(lines), num_columns)


def parse_lines(lines, block=5000, order=None):
    """Parse raw lines (bytes without the newline).

    ``order``: for each of the 19 columns of docs/design.md §3, its position in the file (from the
    file's header, ``inputs.column_order``); None = the file is in the §3 order.
    Returns ``(values [n, 19] int64 in §3 order, kept [n] indices into lines, rejects
    [(index, reason)])``. Blocks of clean rows take the vectorised path (one column gather per
    block for a reordered file); a block with any bad row is parsed row by row.
    """
    order = None if order is None or list(order) == list(range(NUM_COLUMNS)) else np.asarray(order, np.int64)
    values, kept, rejects = [], [], []
    for start in range(0, len(lines), block):
        part = [line[:-1] if line.endswith(b"\r") else line for line in lines[start:start + block]]
        fast = _fast_parse(part)
        if fast is not None:
            values.append(fast if order is None else fast[:, order])
            kept.append(np.arange(start, start + len(part), dtype=np.int64))
            continue
        v, k, r = parse_lines_slow(part, order)
        values.append(v)
        kept.append(k + start)
        rejects += [(i + start, reason) for i, reason in r]
    if not values:
        return np.zeros((0, NUM_COLUMNS), np.int64), np.zeros(0, np.int64), rejects
    return np.concatenate(values), np.concatenate(kept), rejects


def parse_lines_slow(lines, order=None):
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
        if order is not None:
            fields = [fields[k] for k in order]
        try:
            row = [_to_int(f) for f in fields]
        except (ValueError, OverflowError):
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


def _days_from_civil(year, month, day):
    """Days since 1970-01-01 of proleptic Gregorian dates, vectorised (H. Hinnant's algorithm)."""
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def calendar_ms(date, hourmin):
    """``(epoch ms of YYYYMMDD HH:MM Beijing time, the date is a real one)`` per row."""
    date = np.asarray(date, np.int64)
    year, month, day = date // 10000, (date // 100) % 100, date % 100
    sane = (year >= 1970) & (year <= 2100) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)
    days = _days_from_civil(np.where(sane, year, 1970), np.where(sane, month, 1), np.where(sane, day, 1))
    ms = days * 86_400_000 + (hourmin // 100) * 3_600_000 + (hourmin % 100) * 60_000 - BEIJING_OFFSET_MS
    # 20220231 maps to 2022-03-03: a real date reads back as itself
    real = sane & (local_calendar(days * 86_400_000 - BEIJING_OFFSET_MS)[0] == date)
    return ms, real


def not_in_side_tables(values, video_table=None, user_table=None):
    """``{"video_features": rows whose video the table lacks, "user_features": ...}`` (tables given only)."""
    out = {}
    if video_table is not None:
        out["video_features"] = int((~video_table.index(values[:, COLUMN_INDEX["video_id"]])[1]).sum())
    if user_table is not None:
        out["user_features"] = int((~user_table.contains(values[:, COLUMN_INDEX["user_id"]])).sum())
    return out


def range_reasons(values):
    """Reason per parsed row (None = valid), vectorised over the rows."""
    n = len(values)
    reasons = np.full(n, None, dtype=object)
    if n == 0:
        return reasons

    def mark(mask, reason):
        mask = mask & (reasons == None)  # noqa: E711  (object array comparison)
        reasons[mask] = reason

    mark(values[:, _DUR] < 0, "bad_duration")
    mark((values[:, _TIMES] < 0).any(1), "negative_time")
    hourmin = values[:, COLUMN_INDEX["hourmin"]]
    logged_ms, real_date = calendar_ms(values[:, COLUMN_INDEX["date"]], hourmin)
    out = ((values[:, _IDS] < 0).any(1) | ((values[:, _FLAGS] != 0) & (values[:, _FLAGS] != 1)).any(1)
           | ~real_date | (hourmin < 0) | (hourmin // 100 > 23)
           | (hourmin % 100 > 59) | (values[:, COLUMN_INDEX["tab"]] < 0) | (values[:, COLUMN_INDEX["is_comment"]] < 0))
    mark(out, "out_of_range")
    mark((values[:, _PLAY] > MAX_TIME_MS) | (values[:, _DUR] > MAX_TIME_MS), "too_long")
    mark(np.abs(values[:, COLUMN_INDEX["time_ms"]] - logged_ms) > DATE_TOLERANCE_MS, "date_mismatch")
    return reasons


def validate_lines(lines, order=None):
    """``(valid values [m, 19], valid line indices [m], rejects [(line index, reason)])``."""
    values, kept, rejects = parse_lines(lines, order=order)
    reasons = range_reasons(values)
    bad = reasons != None  # noqa: E711
    rejects = rejects + [(int(kept[j]), reasons[j]) for j in np.flatnonzero(bad)]
    return values[~bad], kept[~bad], rejects
