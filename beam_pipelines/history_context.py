"""The history side of an incremental run: earlier days' rows as context, cut to each user's last L.

An incremental run (``--history_input`` and/or ``--history_state``) builds examples from the new
day's rows only; the earlier rows serve as the history windows of those rows' users and never
become examples. A window holds the L events strictly before its row, so of a user's earlier
rows only the last L can ever reach a window of a later row: :class:`LastEventsFn` keeps those, as
a ``CombinePerKey`` that Beam lifts before the shuffle. Each worker cuts its own users to L rows
before anything is sent, so the shuffle carries at most L history rows per user and bundle,
whatever the number of days before (a cut in the per-user step would shuffle every history row
first, which is the cost that must not grow). Duplicates (the same ``user_id, video_id,
time_ms``) are dropped as they meet, the first read kept, exactly as the per-user step does, so
the L rows kept are L distinct events.

The history state (``--write_history_state DIR``, read back with ``--history_state DIR``) is
those last L rows per user after the new day, plus what the vocabularies and the corpus need of
the days before, so the next day's job reads a small folder instead of every earlier log:

``DIR/rows-*.csv.gz``
    gzip CSV shards in the KuaiRand format (the header, then the 19 columns of docs/design.md §3),
    at most L rows per user: read back through the same reader and checks as any log.
``DIR/state.json``
    ``{"format": 1, "history_length": L, "users": n, "rows": n, "last_date": YYYYMMDD,
    "inputs": [the run's --input files], "ids": {feature: {id: count}}, "video_duration_ms":
    {video_id: ms}}``: ``inputs`` lets the next run refuse a file already in the state (a day
    re-run with its own state instead of the day before's, whose rows would all be
    duplicates); ``ids`` are the
    counts the run's vocabularies were made of (its train examples and its history), carried so
    that an id seen only on earlier days keeps its vocabulary entry; ``video_duration_ms`` the
    longest duration logged per video, so that the corpus keeps earlier days' videos.

The cut is exact when the history rows come before the user's new rows (days in order, the
loop's case): a history row kept but later than a new row of its user is counted
(``later_than_new_rows``) and logged, since that user's windows may then miss older events.
"""
from __future__ import annotations

import json
import logging

import apache_beam as beam
import numpy as np

from beam_pipelines import InputError, user_examples
from tfrec_kuai.schema import COLUMN_INDEX, LOG_COLUMNS

STATE_FORMAT = 1
STATE_ROWS = "rows"
STATE_SUMMARY = "state.json"
STATE_HEADER = ",".join(LOG_COLUMNS)


def _empty():
    return {"paths": (), "values": np.zeros((0, len(LOG_COLUMNS)), np.int64), "source": np.zeros(0, np.int64),
            "offsets": np.zeros(0, np.int64), "beyond_window": 0, "duplicates": []}


def is_history(group):
    """Whether a per-user element is a user's history (a dict of :class:`LastEventsFn`), not new rows."""
    return isinstance(group, dict)


def cut(parts, history_length):
    """The last ``history_length`` distinct events of several history parts of one user.

    ``parts``: dicts ``{"paths", "values", "source" (index into paths), "offsets", "beyond_window",
    "duplicates"}``. Rows are ordered as the per-user step orders them (time, video id, then the
    file path and byte offset they were read at), duplicates after the first are moved to
    ``duplicates`` as ``(path, offset, values)``, rows before the last L counted in
    ``beyond_window``. Only the paths the kept rows name are kept.
    """
    paths = sorted({p for part in parts for p in part["paths"]})
    rank = {p: i for i, p in enumerate(paths)}
    values = np.concatenate([part["values"] for part in parts])
    source = np.concatenate([np.asarray([rank[p] for p in part["paths"]], np.int64)[part["source"]]
                             if len(part["source"]) else np.zeros(0, np.int64) for part in parts])
    offsets = np.concatenate([part["offsets"] for part in parts])
    duplicates = [d for part in parts for d in part["duplicates"]]
    beyond = sum(part["beyond_window"] for part in parts)
    keep, dups = user_examples.sort_and_dedup(values, source * (1 << 40) + offsets)
    duplicates += [(paths[source[j]], int(offsets[j]), values[j]) for j in dups]
    if len(keep) > history_length:
        beyond += len(keep) - history_length
        keep = keep[-history_length:]
    used = sorted(set(source[keep].tolist()))
    remap = np.full(len(paths), -1, np.int64)
    remap[used] = np.arange(len(used))
    return {"paths": tuple(paths[i] for i in used), "values": values[keep], "source": remap[source[keep]],
            "offsets": offsets[keep], "beyond_window": beyond, "duplicates": duplicates}


class LastEventsFn(beam.CombineFn):
    """Per user: ``(path, values, byte offsets)`` groups of ``ReadLogs`` → the user's last L events (:func:`cut`).

    Every step keeps at most L rows (plus the rare duplicates it drops, kept for the dead letter),
    so the accumulator of a user is small whatever the days before.
    """

    def __init__(self, history_length):
        self.history_length = int(history_length)

    def create_accumulator(self):
        return _empty()

    def add_input(self, acc, group):
        path, values, offsets = group
        part = {"paths": (path,), "values": values, "source": np.zeros(len(values), np.int64), "offsets": offsets,
                "beyond_window": 0, "duplicates": []}
        return cut([acc, part], self.history_length)

    def merge_accumulators(self, accs):
        return cut(list(accs), self.history_length)

    def extract_output(self, acc):
        return acc


