"""The A/B test's metrics (docs/design.md §10) and their lifts with user-level bootstrap intervals.

Every metric is a ratio of two sums over users (watch seconds / user-days, skips / impressions,
...), so each arm is summarised by one row of per-user sums and a bootstrap replicate is a
resampling of users — the unit that is randomised in a real A/B test; impressions of one user are
not independent. Paired (every arm replays the same users with common random numbers) the same
resampled users are used for the arm and the control, which is the bootstrap of the per-user
differences; with a hash split each arm's users are resampled on their own.

The lift is relative: ``metric(arm) / metric(control) − 1``, with the 2.5 and 97.5 percentiles of
the replicates. ``distinct_videos`` / ``distinct_authors`` are counts over the arm's whole
population, not sums over users: their lift has no interval (``low`` / ``high`` null).

Beyond the fixed metrics each arm gets its *profile*, what the A/B test's page plots
(``online/abtest_page.py``): watch time, skip rate, impressions and visits per user-day by day;
the skip rate by position in the visit (the impression's index from the visit's first video,
1-based, the tail in wider buckets); and the distribution of visit lengths (impressions per
visit). Day and position profiles are kept as per-user sums too, so their 95 % intervals are the
same user-level bootstrap as the lifts'.
"""
from __future__ import annotations

import numpy as np

# per-user sums, in this column order
SUMS = ("user_days", "impressions", "watch_s", "skip", "valid", "long", "like", "follow", "comment", "forward",
        "hate", "visits", "repeat")
# metric: (numerator, denominator, scale)
RATIOS = {
    "watch_time_per_user_day": ("watch_s", "user_days", 1.0),
    "impressions_per_user_day": ("impressions", "user_days", 1.0),
    "visits_per_user_day": ("visits", "user_days", 1.0),
    "skip_rate": ("skip", "impressions", 1.0),
    "valid_rate": ("valid", "impressions", 1.0),
    "long_rate": ("long", "impressions", 1.0),
    "likes_per_1000": ("like", "impressions", 1000.0),
    "follows_per_1000": ("follow", "impressions", 1000.0),
    "comments_per_1000": ("comment", "impressions", 1000.0),
    "forwards_per_1000": ("forward", "impressions", 1000.0),
    "hates_per_1000": ("hate", "impressions", 1000.0),
    "repeat_rate": ("repeat", "impressions", 1.0),
}
_COL = {name: i for i, name in enumerate(SUMS)}


def ratio(sums, name):
    """A metric from summed columns (``sums`` [..., len(SUMS)]); nan where the denominator is 0."""
    num, den, scale = RATIOS[name]
    d = sums[..., _COL[den]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, scale * sums[..., _COL[num]] / np.where(d > 0, d, 1), np.nan)


def arm_metrics(per_user, distinct_videos, distinct_authors):
    """The metrics.json entry of one arm from its per-user sums [users, len(SUMS)]."""
    total = per_user.sum(0)
    out = {"users": int(len(per_user)), "impressions": int(total[_COL["impressions"]])}
    out.update({name: _num(ratio(total, name)) for name in RATIOS})
    out["distinct_videos"], out["distinct_authors"] = int(distinct_videos), int(distinct_authors)
    return out


def _num(x):
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def _weights(rng, n, replicates):
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64) if n else np.zeros((replicates, 0))


def lift(arm, control, paired, rng, replicates=1000, distinct=None):
    """``{metric: {"value", "low", "high"}}`` of ``arm`` over ``control`` (per-user sums).

    ``paired``: rows are the same users in the same order in both. ``distinct``: ``{metric:
    (arm count, control count)}`` for the point lift of the population counts."""
    if paired and arm.shape != control.shape:
        raise ValueError("a paired lift needs the same users in both arms")
    w_arm = _weights(rng, len(arm), replicates)
    w_ctl = w_arm if paired else _weights(rng, len(control), replicates)
    rep_arm, rep_ctl = w_arm @ arm, w_ctl @ control
    point_arm, point_ctl = arm.sum(0), control.sum(0)
    out = {}
    for name in RATIOS:
        with np.errstate(invalid="ignore", divide="ignore"):
            value = ratio(point_arm, name) / ratio(point_ctl, name) - 1.0
            reps = ratio(rep_arm, name) / ratio(rep_ctl, name) - 1.0
        reps = reps[np.isfinite(reps)]
        ok = np.isfinite(value) and len(reps) >= 0.9 * replicates
        out[name] = {"value": _num(value) if ok else None,
                     "low": _num(np.percentile(reps, 2.5)) if ok else None,
                     "high": _num(np.percentile(reps, 97.5)) if ok else None}
    for name, (a, c) in (distinct or {}).items():
        out[name] = {"value": _num(a / c - 1.0) if c else None, "low": None, "high": None}
    return out


