"""The per-user step: each user's rows, from every range they were read in → that user's examples.

A ``GroupByKey`` on ``user_id`` gathers a user's row arrays; the user is sorted once,
de-duplicated (a second ``user_id, video_id, time_ms`` goes to the dead letter as
``duplicate_event``), joined with the side tables (a video or user a table lacks gets -1: out of
vocabulary, the row is kept), labelled, windowed by the native history builder and split by date
(``user_examples.py``, pure NumPy). A bundle's users are serialised together by the vectorised
``tf.train.Example`` encoder (``example_encoder.py``), in batches of about ``--encode_batch``
examples whatever the users' sizes: a heavy user is cut into pieces with the context their
windows need (``user_examples.slices``).
"""
from __future__ import annotations

import logging

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipelines import COUNTER_NAMESPACE, example_encoder, history_context, user_examples
from beam_pipelines.dead_letter import dead_letter_json
from beam_pipelines.stats import merge_stats

SPLITS = ("train", "eval")


class UserExamplesFn(beam.DoFn):
    """Sort, dedup, label, window and split one user; serialise a bundle's examples in batches.

    Emits serialised examples (tags ``train`` and ``eval``), dead letters (``dead``) and one
    statistics dict per bundle (``stats``). Counters: ``train_examples``, ``eval_examples``,
    ``dead_letter_duplicate_event``, ``history_only_picture_post``.
    """

    def __init__(self, spec, tables, history_length, implementation, encode_batch, write_state=False):
        self.spec = spec
        self.tables = tables
        self.history_length = history_length
        self.implementation = implementation
        self.encode_batch = encode_batch
        self.write_state = write_state

    def setup(self):
        self.video_table, self.user_table = self.tables.load()
        self.written, self.next_log = 0, 100_000
        self.dup_counter = Metrics.counter(COUNTER_NAMESPACE, "dead_letter_duplicate_event")
        self.history_dup_counter = Metrics.counter(COUNTER_NAMESPACE, "history_dead_letter_duplicate_event")
        self.picture_counter = Metrics.counter(COUNTER_NAMESPACE, "history_only_picture_post")
        self.examples_counter = {s: Metrics.counter(COUNTER_NAMESPACE, f"{s}_examples") for s in SPLITS}

    def start_bundle(self):
        self.buffer = []
        self.buffered = 0
        self.stats = {}
        self.eval_dates = []

    def process(self, element, eval_dates):
        user_id, groups = element
        groups = list(groups)
        history = [g for g in groups if history_context.is_history(g)]
        groups = [g for g in groups if not history_context.is_history(g)]
        if history:  # one per user from the combiner; several only if the history came in pieces
            history = history_context.cut(history, self.history_length)
            groups.insert(0, (None, history["values"], history["offsets"]))
        # History rows rank first among copies of one event: they were read on an earlier day.
        hist_paths = list(history["paths"]) if history else []
        paths = hist_paths + sorted({g[0] for g in groups if g[0] is not None})
        path_rank = {p: i for i, p in enumerate(paths)}
        values = np.concatenate([g[1] for g in groups])
        offsets = np.concatenate([g[2] for g in groups])
        source = np.concatenate([history["source"] if g[0] is None else np.full(len(g[1]), path_rank[g[0]], np.int64)
                                 for g in groups])
        keep, dups = user_examples.sort_and_dedup(values, source * (1 << 40) + offsets)
        in_history = source < len(hist_paths)
        new_dups = [j for j in dups if not in_history[j]]
        if new_dups:
            merge_stats(self.stats, {"dead": {"duplicate_event": len(new_dups)}})
        for j in new_dups:
            self.dup_counter.inc()
            yield beam.pvalue.TaggedOutput("dead", dead_letter_json(
                "duplicate_event", f"{paths[source[j]]}:{offsets[j]}", ",".join(map(str, values[j].tolist()))))
        if history:
            yield from self._history(history, values[keep], in_history[keep],
                                     [(paths[source[j]], offsets[j], values[j]) for j in dups if in_history[j]])
        if self.write_state:
            last = values[keep][-self.history_length:]
            merge_stats(self.stats, {"state": {"users": 1, "rows": len(last)}})
            for line in history_context.state_lines(last):
                yield beam.pvalue.TaggedOutput("state", line)
        self.eval_dates = eval_dates
        context = in_history[keep] if history else None
        if context is not None and context.all():
            return  # a user of the history only: no new row, no example
        # A heavy user is cut into pieces (with the context their windows need), so a batch never
        # holds much more than encode_batch examples, whatever the user's size.
        for piece in user_examples.slices(values[keep], self.history_length, self.encode_batch, context):
            self.buffer.append(piece)
            self.buffered += int(user_examples.target_mask(*piece).sum())
            if self.buffered >= self.encode_batch:
                yield from self._flush()

    def _history(self, history, rows, mask, more_duplicates):
        """Dead letters and counts of a user's history rows: ``history_rows`` in the statistics."""
        duplicates = history["duplicates"] + more_duplicates
        for path, offset, row in duplicates:
            self.history_dup_counter.inc()
            yield beam.pvalue.TaggedOutput("dead", dead_letter_json(
                "duplicate_event", f"{path}:{offset}", ",".join(map(str, np.asarray(row).tolist()))))
        counts = {"context": int(mask.sum()), "beyond_window": int(history["beyond_window"])}
        if duplicates:
            counts["dead"] = {"duplicate_event": len(duplicates)}
        later = history_context.later_than_new(rows, mask)
        if later:
            counts["later_than_new_rows"] = later
        merge_stats(self.stats, {"history_rows": counts})

    def _flush(self):
        """Columns, statistics and serialised examples of the buffered users, in one batch."""
        if not self.buffer:
            return
        rows, self.buffer, self.buffered = self.buffer, [], 0
        cols, is_eval = user_examples.batch_columns(rows, self.video_table, self.user_table, self.history_length,
                                                    self.eval_dates, self.implementation)
        merge_stats(self.stats, {
            "splits": {"train": user_examples.split_stats(cols, ~is_eval),
                       "eval": user_examples.split_stats(cols, is_eval)},
            "ids": user_examples.id_counts(cols, ~is_eval),
            "video_duration_ms": user_examples.max_duration(np.concatenate([r for r, _ in rows]))})
        pictures, picture_ids = user_examples.history_only(rows, self.video_table, self.eval_dates)
        if pictures:
            self.picture_counter.inc(pictures)
            merge_stats(self.stats, {"history_only": {"picture_post": pictures}, "ids": picture_ids})
        records = example_encoder.encode_examples({k: cols[k] for k in self.spec}, self.spec)
        self.written += len(records)
        if self.written >= self.next_log:
            logging.info("serialised %d examples in this worker", self.written)
            self.next_log = self.written + 100_000
        for split, mask in (("train", ~is_eval), ("eval", is_eval)):
            self.examples_counter[split].inc(int(mask.sum()))
            for j in np.flatnonzero(mask):
                yield beam.pvalue.TaggedOutput(split, records[j])

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows
        for tagged in self._flush():
            yield beam.pvalue.TaggedOutput(tagged.tag, GlobalWindows.windowed_value(tagged.value))
        if self.stats:
            yield beam.pvalue.TaggedOutput("stats", GlobalWindows.windowed_value(self.stats))
            self.stats = {}