class LastEvents(beam.PTransform):
    """The ``rows`` of the history's ``ReadLogs`` → one element per user, ``(user_id, history dict)``.

    Args:
      history_length: L (``--history_length``).
    """

    def __init__(self, history_length):
        super().__init__()
        self.history_length = history_length

    def expand(self, rows):
        return rows | "LastL" >> beam.CombinePerKey(LastEventsFn(self.history_length))


def state_lines(values):
    """The state's CSV lines of some rows ([k, 19] in §3 order)."""
    return [",".join(map(str, row)) for row in values.tolist()]


def read_state_summary(state_dir, history_length):
    """``(the state's summary dict, the glob of its row shards)``; :class:`InputError` when unusable.

    A state of a shorter L cannot fill this run's windows (it kept fewer events per user than
    they need) and is refused; a longer one is cut to this run's L.
    """
    from apache_beam.io.filesystems import FileSystems
    state_dir = state_dir.rstrip("/")
    path = f"{state_dir}/{STATE_SUMMARY}"
    if not FileSystems.exists(path):
        raise InputError(f"--history_state {state_dir!r}: no {STATE_SUMMARY} there (not a history state "
                         "written by --write_history_state)")
    try:
        with FileSystems.open(path) as f:
            summary = json.loads(f.read().decode("utf-8"))
        state_l = int(summary["history_length"])
        fmt = int(summary["format"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(f"--history_state {state_dir!r}: {STATE_SUMMARY} is not a history state summary ({e})") \
            from None
    if fmt != STATE_FORMAT:
        raise InputError(f"--history_state {state_dir!r}: state format {fmt}, this job reads format {STATE_FORMAT}")
    if state_l < history_length:
        raise InputError(f"--history_state {state_dir!r} holds the last {state_l} events per user, fewer than "
                         f"--history_length {history_length} needs; rebuild it from the logs with --history_input")
    return summary, f"{state_dir}/{STATE_ROWS}-*.csv.gz"


def state_stats(summary):
    """The statistics a state carries into the run (``ids``, ``video_duration_ms``), keys back to ints."""
    return {"ids": {feature: {int(k): int(v) for k, v in counts.items()}
                    for feature, counts in summary.get("ids", {}).items()},
            "video_duration_ms": {int(k): int(v) for k, v in summary.get("video_duration_ms", {}).items()}}


def same_file(path):
    """A path as compared between runs (local paths made absolute)."""
    import os
    return path if "://" in path else os.path.abspath(path)


def check_not_in_state(summary, state_dir, input_paths):
    """:class:`InputError` when an ``--input`` file was already read into the state."""
    done = {same_file(p) for p in summary.get("inputs", [])}
    again = [p for p in input_paths if same_file(p) in done]
    if again:
        raise InputError(f"{again[0]} was already read into --history_state {state_dir!r} (its rows are in the "
                         "state): give the state written by the day before")


def write_state_summary(stats, state_dir, history_length, input_paths=()):
    """``DIR/state.json`` from the run's merged statistics (runs once)."""
    from beam_pipelines.outputs import write_text
    state = stats.get("state", {})
    summary = {"format": STATE_FORMAT, "history_length": int(history_length), "users": int(state.get("users", 0)),
               "rows": int(state.get("rows", 0)), "last_date": max((int(d) for d in stats.get("dates", {})),
                                                                   default=None),
               "inputs": [same_file(p) for p in input_paths],
               "ids": {f: {str(k): int(v) for k, v in sorted(c.items())} for f, c in sorted(stats.get("ids", {}).items())},
               "video_duration_ms": {str(k): int(v) for k, v in sorted(stats.get("video_duration_ms", {}).items())}}
    write_text(f"{state_dir}/{STATE_SUMMARY}", json.dumps(summary) + "\n")
    return summary


class WriteHistoryState(beam.PTransform):
    """Writes the history state (module docstring) from the per-user step's ``state`` lines and the merged stats.

    Applied to ``(state lines, merged statistics)``.

    Args:
      state_dir: the folder written (a staging folder that the launcher swaps in).
      history_length: L, recorded in ``state.json``.
      input_paths: the run's ``--input`` files, recorded in ``state.json``.
    """

    def __init__(self, state_dir, history_length, input_paths=()):
        super().__init__()
        self.state_dir = state_dir
        self.history_length = history_length
        self.input_paths = list(input_paths)

    def expand(self, inputs):
        lines, stats = inputs
        from apache_beam.io.filesystem import CompressionTypes
        lines | "Rows" >> beam.io.WriteToText(f"{self.state_dir}/{STATE_ROWS}", file_name_suffix=".csv.gz",
                                              header=STATE_HEADER, compression_type=CompressionTypes.GZIP)
        return stats | "Summary" >> beam.Map(write_state_summary, self.state_dir, self.history_length,
                                             self.input_paths)


def later_than_new(values, history_mask):
    """Kept history rows later than the user's first new row (see the module docstring); logged when any."""
    if not history_mask.any() or history_mask.all():
        return 0
    times = values[:, COLUMN_INDEX["time_ms"]]
    n = int((times[history_mask] > times[~history_mask].min()).sum())
    if n:
        logging.warning("user %d: %d history rows are later than the user's first new row (days out of order?)",
                        int(values[0, COLUMN_INDEX["user_id"]]), n)
    return n
