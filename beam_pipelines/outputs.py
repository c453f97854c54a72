"""What the job writes: the examples' and the corpus's TFRecord shards, the vocabularies, metadata.json.

The vocabularies, the corpus and ``metadata.json`` are pure functions of the merged statistics
(``stats.py``), so they always agree with each other and with the examples; the layout of the
folder is docs/design.md §6 (``metadata.json``: docs/INTERFACES.md).
"""
from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes

from beam_pipelines import example_encoder
from beam_pipelines.date_split import eval_dates_of
from tfrec_kuai.schema import CORPUS_FEATURES, LABEL_NAMES, VOCAB_FEATURES


def vocabulary(counts, min_count, with_counts=False):
    """Ids with at least ``min_count`` occurrences, most frequent first (ties: smaller id first);
    ``with_counts``: ``(ids, their counts)``."""
    items = [(int(k), int(v)) for k, v in counts.items() if int(v) >= min_count]
    items.sort(key=lambda kv: (-kv[1], kv[0]))
    ids = [k for k, _ in items]
    return (ids, [v for _, v in items]) if with_counts else ids


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
                   eval_days, corpus_videos, corpus_missing, command, options, side_information=None, inputs=None,
                   history=None):
    """The ``metadata.json`` dict (layout: docs/INTERFACES.md).

    ``rows.input = rows.used + rows.dead_letter``, where ``used`` = train + eval examples + the
    history-only rows (picture posts: in histories, not targets). An incremental run
    (``history``: what it read as history) adds ``history`` and ``rows.history_rows``, the
    earlier rows' own tally: ``input = dead_letter + context + beyond_window``.
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
    meta = {
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
    if history is not None:
        h = stats.get("history_rows", {})
        h_dead = {k: int(v) for k, v in sorted(h.get("dead", {}).items())}
        meta["rows"]["history_rows"] = {
            "input": int(h.get("input", 0)), "dead_letter": sum(h_dead.values()), "dead_letter_by_reason": h_dead,
            "context": int(h.get("context", 0)), "beyond_window": int(h.get("beyond_window", 0)),
            "later_than_new_rows": int(h.get("later_than_new_rows", 0))}
        meta["history"] = history
    return meta


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


def write_summary(stats, output, tables, meta_kwargs, vocab_min_count):
    """Vocabulary files and metadata.json (runs once, on the merged statistics).

    ``vocab/<feature>.txt`` holds the ids; its sibling ``vocab/<feature>.counts.txt`` their
    occurrences, line for line (what ``train --min_count`` selects by; the ids file is unchanged
    by it, so readers of the ids alone see what they always saw)."""
    ids = stats.get("ids", {})
    sizes = {}
    for feature in VOCAB_FEATURES:
        vocab, counts = vocabulary(ids.get(feature, {}), vocab_min_count, with_counts=True)
        sizes[feature] = len(vocab)
        write_text(f"{output}/vocab/{feature}.txt", "".join(f"{v}\n" for v in vocab))
        write_text(f"{output}/vocab/{feature}.counts.txt", "".join(f"{c}\n" for c in counts))
    cols, missing = corpus_rows(stats, tables.video_table())
    meta = build_metadata(stats, vocab_sizes=sizes, vocab_min_count=vocab_min_count,
                          corpus_videos=len(cols["video_id"]), corpus_missing=missing, **meta_kwargs)
    write_text(f"{output}/metadata.json", json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return meta


class WriteTFRecords(beam.PTransform):
    """Writes serialised records as gzip TFRecord shards ``FOLDER/part-*-of-*.tfrecord.gz``.

    Args:
      folder: the shards' folder (``OUTPUT/train``, ``OUTPUT/eval``, ``OUTPUT/corpus``).
    """

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def expand(self, records):
        return records | "Write" >> beam.io.WriteToTFRecord(
            f"{self.folder}/part", file_name_suffix=".tfrecord.gz", compression_type=CompressionTypes.GZIP)


class CorpusFn(beam.DoFn):
    """The merged statistics → the corpus's serialised rows (:func:`corpus_rows`)."""

    def __init__(self, tables):
        self.tables = tables

    def process(self, stats):
        cols, _ = corpus_rows(stats, self.tables.video_table())
        yield from example_encoder.encode_examples(cols, corpus_spec())


class WriteCorpus(beam.PTransform):
    """Writes ``OUTPUT/corpus/``: one row per video known to the video table or seen in the log.

    Applied to the merged statistics (a single dict, ``stats.MergeStats``).

    Args:
      output: the examples folder being written.
      tables: the side tables' paths (:class:`side_tables.SideTablePaths`): author, tag and
        duration come from the video table when one is given.
    """

    def __init__(self, output, tables):
        super().__init__()
        self.output = output
        self.tables = tables

    def expand(self, stats):
        return (stats
                | "Rows" >> beam.ParDo(CorpusFn(self.tables))
                | "Write" >> WriteTFRecords(f"{self.output}/corpus"))


class WriteSummary(beam.PTransform):
    """Writes ``OUTPUT/vocab/<feature>.txt`` (and ``.counts.txt``) and ``OUTPUT/metadata.json`` from the merged statistics.

    Args:
      output: the examples folder being written.
      tables: the side tables' paths (the video table's durations decide which videos the
        corpus, and so ``rows.corpus_videos``, holds).
      meta_kwargs: what ``metadata.json`` records that the statistics do not know (the spec,
        the flags, the command, the inputs...): the keyword arguments of :func:`build_metadata`.
      vocab_min_count: ids seen fewer times in train are left out of the vocabularies.

    Returns a single-element PCollection, the ``metadata.json`` dict.
    """

    def __init__(self, output, tables, meta_kwargs, vocab_min_count):
        super().__init__()
        self.output = output
        self.tables = tables
        self.meta_kwargs = meta_kwargs
        self.vocab_min_count = vocab_min_count

    def expand(self, stats):
        return stats | "Write" >> beam.Map(write_summary, self.output, self.tables, self.meta_kwargs,
                                           self.vocab_min_count)
