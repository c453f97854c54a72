"""How a simulated user reacts to one impression, and the exact probabilities behind it.

Every behaviour of the paper that the models are meant to exploit is a term here, with its
coefficient in :class:`BehaviourParams`:

* ``match`` = the user's latent affinity for the video's topics + the video's quality + the user's
  own leniency. Likes/follows rise with it, hate needs a strongly negative match.
* Skip logit = ``skip_base + skip_duration * log(d/30 s) - k(d) * match + skip_streak * streak``
  where ``k(d) = skip_mismatch / (1 + skip_mismatch_decay * log1p(d / 7 s))``: long videos are
  skipped often whatever the interest (a skip of a 5-minute video is weak evidence), short ones
  mostly on mismatch (a skip of a 6-second video is strong evidence). A strongly disliked video is
  skipped whatever its length. ``streak`` counts the
  immediately preceding consecutive skips of the session (capped): the context effect.
* A watched video is completed with ``sigmoid(complete_base + complete_interest*match -
  complete_duration*log(d/30 s))``, else watched to a fraction with mean ``sigmoid(ratio_base +
  ratio_interest*match - ratio_duration*log(d/30 s))`` (power law ``U**g``, so the expectation and
  the depth probabilities are closed-form): the watch ratio falls with duration.
* Complete plays of short, liked videos loop (watch ratio > 1), as in KuaiRand.
* ``engage`` (0 unless the simulator's ``author_affinity_sd`` is set): a shift of the like, follow,
  comment, forward and profile-visit logits that the skip and the watch depth do not see — the
  user's affinity for the video's *author*, a second driver besides the topic ``match``.

Everything is vectorised over impressions; the only sequential part (the streak) is driven by
the caller one position at a time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tfrec_kuai.schema import LONG_MS, SKIP_MS, VALID_MS


@dataclass
class BehaviourParams:
    skip_base: float = -0.35
    skip_duration: float = 0.45
    skip_mismatch: float = 2.6
    skip_mismatch_decay: float = 0.6
    skip_streak: float = 0.35
    streak_cap: int = 4
    complete_base: float = -0.6
    complete_interest: float = 1.0
    complete_duration: float = 0.9
    ratio_base: float = 0.0
    ratio_interest: float = 0.8
    ratio_duration: float = 0.5
    loop_scale: float = 0.6
    like_base: float = -5.4
    like_interest: float = 1.3
    like_complete: float = 0.8
    follow_base: float = -7.0
    follow_interest: float = 1.4
    comment_base: float = -6.2
    comment_interest: float = 0.8
    forward_base: float = -6.8
    forward_interest: float = 0.9
    hate_base: float = -7.5
    hate_mismatch: float = 2.2
    hate_threshold: float = 0.5
    profile_base: float = -3.8
    profile_interest: float = 0.7

    def to_dict(self):
        return asdict(self)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def log_duration(duration_ms):
    """Duration in the coefficients' unit: log(d / 30 s)."""
    return np.log(np.asarray(duration_ms, np.float64) / 30000.0)


def skip_logit_static(params, match, duration_ms):
    """The skip logit without the streak term (depends on the sequence, added by the caller)."""
    d_s = np.asarray(duration_ms, np.float64) / 1000.0
    k = params.skip_mismatch / (1.0 + params.skip_mismatch_decay * np.log1p(d_s / 7.0))
    return params.skip_base + params.skip_duration * log_duration(duration_ms) - k * match


def skip_probability(params, static_logit, streak):
    return sigmoid(static_logit + params.skip_streak * np.minimum(streak, params.streak_cap))


def _watch_parts(params, match, duration_ms):
    ld = log_duration(duration_ms)
    d = np.asarray(duration_ms, np.float64)
    p_complete_w = sigmoid(params.complete_base + params.complete_interest * match - params.complete_duration * ld)
    mean_f = np.clip(sigmoid(params.ratio_base + params.ratio_interest * match - params.ratio_duration * ld), 0.02, 0.98)
    g = 1.0 / mean_f - 1.0                           # partial fraction f = U**g has mean 1/(1+g)
    lo = np.minimum(SKIP_MS, d) / d                  # a non-skip plays at least min(3 s, d)
    loop_mean = params.loop_scale * sigmoid(match) / (1.0 + d / 10000.0)
    return d, p_complete_w, mean_f, g, lo, loop_mean


