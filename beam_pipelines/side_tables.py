"""KuaiRand side tables (``video_features_basic*.csv``, ``user_features*.csv``) as lookup arrays.

Read through Beam's ``FileSystems`` so that the same path works locally and on ``gs://``; read once
per worker (``DoFn.setup``) rather than shipped as a side input, because the real tables are
small next to the logs and every worker needs all of them.

Video table: ``author_id`` and the *first* tag (docs/design.md §6: ``tag`` is the first tag id, -1 when
unknown), ``video_duration`` in ms (NaN when empty: 239 rows of KuaiRand-Pure have none).
User table: every column but ``user_id`` becomes ``user_<column>`` (``user_active_degree`` keeps
its name): integral numbers -> int64,
other numbers -> float32, text (``user_active_degree``, the ``*_range`` buckets) -> int64 codes
in sorted order of the distinct strings (the codes are recorded in ``metadata.json``); empty
cells -> -1.

KuaiRand writes ``-124`` for a missing value: a cell holding it is read as empty (author -1, tag
-1, duration NaN, user column -1), never as a value. The first line must be the header; a table
without one (or without its id column) is an :class:`InputError` naming the file and the column.
Rows that cannot be used are not dropped silently: a row with the wrong number of fields or an id
that is not a number is a ``broken_row``, a second row of an id a ``duplicate_row`` (the first is
kept); both are counted in :attr:`problems`, logged, and recorded in ``metadata.json``
(``side_information``).
"""
from __future__ import annotations

import csv
import io
import logging
from collections import namedtuple

import numpy as np

from beam_pipelines import InputError

MISSING_CODES = ("-124", "-124.0")  # KuaiRand's missing value


def _open_text(path):
    from apache_beam.io.filesystems import FileSystems
    return io.TextIOWrapper(FileSystems.open(path), encoding="utf-8", newline="")


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _cell(text):
    """A side-table cell, stripped, with KuaiRand's missing code read as empty."""
    text = text.strip()
    return "" if text in MISSING_CODES else text


def _header(path, reader, required, kind):
    """``{column name: position}`` of a side table's header; InputError when a required column is absent."""
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a CSV {kind} table ({e})") from None
    if header is None:
        raise InputError(f"{path}: the {kind} table is empty (it needs a header line naming {', '.join(required)})")
    col = {}
    for i, name in enumerate(header):
        col.setdefault(name.strip().lstrip("\ufeff").strip(), i)
    missing = [c for c in required if c not in col]
    if missing:
        raise InputError(f"{path}: the {kind} table has no column {', '.join(repr(m) for m in missing)} "
                         f"(its first line must be the header; it reads {', '.join(list(col)[:6])})")
    return col, len(header)


