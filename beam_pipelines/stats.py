"""The job's statistics: small dicts, one per block of a read range and one per bundle of users.

Never one per row: a block of 200,000 lines or a bundle of a few thousand examples sends one
dict, so merging them costs nothing next to the data. Everything the job writes besides the
examples and the dead letter (vocabularies, corpus, ``metadata.json``) is a pure function of the
merged dict (``outputs.py``), so those files always agree with each other.
"""
from __future__ import annotations

import apache_beam as beam

_MAX_KEYS = ("video_duration_ms",)


def merge_stats(a, b):
    """Recursive merge into ``a``: numbers add, ``video_duration_ms`` keeps the max, dicts merge key-wise."""
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
    """:func:`merge_stats` as a ``CombineFn`` (the empty dict when there is nothing to merge)."""

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


class MergeStats(beam.PTransform):
    """Merges the statistics dicts of several steps into one (a single-element PCollection).

    Applied to a tuple of PCollections (the reading step's and the per-user step's statistics),
    which it flattens first, or to one PCollection.

    Args:
      keys: keep only these top-level keys of each dict before merging (None: all), so that a
        merge that needs one part (the dates) does not carry the rest.
    """

    def __init__(self, keys=None):
        super().__init__()
        self.keys = None if keys is None else tuple(keys)

    def expand(self, stats):
        if isinstance(stats, (tuple, list)):
            stats = stats | "Flatten" >> beam.Flatten()
        if self.keys is not None:
            keys = self.keys
            stats = stats | "Select" >> beam.Map(lambda s: {k: s[k] for k in keys if k in s})
        return stats | "Merge" >> beam.CombineGlobally(StatsCombineFn())