def _p_partial_reaches(threshold_ms, d, g, lo):
    """P(partial play > threshold) for a watched, not completed impression."""
    x = np.clip((threshold_ms / d - lo) / np.maximum(1.0 - lo, 1e-9), 0.0, 1.0)
    return 1.0 - x ** (1.0 / g)


def truth(params, match, duration_ms, p_skip, engage=0.0):
    """Exact per-impression probabilities and expected watch time given the skip probability.

    ``engage``: the shift of the engagement logits (see the module docstring), scalar or per row.
    """
    d, pc, mean_f, g, lo, loop_mean = _watch_parts(params, match, duration_ms)
    p_watch = 1.0 - p_skip
    partial_valid = np.where(d <= VALID_MS, 0.0, _p_partial_reaches(VALID_MS, d, g, lo))
    partial_long = np.where(d <= LONG_MS, 0.0, _p_partial_reaches(LONG_MS, d, g, lo))
    like_logit = params.like_base + params.like_interest * match + engage
    p_like_w = pc * sigmoid(like_logit + params.like_complete) + (1 - pc) * sigmoid(like_logit)
    expected_ms = p_skip * np.minimum(SKIP_MS, d) / 2.0 + p_watch * (
        pc * d * (1.0 + loop_mean) + (1 - pc) * d * (lo + (1 - lo) * mean_f))
    return {
        "p_skip": p_skip,
        "p_valid": p_watch * (pc + (1 - pc) * partial_valid),
        "p_long": p_watch * (pc + (1 - pc) * partial_long),
        "p_complete": p_watch * pc,
        "p_like": p_watch * p_like_w,
        "p_follow": p_watch * sigmoid(params.follow_base + params.follow_interest * match + engage),
        "p_comment": p_watch * sigmoid(params.comment_base + params.comment_interest * match + engage),
        "p_forward": p_watch * sigmoid(params.forward_base + params.forward_interest * match + engage),
        "p_hate": sigmoid(params.hate_base + params.hate_mismatch * np.maximum(0.0, -match - params.hate_threshold)),
        "expected_watch_s": expected_ms / 1000.0,
    }


def draw_outcomes(params, rng, match, duration_ms, skipped, engage=0.0):
    """Play time and the engagement flags of impressions whose skip was already drawn
    (``engage`` as in :func:`truth`)."""
    n = len(match)
    d, pc, mean_f, g, lo, loop_mean = _watch_parts(params, match, duration_ms)
    u = rng.random((8, n))
    complete = (~skipped) & (u[0] < pc)
    frac = lo + (1.0 - lo) * u[1] ** g
    play = np.where(skipped, np.floor(u[2] * np.minimum(SKIP_MS, d)),
                    np.where(complete, d * (1.0 + rng.exponential(1.0, n) * loop_mean),
                             np.minimum(np.ceil(d * frac), d - 1)))
    watched = ~skipped
    like_logit = params.like_base + params.like_interest * match + params.like_complete * complete + engage
    out = {
        "play_time_ms": play.astype(np.int64),
        "is_like": watched & (u[3] < sigmoid(like_logit)),
        "is_follow": watched & (u[4] < sigmoid(params.follow_base + params.follow_interest * match + engage)),
        "is_comment": watched & (u[5] < sigmoid(params.comment_base + params.comment_interest * match + engage)),
        "is_forward": watched & (u[6] < sigmoid(params.forward_base + params.forward_interest * match + engage)),
        "is_hate": u[7] < sigmoid(params.hate_base + params.hate_mismatch *
                                  np.maximum(0.0, -match - params.hate_threshold)),
    }
    profile = watched & (rng.random(n) < sigmoid(params.profile_base + params.profile_interest * match + engage))
    out["is_profile_enter"] = profile | out["is_follow"]
    out["profile_stay_time"] = np.where(out["is_profile_enter"], 1 + rng.poisson(8.0, n), 0)
    out["comment_stay_time"] = np.where(out["is_comment"] | (watched & (rng.random(n) < 0.03)),
                                        1 + rng.poisson(15.0, n), 0)
    return out