def _rows(path, reader, width, id_col, problems):
    """``(id, row)`` of each usable row; broken and duplicate rows counted in ``problems``."""
    seen = set()
    try:
        for row in reader:
            if not any(c.strip() for c in row):
                continue  # a blank line
            cell = _cell(row[id_col]) if len(row) == width else ""
            try:
                ident = int(float(cell))
            except ValueError:
                problems["broken_row"] += 1
                continue
            if ident in seen:
                problems["duplicate_row"] += 1
                continue
            seen.add(ident)
            yield ident, row
    except (csv.Error, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable after {len(seen)} rows ({e})") from None


def _report(path, kind, problems):
    if any(problems.values()):
        logging.warning("%s table %s: %s", kind, path,
                        ", ".join(f"{v} {k}(s) skipped" for k, v in problems.items() if v))


class VideoTable:
    """Sorted video ids with author, first tag and duration, looked up with ``searchsorted``."""

    def __init__(self, video_id, author_id, tag, duration_ms, problems=None, path=None):
        order = np.argsort(video_id, kind="stable")
        self.video_id = np.asarray(video_id, np.int64)[order]
        self.author_id = np.asarray(author_id, np.int64)[order]
        self.tag = np.asarray(tag, np.int64)[order]
        self.duration_ms = np.asarray(duration_ms, np.float64)[order]
        self.problems = dict(problems or {"broken_row": 0, "duplicate_row": 0})
        self.path = path

    @property
    def skipped_rows(self):
        return sum(self.problems.values())

    @classmethod
    def load(cls, path):
        problems = {"broken_row": 0, "duplicate_row": 0}
        with _open_text(path) as f:
            reader = csv.reader(f)
            col, width = _header(path, reader, ("video_id", "author_id"), "video")
            vid, author, tag, dur = [], [], [], []
            for v, row in _rows(path, reader, width, col["video_id"], problems):
                a = _cell(row[col["author_id"]])
                tags = [t for t in (_cell(t) for t in row[col["tag"]].split(",")) if t] if "tag" in col else []
                d = _cell(row[col["video_duration"]]) if "video_duration" in col else ""
                vid.append(v)
                author.append(int(float(a)) if a and _is_number(a) else -1)
                tag.append(int(float(tags[0])) if tags and _is_number(tags[0]) else -1)
                dur.append(float(d) if d and _is_number(d) else np.nan)
        _report(path, "video", problems)
        return cls(vid, author, tag, dur, problems, path)

    def summary(self):
        """What ``metadata.json`` records of the table (``side_information.video_features``)."""
        return {"path": self.path, "videos": int(len(self.video_id)),
                "videos_without_duration": int(np.isnan(self.duration_ms).sum()),
                "videos_without_author": int((self.author_id < 0).sum()),
                "rows_skipped": dict(self.problems)}

    def index(self, video_ids):
        """Positions of ``video_ids`` in the table and whether each was found."""
        video_ids = np.asarray(video_ids, np.int64)
        pos = np.clip(np.searchsorted(self.video_id, video_ids), 0, max(len(self.video_id) - 1, 0))
        found = (self.video_id[pos] == video_ids) if len(self.video_id) else np.zeros(len(video_ids), bool)
        return pos, found

    def lookup(self, video_ids):
        """``(author_id, tag)`` of each video, -1 for videos the table lacks."""
        pos, found = self.index(video_ids)
        if not len(self.video_id):
            minus = np.full(len(pos), -1, np.int64)
            return minus, minus.copy()
        return np.where(found, self.author_id[pos], -1), np.where(found, self.tag[pos], -1)


class UserTable:
    """User side-table columns as ``user_<column>`` arrays aligned with sorted user ids."""

    def __init__(self, user_id, columns, dtypes, codes, problems=None, path=None):
        order = np.argsort(user_id, kind="stable")
        self.user_id = np.asarray(user_id, np.int64)[order]
        self.columns = {k: np.asarray(v)[order] for k, v in columns.items()}
        self.dtypes = dtypes          # {user_<col>: "int64" | "float32"}
        self.codes = codes            # {user_<col>: [strings in code order]} for text columns
        self.problems = dict(problems or {"broken_row": 0, "duplicate_row": 0})
        self.path = path

    @property
    def feature_spec(self):
        return [(name, self.dtypes[name]) for name in self.columns]

    @classmethod
    def load(cls, path):
        problems = {"broken_row": 0, "duplicate_row": 0}
        with _open_text(path) as f:
            reader = csv.reader(f)
            col, width = _header(path, reader, ("user_id",), "user")
            header = sorted(col, key=col.get)
            pairs = list(_rows(path, reader, width, col["user_id"], problems))
        _report(path, "user", problems)
        uid_col = col["user_id"]
        ids = [i for i, _ in pairs]
        keep = [r for _, r in pairs]
        columns, dtypes, codes = {}, {}, {}
        for name in header:
            c = col[name]
            if c == uid_col:
                continue
            raw = [_cell(r[c]) for r in keep]
            present = [x for x in raw if x]
            feature = name if name.startswith("user_") else f"user_{name}"
            if all(_is_number(x) for x in present):
                values = np.array([float(x) if x else np.nan for x in raw], np.float64)
                finite = values[np.isfinite(values)]
                if np.all(finite == np.round(finite)):
                    columns[feature] = np.where(np.isfinite(values), values, -1).astype(np.int64)
                    dtypes[feature] = "int64"
                else:
                    columns[feature] = np.where(np.isfinite(values), values, -1).astype(np.float32)
                    dtypes[feature] = "float32"
            else:
                vocab = sorted(set(present))
                index = {v: i for i, v in enumerate(vocab)}
                columns[feature] = np.array([index[x] if x else -1 for x in raw], np.int64)
                dtypes[feature] = "int64"
                codes[feature] = vocab
        return cls(ids, columns, dtypes, codes, problems, path)

    def summary(self):
        """What ``metadata.json`` records of the table (``side_information.user_features``)."""
        return {"path": self.path, "users": int(len(self.user_id)), "features": [n for n, _ in self.feature_spec],
                "rows_skipped": dict(self.problems)}

    def index(self, user_ids):
        """Positions of ``user_ids`` in the table and whether each was found."""
        user_ids = np.asarray(user_ids, np.int64)
        if not len(self.user_id):
            return np.zeros(len(user_ids), np.int64), np.zeros(len(user_ids), bool)
        pos = np.clip(np.searchsorted(self.user_id, user_ids), 0, len(self.user_id) - 1)
        return pos, self.user_id[pos] == user_ids

    def contains(self, user_ids):
        return self.index(user_ids)[1]

    def row(self, user_id):
        """``{user_<col>: scalar}`` of one user (the caller checked the user is known)."""
        pos = int(np.searchsorted(self.user_id, user_id))
        return {name: values[pos] for name, values in self.columns.items()}


class SideTablePaths(namedtuple("SideTablePaths", ["video_features", "user_features"])):
    """Where the side tables are (``--video_features``, ``--user_features``; None: not given).

    What a DoFn carries instead of the tables: each worker loads them in ``setup`` (see the module
    docstring), and a lookup of an id a table lacks gives -1, out of vocabulary, never a dropped row.
    """

    __slots__ = ()

    def video_table(self):
        """The :class:`VideoTable`, or None when none was given."""
        return VideoTable.load(self.video_features) if self.video_features else None

    def load(self):
        """``(VideoTable or None, UserTable or None)``."""
        return self.video_table(), UserTable.load(self.user_features) if self.user_features else None

    def load_checked(self):
        """:meth:`load` for the launcher: a path that does not exist is an :class:`InputError` naming its flag.

        The launcher loads the tables once before the pipeline is built, so that a bad table
        stops the job before it starts.
        """
        from apache_beam.io.filesystems import FileSystems
        tables = []
        for flag, path, cls in zip(self._fields, self, (VideoTable, UserTable)):
            if path is not None and not FileSystems.exists(path):
                raise InputError(f"--{flag} {path!r}: no such file")
            tables.append(cls.load(path) if path is not None else None)
        return tuple(tables)


def side_information(video_table, user_table):
    """``metadata.json``'s ``side_information``: what each side table gave, null when it was absent."""
    return {"video_features": video_table.summary() if video_table is not None else None,
            "user_features": user_table.summary() if user_table is not None else None}