def per_user_sums(num_users, cohort_row, cols, repeat, visits, days):
    """[num_users, len(SUMS)] sums of a cohort's served impressions (``cohort_row`` per impression)."""
    from tfrec_kuai.schema import FLAG_LABELS, compute_labels

    labels = compute_labels(cols["play_time_ms"], cols["duration_ms"],
                            {c: cols[c] for c in FLAG_LABELS.values()})
    out = np.zeros((num_users, len(SUMS)))
    out[:, _COL["user_days"]] = days
    out[:, _COL["visits"]] = visits
    add = {"impressions": np.ones(len(cohort_row)), "watch_s": cols["play_time_ms"] / 1000.0,
           "repeat": repeat.astype(np.float64)}
    add.update({k: labels[k].astype(np.float64) for k in ("skip", "valid", "long", "like", "follow", "comment",
                                                          "forward", "hate")})
    for name, values in add.items():
        out[:, _COL[name]] = np.bincount(cohort_row, weights=values, minlength=num_users)
    return out


# Lower edges (1-based positions in the visit) of the skip-rate-by-position buckets; the last is open.
POSITION_EDGES = tuple(range(1, 11)) + (11, 21, 31, 51, 101)
# per user and day, in this order
DAY_SUMS = ("impressions", "watch_s", "skip", "visits")


def bucket_labels(edges):
    """``"1"``, ``"11–20"``, ``"≥101"``: the labels of buckets with lower ``edges``, the last open."""
    labels = []
    for lo, hi in zip(edges, tuple(edges[1:]) + (None,)):
        labels.append(f"≥{lo}" if hi is None else str(lo) if hi == lo + 1 else f"{lo}–{hi - 1}")
    return labels


