"""The job's summary: merging of per-bundle statistics, vocabularies, corpus rows, metadata.json.

Statistics travel as small dicts (one per read range and one per bundle of users, never one per
row) and are merged by :class:`StatsCombineFn`; everything written from them is a pure function
of the merged dict, so the vocabulary files, the corpus and ``metadata.json`` always agree.
"""
from __future__ import annotations

import json

import apache_beam as beam
import numpy as np

from tfrec_kuai.schema import CORPUS_FEATURES, LABEL_NAMES, VOCAB_FEATURES

_MAX_KEYS = ("video_duration_ms",)


def merge_stats(a, b):
    """Recursive merge: numbers add, ``video_duration_ms`` keeps the max, dicts merge key-wise."""
    for key, value in b.items():
        if key not in a:
            a[key] = value if not isinstance(value, dict) else merge_stats({}, value)
        elif key in _MAX_KEYS:
            for k, v in value.items():
                a[key][k] = max(a[key].get(k, v), v)
        elif isinstance(value, dict):
            merge_stats(a[key], value)
        else:
            a[key] = a[key] + value
    return a


class StatsCombineFn(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        return merge_stats(acc, element)

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            merge_stats(out, acc)
        return out

    def extract_output(self, acc):
        return acc


def eval_dates_of(dates, eval_days):
    """The last ``eval_days`` distinct dates (the eval split); the rest trains."""
    dates = sorted(int(d) for d in dates)
    if eval_days <= 0:
        return []
    return dates[-eval_days:] if len(dates) > eval_days else dates[1:] if len(dates) > 1 else []


def vocabulary(counts, min_count):
    """Ids with at least ``min_count`` occurrences, most frequent first (ties: smaller id first)."""
    items = [(int(k), int(v)) for k, v in counts.items() if int(v) >= min_count]
    items.sort(key=lambda kv: (-kv[1], kv[0]))
    return [k for k, _ in items]


def corpus_rows(stats, video_table):
    """``(columns, missing)``: one row per video known to the table or used in the log.

    Duration: the table's, else the longest the log recorded; videos with neither are left out
    (counted in ``missing``) because a retrieval candidate without a duration cannot be scored.
    """
    log_dur = {int(k): v for k, v in stats.get("video_duration_ms", {}).items()}
    ids = set(log_dur)
    if video_table is not None:
        ids |= set(video_table.video_id.tolist())
    ids = np.array(sorted(ids), dtype=np.int64)
    if video_table is not None and len(ids):
        author, tag = video_table.lookup(ids)
        pos, found = video_table.index(ids)
        table_dur = np.where(found, video_table.duration_ms[pos], np.nan)
    else:
        author = np.full(len(ids), -1, np.int64)
        tag = np.full(len(ids), -1, np.int64)
        table_dur = np.full(len(ids), np.nan)
    logged = np.array([log_dur.get(int(v), np.nan) for v in ids], dtype=np.float64)
    dur_ms = np.where(np.isfinite(table_dur) & (table_dur > 0), table_dur, logged)
    keep = np.isfinite(dur_ms) & (dur_ms > 0)
    cols = {"video_id": ids[keep], "author_id": author[keep], "tag": tag[keep],
            "duration_s": (dur_ms[keep] / 1000.0).astype(np.float32)}
    return cols, int((~keep).sum())


def corpus_spec():
    from tfrec_kuai.schema import FeatureDesc
    return {name: FeatureDesc(dtype, []) for name, dtype in CORPUS_FEATURES.items()}


def build_metadata(stats, *, spec, history_length, user_features, user_codes, vocab_sizes, vocab_min_count,
                   eval_days, corpus_videos, corpus_missing, command, options, side_information=None, inputs=None):
    """The ``metadata.json`` dict (layout: docs/INTERFACES.md).

    ``rows.input = rows.used + rows.dead_letter``, where ``used`` = train + eval examples + the
    history-only rows (picture posts: in histories, not targets).
    """
    dead = {k: int(v) for k, v in sorted(stats.get("dead", {}).items())}
    history_only = {k: int(v) for k, v in sorted(stats.get("history_only", {}).items())}
    splits = stats.get("splits", {})
    train_n = int(splits.get("train", {}).get("examples", 0))
    eval_n = int(splits.get("eval", {}).get("examples", 0))
    rates = {}
    for split in ("train", "eval"):
        s = splits.get(split, {})
        n = max(int(s.get("examples", 0)), 1)
        rates[split] = {name: float(s.get("label_sums", {}).get(name, 0.0)) / n for name in LABEL_NAMES}
    dates = sorted(int(d) for d in stats.get("dates", {}))
    eval_dates = eval_dates_of(dates, eval_days)
    return {
        "history_length": history_length,
        "features": {name: {"dtype": d.dtype, "shape": list(d.shape)} for name, d in spec.items()},
        "label_names": list(LABEL_NAMES),
        "user_feature_names": [name for name, _ in user_features],
        "user_feature_codes": user_codes,
        "vocab_sizes": vocab_sizes,
        "vocab_min_count": vocab_min_count,
        "rows": {"input": int(stats.get("input", 0)), "used": train_n + eval_n + sum(history_only.values()),
                 "dead_letter": sum(dead.values()), "dead_letter_by_reason": dead,
                 "train_examples": train_n, "eval_examples": eval_n,
                 "history_only": sum(history_only.values()), "history_only_by_reason": history_only,
                 "corpus_videos": corpus_videos, "corpus_videos_without_duration": corpus_missing},
        "label_rates": rates,
        "date_split": {"train_dates": [d for d in dates if d not in eval_dates], "eval_dates": eval_dates,
                       "eval_days": eval_days},
        "corpus_features": {name: {"dtype": dtype, "shape": []} for name, dtype in CORPUS_FEATURES.items()},
        "side_information": _with_coverage(side_information, stats.get("not_in_side_table", {})),
        "inputs": inputs or {},
        "command": command,
        "pipeline_options": options,
    }


def _with_coverage(side_information, missing):
    """``side_information`` (null per absent table) with each given table's ``log_rows_not_in_table``."""
    out = {"video_features": None, "user_features": None}
    for key, summary in (side_information or {}).items():
        out[key] = None if summary is None else dict(summary, log_rows_not_in_table=int(missing.get(key, 0)))
    return out


def write_text(path, text):
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def write_summary(stats, output, video_table_path, meta_kwargs, vocab_min_count):
    """Vocabulary files and metadata.json (runs once, on the merged statistics)."""
    from beam_pipelines.side_tables import VideoTable

    ids = stats.get("ids", {})
    sizes = {}
    for feature in VOCAB_FEATURES:
        vocab = vocabulary(ids.get(feature, {}), vocab_min_count)
        sizes[feature] = len(vocab)
        write_text(f"{output}/vocab/{feature}.txt", "".join(f"{v}\n" for v in vocab))
    table = VideoTable.load(video_table_path) if video_table_path else None
    cols, missing = corpus_rows(stats, table)
    meta = build_metadata(stats, vocab_sizes=sizes, vocab_min_count=vocab_min_count,
                          corpus_videos=len(cols["video_id"]), corpus_missing=missing, **meta_kwargs)
    write_text(f"{output}/metadata.json", json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return meta
