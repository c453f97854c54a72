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
    from tfrec_kuai.schema import compute_labels

    labels = compute_labels(cols["play_time_ms"], cols["duration_ms"],
                            {c: cols[c] for c in ("is_like", "is_follow", "is_comment", "is_forward", "is_hate")})
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
