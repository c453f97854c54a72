"""The train/eval split by date: the last ``--eval_days`` dates of the log are the eval split.

The dates are the Beijing dates of ``time_ms`` (``user_examples.split_date``), counted while the
logs are read; the eval dates are known only once every range is read, so they reach the
per-user step as a side input (one small list), and each example goes to the train or the eval
output there, in the same pass that builds it.
"""
from __future__ import annotations

import apache_beam as beam

from beam_pipelines.stats import MergeStats


def eval_dates_of(dates, eval_days):
    """The last ``eval_days`` distinct dates (the eval split); the rest trains.

    At least one date always trains: a log of one date has no eval split, a log of ``eval_days``
    dates or fewer trains on its first.
    """
    dates = sorted(int(d) for d in dates)
    if eval_days <= 0:
        return []
    return dates[-eval_days:] if len(dates) > eval_days else dates[1:] if len(dates) > 1 else []


class EvalDates(beam.PTransform):
    """The reading step's statistics → the eval dates, a single list (use it with ``AsSingleton``).

    Args:
      eval_days: how many of the last dates form the eval split (``--eval_days``, >= 0).
    """

    def __init__(self, eval_days):
        super().__init__()
        self.eval_days = eval_days

    def expand(self, stats):
        eval_days = self.eval_days
        return (stats
                | "Dates" >> MergeStats(keys=("dates",))
                | "Last" >> beam.Map(lambda s: eval_dates_of(s.get("dates", {}), eval_days)))
