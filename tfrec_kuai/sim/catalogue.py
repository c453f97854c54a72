"""The simulator's catalogue (videos) and user table: the real KuaiRand-Pure side tables or
generated ones of the same shape.

Topics are KuaiRand's tag ids: a video's tags are what the users' latent likes and dislikes are
about. A video without tags still has a topic (drawn at random, hidden from the side table), as a
real video without tags still has content. Missing durations stay missing in the written side
table (the Beam job must cope, as with the real file) but the log needs a duration, so those
videos get a drawn one that is recorded only in the log rows.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
from dataclasses import dataclass

import numpy as np

from tfrec_kuai.schema import VIDEO_FEATURE_COLUMNS

PURE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "kuairand_pure")
PURE_VIDEOS = os.path.join(PURE_DIR, "video_features_basic_pure.csv")
PURE_USERS = os.path.join(PURE_DIR, "user_features_pure.csv")
MAX_TAGS = 3
NEW_AUTHOR_SHARE = 0.3    # of videos drawn like the catalogue's (draw_like): by a new author


@dataclass
class Catalogue:
    video_id: np.ndarray      # [V] int64 (log ids)
    author_id: np.ndarray     # [V] int64
    duration_ms: np.ndarray   # [V] int64, the duration the log carries (always > 0)
    tags: np.ndarray          # [V, MAX_TAGS] topic indices into topic_ids, -1 = none
    topic_ids: np.ndarray     # [K] tag id of every topic
    quality: np.ndarray       # [V] float, latent appeal independent of the user
    table_header: list        # the side table as written: header ...
    base_rows: list           # ... and the rows (strings) of the table it was loaded or generated from
    row_source: np.ndarray    # [V] int32: the base row each video's side-table row copies
    upload_ordinal: np.ndarray  # [V] int32: a drawn video's upload date (date.toordinal), -1: the row verbatim

    @property
    def num_topics(self):
        return len(self.topic_ids)

    def table_rows(self, videos=None):
        """The side-table rows (lists of strings) of ``videos`` (catalogue indices, default all).

        Made one at a time as they are written: a drawn video's row is its base row with its own
        id, author, upload date and duration, so millions of drawn videos never sit in memory as
        strings (the arrays above are the catalogue's only per-video memory)."""
        col = {name: i for i, name in enumerate(self.table_header)}
        rewritten = (col["video_id"], col["author_id"], col["upload_dt"], col["video_duration"])
        for v in range(len(self.video_id)) if videos is None else videos:
            row = self.base_rows[self.row_source[v]]
            if self.upload_ordinal[v] < 0:
                yield row
                continue
            row = list(row)
            for c, value in zip(rewritten, (str(self.video_id[v]), str(self.author_id[v]),
                                            _dt.date.fromordinal(int(self.upload_ordinal[v])).isoformat(),
                                            f"{float(self.duration_ms[v]):.1f}")):
                row[c] = value
            yield row

    def write_table(self, path, videos):
        """Write the side table (header and the rows of ``videos``, catalogue indices) at ``path``."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(self.table_header)
            w.writerows(self.table_rows(videos))
        return path


def _draw_durations_ms(rng, n):
    """Short-video durations: log-normal around ~60 s, clipped to KuaiRand's 5 s .. 10 min range."""
    return np.clip(np.exp(rng.normal(np.log(60.0), 1.0, n)), 5.0, 600.0) * 1000.0


def _finish(rng, video_id, author_id, duration_ms, tag_lists, header, rows):
    """Topic indices, hidden topics for untagged videos, quality."""
    topic_ids = np.array(sorted({t for tags in tag_lists for t in tags}), dtype=np.int64)
    index = {t: i for i, t in enumerate(topic_ids.tolist())}
    tags = np.full((len(video_id), MAX_TAGS), -1, dtype=np.int64)
    for v, tag_list in enumerate(tag_lists):
        if not tag_list:
            tags[v, 0] = rng.integers(len(topic_ids))  # hidden topic
        for j, t in enumerate(tag_list[:MAX_TAGS]):
            tags[v, j] = index[t]
    missing = ~np.isfinite(duration_ms)
    duration_ms = duration_ms.copy()
    duration_ms[missing] = _draw_durations_ms(rng, int(missing.sum()))
    quality = rng.normal(0.0, 0.5, len(video_id))
    return Catalogue(video_id=np.asarray(video_id, np.int64), author_id=np.asarray(author_id, np.int64),
                     duration_ms=np.maximum(np.round(duration_ms), 1000).astype(np.int64), tags=tags,
                     topic_ids=topic_ids, quality=quality, table_header=header, base_rows=rows,
                     row_source=np.arange(len(rows), dtype=np.int32),
                     upload_ordinal=np.full(len(rows), -1, np.int32))


def load_pure_catalogue(rng, path=PURE_VIDEOS):
    """The real KuaiRand-Pure video table (7,583 videos), rows kept verbatim for the side table."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    col = {name: i for i, name in enumerate(header)}
    video_id = [int(r[col["video_id"]]) for r in rows]
    author_id = [int(r[col["author_id"]]) for r in rows]
    duration = np.array([float(r[col["video_duration"]]) if r[col["video_duration"]] else np.nan for r in rows])
    tag_lists = [[int(t) for t in r[col["tag"]].split(",") if t.strip()] for r in rows]
    return _finish(rng, video_id, author_id, duration, tag_lists, header, rows)


def generate_catalogue(rng, num_videos=8000, num_topics=40, missing_duration_share=0.03):
    """A catalogue with the shape of KuaiRand's video_features_basic (12 columns)."""
    video_id = np.arange(num_videos)
    num_authors = max(1, int(num_videos / 1.2))
    author_id = rng.integers(1_000_000, 9_000_000, num_authors)[rng.integers(0, num_authors, num_videos)]
    duration = _draw_durations_ms(rng, num_videos)
    duration[rng.random(num_videos) < missing_duration_share] = np.nan
    topic_popularity = rng.dirichlet(np.full(num_topics, 0.7))
    tag_ids = np.arange(1, num_topics + 1)
    tag_lists = []
    rows = []
    for v in range(num_videos):
        k = int(rng.choice([0, 1, 1, 1, 2, 2, 3]))
        tags = list(dict.fromkeys(rng.choice(tag_ids, size=k, p=topic_popularity).tolist())) if k else []
        tag_lists.append(tags)
        dur = "" if np.isnan(duration[v]) else f"{round(duration[v]):.1f}"
        rows.append([str(v), str(author_id[v]), "NORMAL", "2022-04-01", "Web", "0.0", dur, "720.0", "1280.0",
                     str(int(rng.integers(10**9, 10**10))), "9.0", ",".join(map(str, tags))])
    return _finish(rng, video_id, author_id, duration, tag_lists, list(VIDEO_FEATURE_COLUMNS), rows)


def load_pure_users(path=PURE_USERS):
    """Header and rows (strings) of the real KuaiRand-Pure user table (27,285 users)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    return header, rows


def user_table(rng, num_users, use_pure=True):
    """The user side table for ``num_users`` users with ids ``0..num_users-1``.

    Real KuaiRand-Pure rows for ids the real table has; beyond it (more than 27,285 users) a real
    row picked at random is copied under the new id, so every column keeps a realistic value.
    """
    header, rows = load_pure_users()
    if not use_pure:
        rows = [rows[i] for i in rng.integers(0, len(rows), num_users)]
        return header, [[str(u)] + r[1:] for u, r in enumerate(rows)]
    out = rows[:num_users]
    if num_users > len(rows):
        extra = rng.integers(0, len(rows), num_users - len(rows))
        out += [[str(len(rows) + i)] + rows[j][1:] for i, j in enumerate(extra)]
    return header, out


def draw_like(rng, base, count, first_id, upload_dates, new_author_share=NEW_AUTHOR_SHARE, new_authors=None):
    """``count`` new videos that look like ``base``'s: the catalogue grown by uploads.

    Each new video copies the tags (visible and hidden topics alike) and the side-table row of one
    base video and the duration of another, so the tag and duration distributions are the base
    catalogue's; its author is an existing one (picked per video, so prolific authors upload more)
    or, with ``new_author_share``, a new author: a new one per video, or one of ``new_authors``
    new authors (so they too have several videos each); its quality is drawn as the base's. Ids
    follow ``first_id``; ``upload_dates`` (``count`` ``datetime.date.toordinal`` values) fill the
    table's ``upload_dt``.

    Returns a :class:`Catalogue` of the new videos alone, sharing ``base``'s topics and rows."""
    look = rng.integers(0, len(base.video_id), count)
    duration = base.duration_ms[rng.integers(0, len(base.video_id), count)]
    new_author = rng.random(count) < new_author_share
    if new_authors is None:
        new_ids = rng.integers(10_000_000, 20_000_000, count)
    else:
        pool = rng.integers(10_000_000, 20_000_000, max(1, new_authors))
        new_ids = pool[rng.integers(0, len(pool), count)]
    author = np.where(new_author, new_ids, base.author_id[rng.integers(0, len(base.video_id), count)])
    return Catalogue(video_id=np.arange(first_id, first_id + count, dtype=np.int64),
                     author_id=author.astype(np.int64), duration_ms=duration.copy(),
                     tags=base.tags[look].copy(), topic_ids=base.topic_ids,
                     quality=rng.normal(0.0, 0.5, count), table_header=base.table_header,
                     base_rows=base.base_rows, row_source=base.row_source[look].astype(np.int32),
                     upload_ordinal=np.asarray(upload_dates, np.int32))


def concatenate(first, second):
    """One catalogue of ``first``'s videos then ``second``'s (the same topics and base rows)."""
    if second.base_rows is not first.base_rows:
        raise ValueError("concatenate: the two catalogues copy different base tables")
    return Catalogue(**{name: np.concatenate([getattr(first, name), getattr(second, name)])
                        for name in ("video_id", "author_id", "duration_ms", "tags", "quality", "row_source",
                                     "upload_ordinal")},
                     topic_ids=first.topic_ids, table_header=first.table_header, base_rows=first.base_rows)