class ExamplesByUser(beam.PTransform):
    """Groups the valid rows by user and turns each user's rows into serialised examples.

    Applied to the ``rows`` output of ``read_logs.ReadLogs``: ``(user_id, (path, values, byte
    offsets))``, any number of elements per user; in an incremental run flattened with the
    history's ``(user_id, history dict)`` of ``history_context.LastEvents``, whose rows are
    sorted among the user's new rows as context only (in the windows, never an example).

    Args:
      spec: the example feature spec (``schema.example_feature_spec``): which columns are written.
      tables: the side tables' paths (:class:`side_tables.SideTablePaths`), joined here.
      history_length: L, events per history window (``--history_length``).
      eval_dates: a single-element PCollection, the list of eval dates (``date_split.EvalDates``).
      implementation: the history-window builder, ``"auto" | "native" | "python"``.
      encode_batch: examples serialised per batch (``--encode_batch``).
      write_state: also emit each user's last L rows after the new day (tag ``state``: CSV lines
        of the history state, ``history_context.py``), every user of the history included.

    Returns the outputs by tag: ``train`` and ``eval`` (serialised ``tf.train.Example`` bytes),
    ``dead`` (dead-letter lines of the duplicate events) and ``stats`` (one dict per bundle:
    ``splits`` with examples and label sums, ``ids`` counted in train, ``video_duration_ms``,
    ``history_only``, ``dead``; with a history ``history_rows`` ``{"context", "beyond_window",
    "dead"}``; with ``write_state`` ``state`` ``{"users", "rows"}``), and ``state``.
    """

    def __init__(self, spec, tables, history_length, eval_dates, implementation="auto", encode_batch=4096,
                 write_state=False):
        super().__init__()
        self.spec = spec
        self.tables = tables
        self.history_length = history_length
        self.eval_dates = eval_dates
        self.implementation = implementation
        self.encode_batch = encode_batch
        self.write_state = write_state

    def expand(self, rows):
        fn = UserExamplesFn(self.spec, self.tables, self.history_length, self.implementation, self.encode_batch,
                            self.write_state)
        outputs = (*SPLITS, "dead", "stats") + (("state",) if self.write_state else ())
        return (rows
                | "ByUser" >> beam.GroupByKey()
                | "Examples" >> beam.ParDo(fn, eval_dates=beam.pvalue.AsSingleton(self.eval_dates)).with_outputs(
                    *outputs))
