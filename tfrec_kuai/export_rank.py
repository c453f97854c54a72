"""Ranking C candidates for one user without encoding the user's history C times.

``model(features)`` takes one row per (user, candidate) pair, so ranking 200 candidates repeats
the history side — token embeddings and the key/value projections over ``L`` events — 200
times, although only the attention query (and the events' relation to the candidate, read by
the feedback network) depends on the candidate. For serving, this path computes the user side
once per request row and repeats only the projected keys/values in front of the attention op.
Only the history encoder is re-composed here (features.py ``HistoryEncoder``, encoder.py
``FeedbackAwareEncoder``); the rest — target, context, experts, heads, score — runs the model's
own ``features_vector`` / ``predict_all`` through a view whose history encoder is this one.
``verify`` compares the result with ``model(features)`` at export time, and the export falls
back to the plain path if the model's code has moved on and the two no longer agree.
"""
import inspect

import numpy as np
import tensorflow as tf

from tfrec_kuai import ops
from tfrec_kuai.layers import feedback_features
from tfrec_kuai.models import features as F

_FEEDBACK_ARGS = set(inspect.signature(feedback_features).parameters)
_HISTORY_ARGS = set(inspect.signature(F.HistoryEncoder.call).parameters)
try:
    from tfrec_kuai.layers import target_relation
except ImportError:
    target_relation = None


def _repeat(tensor, times):
    return tf.repeat(tensor, times, axis=0)


def _history(encoder_layer, user, candidates_flat, query_input, c):
    """HistoryEncoder.call with the user side computed once per row and repeated ``c`` times."""
    he = encoder_layer
    items = he.item_embedding({"video_id": user["hist_video_id"], "author_id": user["hist_author_id"],
                               "tag": user["hist_tag"]})                                   # [B, L, Di]
    num_positions = tf.shape(items)[1]
    positions = tf.minimum(tf.range(num_positions), he.history_length - 1)
    context = (he.duration_bucket(user["hist_duration_s"]) + he.age_bucket(user["hist_age_s"])
               + he.position(positions)[tf.newaxis])
    tokens = tf.concat([items, context], -1)
    enc = he.encoder
    h, d, dv = enc.num_heads, enc.head_dim, enc.value_dim
    keys = tf.reshape(enc.key_proj(tokens), [-1, num_positions, h, d])
    values = tf.reshape(enc.value_proj(tokens), [-1, num_positions, h, dv])
    keys, values = _repeat(keys, c), _repeat(values, c)
    if enc.use_feedback:
        with_context = he.variant != "no_context"
        extra = {"age_s": user["hist_age_s"]} if "age_s" in _FEEDBACK_ARGS else {}
        feedback = _repeat(feedback_features(user["hist_play_s"], user["hist_duration_s"], user["hist_feedback"],
                                             with_context=with_context, **extra), c)
        if with_context and target_relation is not None and "with_target" in _HISTORY_ARGS:
            # The event's relation to *this* candidate (same video / author / tag): per candidate.
            hist_ids = {name: _repeat(user[f"hist_{name}"], c) for name in ("video_id", "author_id", "tag")}
            feedback = tf.concat([feedback, target_relation(hist_ids, candidates_flat)], -1)
        bias, gate = enc.bias_and_gate(feedback)
    else:
        bias = tf.zeros(tf.shape(keys)[:3], tf.float32)
        gate = tf.ones(tf.shape(keys)[:3], tf.float32)
    if getattr(enc, "feedback_channel", False):  # a constant 1 channel: its output is sum_l p_l * gate_l
        values = tf.concat([values, tf.ones_like(values[..., :1])], -1)
        dv += 1
    lengths = tf.clip_by_value(tf.cast(tf.reshape(user["hist_len"], [-1]), tf.int32), 0, num_positions)
    query = tf.reshape(enc.query_proj(query_input), [-1, h, d])
    out = ops.feedback_weighted_attention(query, keys, values, bias, gate, _repeat(lengths, c),
                                          implementation=enc.attention_implementation)
    return tf.reshape(out, [-1, h * dv])


class _SharedHistoryView:
    """The ranking model seen through one change: its history encoder is the shared-history one.

    ``RankingModel.features_vector`` / ``predict_all`` are then run *unchanged* on this view, so
    everything but the history side (target, context, experts, heads, score blend) is the
    model's own code, whatever it currently is.
    """

    def __init__(self, model, history):
        self._model = model
        self.history_encoder = history if model.history_encoder is not None else None

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
    rows = dict(flat, **{k: _repeat(v, c) for k, v in user.items() if k in ("user_id", "hour", "tab")})

    def history(features, query_input, **unused):
        return _history(model.history_encoder, user, flat, query_input, c)

    view = _SharedHistoryView(model, history)
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
