"""Reading the logs: the input files, cut into byte ranges → each user's valid rows, the dead letter, statistics.

The files were looked at once by the launcher (``inputs.resolve``: compression, header, column
order); here each byte range is read in blocks of lines and every line validated
(``validation.py``). A bad line goes to the dead letter with its reason; the good rows of a block
leave *grouped per user* as NumPy arrays, one element per user and block instead of one per row,
which is what keeps the shuffle to the per-user step cheap.
"""
from __future__ import annotations

import logging

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipelines import COUNTER_NAMESPACE, inputs, user_examples, validation
from beam_pipelines.dead_letter import dead_letter_json
from tfrec_kuai.schema import COLUMN_INDEX


class ValidateRangeFn(beam.DoFn):
    """Validates every line of a byte range; emits per-user row arrays, dead letters (tag ``dead``)
    and one statistics dict per block of lines (tag ``stats``).

    Counters: ``rows_in`` (lines read) and ``dead_letter_<reason>``; for the history of an
    incremental run (``history=True``) ``history_rows_in`` and ``history_dead_letter_<reason>``,
    and its statistics are ``{"history_rows": {"input", "dead"}}`` (plus the rows' ``ids`` and
    ``video_duration_ms`` with ``count_ids``), so that they never mix with the new rows' counts.
    """

    def __init__(self, tables, block_lines=200_000, history=False, count_ids=False):
        self.tables = tables
        self.block_lines = block_lines
        self.history = history
        self.count_ids = count_ids

    def setup(self):
        self.video_table, self.user_table = self.tables.load()
        prefix = "history_" if self.history else ""
        self.counters = {r: Metrics.counter(COUNTER_NAMESPACE, f"{prefix}dead_letter_{r}") for r in validation.REASONS}
        self.rows_in = Metrics.counter(COUNTER_NAMESPACE, "history_rows_in" if self.history else "rows_in")

    def process(self, item):
        info, start, end = item
        offsets, lines = [], []
        first = start == 0
        for offset, line in inputs.read_range_lines(info, start, end):
            if first:
                first = False
                if info.has_header:
                    continue  # the file's header row (read by the launcher: info.order)
                if line.startswith(b"\xef\xbb\xbf"):
                    line, offset = line[3:], offset + 3
            offsets.append(offset)
            lines.append(line)
            if len(lines) >= self.block_lines:
                yield from self._emit(info, offsets, lines)
                offsets, lines = [], []
        if lines:
            yield from self._emit(info, offsets, lines)

    def _emit(self, info, offsets, lines):
        path = info.path
        values, kept, rejects = validation.validate_lines(lines, info.order)
        logging.info("validated %d rows of %s from byte %d: %d rejected", len(lines), path, offsets[0], len(rejects))
        dead = {}
        for index, reason in rejects:
            dead[reason] = dead.get(reason, 0) + 1
            self.counters[reason].inc()
            yield beam.pvalue.TaggedOutput("dead", dead_letter_json(reason, f"{path}:{offsets[index]}",
                                                                    lines[index]))
        self.rows_in.inc(len(lines))
        if self.history:
            stats = {"history_rows": {"input": len(lines), "dead": dead}}
            if self.count_ids and len(values):
                stats["ids"] = user_examples.row_id_counts(values, self.video_table)
                stats["video_duration_ms"] = user_examples.max_duration(values)
            yield beam.pvalue.TaggedOutput("stats", stats)
        else:
            dates = np.unique(user_examples.split_date(values[:, COLUMN_INDEX["time_ms"]]), return_counts=True)
            yield beam.pvalue.TaggedOutput("stats", {
                "input": len(lines), "dead": dead, "dates": dict(zip(dates[0].tolist(), dates[1].tolist())),
                "not_in_side_table": validation.not_in_side_tables(values, self.video_table, self.user_table)})
        if not len(values):
            return
        offs = np.asarray(offsets, np.int64)[kept]
        users = values[:, COLUMN_INDEX["user_id"]]
        order = np.argsort(users, kind="stable")
        users_sorted = users[order]
        bounds = np.flatnonzero(np.diff(users_sorted)) + 1
        for idx in np.split(order, bounds):
            yield int(users[idx[0]]), (path, values[idx], offs[idx])


class ReadLogs(beam.PTransform):
    """Reads and validates the log files (applied to the pipeline itself).

    Args:
      files: the :class:`inputs.InputFile` of every input file with rows (``inputs.resolve``).
      range_bytes: an uncompressed file is cut into ranges of this many bytes, read in parallel
        (``--read_range_mb``); a compressed file is one range.
      tables: the side tables' paths (:class:`side_tables.SideTablePaths`); here only the rows
        whose video or user a table lacks are counted, the lookup is the per-user step's.
      history: the files are an incremental run's history (``--history_input``, the rows of a
        ``--history_state``): validated alike, counted apart (:class:`ValidateRangeFn`).
      count_ids: with ``history``, also count the rows' vocabulary ids and durations (the
        earlier logs; a state carries its own counts in ``state.json``).

    Returns the outputs by tag (``result.rows``, ``result.dead``, ``result.stats``):
      rows: ``(user_id, (path, values [n, 19] int64 in docs/design.md §3 order, byte offsets [n]))``,
        one element per user and block of lines;
      dead: dead-letter lines (``dead_letter.py``) of the rejected lines;
      stats: one dict per block: ``input`` lines, ``dead`` per reason, ``dates`` (row counts per
        split date) and ``not_in_side_table``.
    """

    def __init__(self, files, range_bytes, tables, history=False, count_ids=False):
        super().__init__()
        self.files = list(files)
        self.range_bytes = range_bytes
        self.tables = tables
        self.history = history
        self.count_ids = count_ids

    def expand(self, pipeline):
        ranges = [r for f in self.files for r in inputs.split_ranges(f, self.range_bytes)]
        return (pipeline
                | "Ranges" >> beam.Create(ranges)
                | "SpreadRanges" >> beam.Reshuffle()
                | "Validate" >> beam.ParDo(ValidateRangeFn(self.tables, history=self.history, count_ids=self.count_ids))
                .with_outputs("dead", "stats", main="rows"))