class Profile:
    """An arm's per-user sums by day and by position, and its visit-length histogram.

    ``by_day`` [users, days, len(DAY_SUMS)]; ``by_position`` [users, len(POSITION_EDGES), 2]
    (impressions, skips); ``visit_lengths`` [max length + 1]: visits of each length."""

    def __init__(self, by_day, by_position, visit_lengths):
        self.by_day, self.by_position, self.visit_lengths = by_day, by_position, visit_lengths

    @classmethod
    def of_cohort(cls, num_users, cohort_row, cols, extra, days):
        """The profile of a cohort's served impressions (``extra``: ``world.Served`` extras)."""
        from tfrec_kuai.schema import compute_labels

        skip = compute_labels(cols["play_time_ms"], cols["duration_ms"])["skip"].astype(np.float64) \
            if len(cohort_row) else np.zeros(0)
        day = extra["day"] if len(cohort_row) else np.zeros(0, np.int64)
        position = extra["position"] if len(cohort_row) else np.zeros(0, np.int64)
        first = (position == 0).astype(np.float64)
        cell = cohort_row * days + day
        by_day = np.stack([np.bincount(cell, weights=w, minlength=num_users * days)
                           for w in (np.ones(len(cell)), cols["play_time_ms"] / 1000.0, skip, first)], 1)
        bucket = np.searchsorted(POSITION_EDGES, position + 1, side="right") - 1
        B = len(POSITION_EDGES)
        cell = cohort_row * B + bucket
        by_position = np.stack([np.bincount(cell, minlength=num_users * B).astype(np.float64),
                                np.bincount(cell, weights=skip, minlength=num_users * B)], 1)
        if len(cohort_row):
            # a visit is (user, day, visit); its length is one more than its last position
            visit = np.stack([cohort_row, day, extra["visit"]], 1)
            keys, last = np.unique(visit, axis=0, return_inverse=True)
            lengths = np.zeros(len(keys), np.int64)
            np.maximum.at(lengths, last.ravel(), position + 1)
            visit_lengths = np.bincount(lengths)
        else:
            visit_lengths = np.zeros(1, np.int64)
        return cls(by_day.reshape(num_users, days, len(DAY_SUMS)), by_position.reshape(num_users, B, 2),
                   visit_lengths)

    @classmethod
    def concatenate(cls, parts, days):
        if not parts:
            return cls(np.zeros((0, days, len(DAY_SUMS))), np.zeros((0, len(POSITION_EDGES), 2)), np.zeros(1, np.int64))
        lengths = np.zeros(max(len(p.visit_lengths) for p in parts), np.int64)
        for p in parts:
            lengths[:len(p.visit_lengths)] += p.visit_lengths
        return cls(np.concatenate([p.by_day for p in parts]), np.concatenate([p.by_position for p in parts]),
                   lengths)

    def to_json(self, rng, replicates):
        """The arm's ``by_day``, ``skip_rate_by_position`` and ``visit_lengths`` entries of
        metrics.json; ``low`` / ``high``: the 95 % user-level bootstrap interval of the arm's value."""
        n = len(self.by_day)
        weights = _weights(rng, n, replicates)
        d = {name: i for i, name in enumerate(DAY_SUMS)}
        day_total = self.by_day.sum(0)                                   # [days, sums]
        day_reps = _replicates(weights, self.by_day)                   # [replicates, days, sums]
        by_day = []
        for day in range(self.by_day.shape[1]):
            watch = day_reps[:, day, d["watch_s"]] / n if n else np.zeros(0)
            by_day.append({"day": day, "users": n,
                           "watch_time_per_user_day": _num(day_total[day, d["watch_s"]] / n) if n else None,
                           **_interval(watch),
                           "skip_rate": _num(_safe(day_total[day, d["skip"]], day_total[day, d["impressions"]])),
                           "impressions_per_user_day": _num(day_total[day, d["impressions"]] / n) if n else None,
                           "visits_per_user_day": _num(day_total[day, d["visits"]] / n) if n else None})
        pos_total = self.by_position.sum(0)                              # [buckets, (impressions, skips)]
        pos_reps = _replicates(weights, self.by_position)
        by_position = []
        for b, label in enumerate(bucket_labels(POSITION_EDGES)):
            impressions = int(pos_total[b, 0])
            if not impressions:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                reps = pos_reps[:, b, 1] / pos_reps[:, b, 0]
            by_position.append({"positions": label, "first": POSITION_EDGES[b], "impressions": impressions,
                                "skip_rate": _num(pos_total[b, 1] / impressions), **_interval(reps[np.isfinite(reps)])})
        lengths = self.visit_lengths
        visits = int(lengths.sum())
        mean = float((np.arange(len(lengths)) * lengths).sum() / visits) if visits else None
        median = int(np.searchsorted(np.cumsum(lengths), (visits + 1) / 2)) if visits else None
        return {"by_day": by_day, "skip_rate_by_position": by_position,
                "visit_lengths": {"visits": visits, "mean": _num(mean) if mean is not None else None, "median": median,
                                  "counts": {str(k): int(c) for k, c in enumerate(lengths) if c}}}


def _replicates(weights, per_user):
    """Bootstrap sums ``[replicates, ...]`` of per-user sums ``[users, ...]`` (one matrix product)."""
    shape = per_user.shape[1:]
    return (weights @ per_user.reshape(len(per_user), int(np.prod(shape)))).reshape(len(weights), *shape)


def _safe(num, den):
    return num / den if den else float("nan")


def _interval(reps):
    """``{"low", "high"}``: the 2.5 and 97.5 percentiles of bootstrap replicates (null when none)."""
    reps = np.asarray(reps)
    if not len(reps):
        return {"low": None, "high": None}
    return {"low": _num(np.percentile(reps, 2.5)), "high": _num(np.percentile(reps, 97.5))}
