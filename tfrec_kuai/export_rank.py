"""Ranking C candidates for one user without encoding the user's history C times.

``model(features)`` takes one row per (user, candidate) pair, so ranking 200 candidates repeats
the history side — token embeddings and the key/value projections over ``L`` events — 200
times, although only the attention query (and the events' relation to the candidate, read by
the feedback network) depends on the candidate. The model's own history encoder supports
sharing: ``HistoryEncoder.call(..., repeat=c)`` computes the user side once per user row and
repeats only what the candidate-dependent part needs (features.py ``HistoryEncoder``, encoder.py
``FeedbackAwareEncoder``). Here the rest — target, context, experts, heads, score — runs the
model's own ``features_vector`` / ``predict_all`` through a view whose history encoder is called
with the user rows and ``repeat=c``. ``verify`` compares the result with ``model(features)`` at
export time as a safety net; the export falls back to the plain path if they ever disagree.
"""
import numpy as np

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai.models.features import HISTORY_FEATURES


class _SharedHistoryView:
    """The ranking model seen through one change: its history encoder shares each user row's history.

    ``RankingModel.features_vector`` / ``predict_all`` are then run *unchanged* on this view, so
    everything but the history side (target, context, experts, heads, score blend) is the
    model's own code, whatever it currently is; the history side is the model's own
    ``history_encoder`` called with ``repeat``.
    """

    def __init__(self, model, user_history, repeat):
        self._model = model
        self.history_encoder = None
        if model.history_encoder is not None:
            def history_encoder(features, query_input, **kwargs):
                # Target ids (and the query) per (user, candidate) row; history per user row.
                return model.history_encoder(dict(features, **user_history), query_input, repeat=repeat, **kwargs)
            self.history_encoder = history_encoder

    def features_vector(self, features, training=False):
        return type(self._model).features_vector(self, features, training)

    def __getattr__(self, name):
        return getattr(self._model, name)


def rank_shared_history(model, user, candidates, output_names):
    """``[B, C]`` outputs for user rows ``user`` (``[B]``/``[B, L]``) and candidates ``[B, C]``."""
    shape = tf.shape(candidates["video_id"])
    b, c = shape[0], shape[1]
    flat = {k: tf.reshape(v, [-1]) for k, v in candidates.items()}
    # Per-(user, candidate) rows carry only the cheap scalar user features; the history stays [B, L].
    rows = dict(flat, **{k: tf.repeat(v, c, axis=0) for k, v in user.items() if k in ("user_id", "hour", "tab")})
    view = _SharedHistoryView(model, {k: user[k] for k in HISTORY_FEATURES}, c)
    out = type(model).predict_all(view, rows, False)
    return {name: tf.reshape(out[name], [b, c]) for name in output_names}


def sample_request(corpus, history_length, users=3, candidates=7, seed=0):
    """A deterministic, well-formed rank request drawn from the corpus (for ``verify``)."""
    rng = np.random.default_rng(seed)
    n = len(corpus["video_id"])
    L = int(history_length)
    pick = rng.integers(0, n, (users, L))
    lengths = np.array([L, 0] + list(rng.integers(1, L + 1, max(0, users - 2))))[:users]
    valid = np.arange(L)[None, :] < lengths[:, None]
    duration = corpus["duration_s"][pick].astype(np.float32)
    play = (duration * rng.uniform(0, 1.5, (users, L))).astype(np.float32)
    user = {
        "user_id": rng.integers(0, 1000, users), "hour": rng.integers(0, 24, users), "tab": rng.integers(0, 5, users),
        "hist_video_id": np.where(valid, corpus["video_id"][pick], -1),
        "hist_author_id": np.where(valid, corpus["author_id"][pick], -1),
        "hist_tag": np.where(valid, corpus["tag"][pick], -1),
        "hist_play_s": np.where(valid, play, 0).astype(np.float32),
        "hist_duration_s": np.where(valid, duration, 0).astype(np.float32),
        "hist_age_s": np.where(valid, np.cumsum(rng.uniform(1, 900, (users, L)), 1), 0).astype(np.float32),
        "hist_feedback": np.where(valid, rng.integers(0, 512, (users, L)), 0),
        "hist_len": lengths,
    }
    user = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v.astype(np.int64)) for k, v in user.items()}
    rows = rng.integers(0, n, (users, candidates))
    cand = {k: np.asarray(corpus[k])[rows] for k in ("video_id", "author_id", "tag", "duration_s")}
    return user, cand


def verify(model, plain_rank, corpus, history_length, output_names, rtol=1e-4, atol=1e-5):
    """(ok, message): does the shared-history path give the model's own outputs on a sample?"""
    user, cand = sample_request(corpus, history_length)
    try:
        fast = rank_shared_history(model, {k: tf.constant(v) for k, v in user.items()},
                                   {k: tf.constant(v) for k, v in cand.items()}, output_names)
        slow = plain_rank({k: tf.constant(v) for k, v in user.items()}, {k: tf.constant(v) for k, v in cand.items()})
    except Exception as error:  # the model's layers changed shape or name
        return False, f"shared-history path failed: {type(error).__name__}: {error}"
    for name in output_names:
        a, b = fast[name].numpy(), slow[name].numpy()
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            return False, f"shared-history path differs on {name} by {np.abs(a - b).max():.3g}"
    return True, "shared-history path matches model(features)"
