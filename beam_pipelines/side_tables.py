"""KuaiRand side tables (``video_features_basic*.csv``, ``user_features*.csv``) as lookup arrays.

Read through Beam's ``FileSystems`` so that the same path works locally and on ``gs://``; read once
per worker (``DoFn.setup``) rather than shipped as a side input, because the real tables are
small next to the logs and every worker needs all of them.

Video table: ``author_id`` and the *first* tag (DESIGN.md §6: ``tag`` is the first tag id, -1 when
unknown), ``video_duration`` in ms (NaN when empty: 239 rows of KuaiRand-Pure have none).
User table: every column but ``user_id`` becomes ``user_<column>`` (``user_active_degree`` keeps
its name): integral numbers -> int64,
other numbers -> float32, text (``user_active_degree``, the ``*_range`` buckets) -> int64 codes
in sorted order of the distinct strings (the codes are recorded in ``metadata.json``); empty
cells -> -1.
"""
from __future__ import annotations

import csv
import io

import numpy as np


def _open_text(path):
    from apache_beam.io.filesystems import FileSystems
    return io.TextIOWrapper(FileSystems.open(path), encoding="utf-8", newline="")


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


class VideoTable:
    """Sorted video ids with author, first tag and duration, looked up with ``searchsorted``."""

    def __init__(self, video_id, author_id, tag, duration_ms, skipped_rows=0):
        order = np.argsort(video_id, kind="stable")
        self.video_id = np.asarray(video_id, np.int64)[order]
        self.author_id = np.asarray(author_id, np.int64)[order]
        self.tag = np.asarray(tag, np.int64)[order]
        self.duration_ms = np.asarray(duration_ms, np.float64)[order]
        self.skipped_rows = skipped_rows

    @classmethod
    def load(cls, path):
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader)
            col = {name.strip(): i for i, name in enumerate(header)}
            vid, author, tag, dur = [], [], [], []
            skipped = 0
            for row in reader:
                try:
                    v = int(float(row[col["video_id"]]))
                    a = int(float(row[col["author_id"]])) if row[col["author_id"]].strip() else -1
                except (ValueError, IndexError):
                    skipped += 1  # a broken side-table row cannot be joined to anything
                    continue
                tags = [t for t in row[col["tag"]].split(",") if t.strip()] if "tag" in col else []
                d = row[col["video_duration"]].strip() if "video_duration" in col else ""
                vid.append(v)
                author.append(a)
                tag.append(int(float(tags[0])) if tags and _is_number(tags[0]) else -1)
                dur.append(float(d) if d and _is_number(d) else np.nan)
        return cls(vid, author, tag, dur, skipped)

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

    def __init__(self, user_id, columns, dtypes, codes):
        order = np.argsort(user_id, kind="stable")
        self.user_id = np.asarray(user_id, np.int64)[order]
        self.columns = {k: np.asarray(v)[order] for k, v in columns.items()}
        self.dtypes = dtypes          # {user_<col>: "int64" | "float32"}
        self.codes = codes            # {user_<col>: [strings in code order]} for text columns

    @property
    def feature_spec(self):
        return [(name, self.dtypes[name]) for name in self.columns]

    @classmethod
    def load(cls, path):
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader)]
            rows = [r for r in reader if len(r) == len(header)]
        uid_col = header.index("user_id")
        ids, keep = [], []
        for r in rows:
            try:
                ids.append(int(float(r[uid_col])))
                keep.append(r)
            except ValueError:
                continue
        columns, dtypes, codes = {}, {}, {}
        for c, name in enumerate(header):
            if c == uid_col:
                continue
            raw = [r[c].strip() for r in keep]
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
        return cls(ids, columns, dtypes, codes)

    def contains(self, user_ids):
        user_ids = np.asarray(user_ids, np.int64)
        if not len(self.user_id):
            return np.zeros(len(user_ids), bool)
        pos = np.clip(np.searchsorted(self.user_id, user_ids), 0, len(self.user_id) - 1)
        return self.user_id[pos] == user_ids

    def row(self, user_id):
        """``{user_<col>: scalar}`` of one user (the caller checked the user is known)."""
        pos = int(np.searchsorted(self.user_id, user_id))
        return {name: values[pos] for name, values in self.columns.items()}
