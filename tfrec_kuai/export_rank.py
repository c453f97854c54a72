"""Ranking C candidates for one user without encoding the user's history C times.

``model(features)`` takes one row per (user, candidate) pair, so ranking 200 candidates repeats
the whole history side — token embeddings, the feedback network, key and value projections over
``L`` events — 200 times, although only the attention *query* depends on the candidate. For
serving, this path computes everything user-side once per request row and repeats only the
projected keys/values/bias/gate in front of the attention op, then runs the same prediction
module. It re-composes the model's own layers (ranking.py ``predict_all`` / ``features_vector``,
features.py ``HistoryEncoder``, encoder.py ``FeedbackAwareEncoder``), so ``verify`` compares it
with ``model(features)`` at export time and the export falls back to the plain path if the
model's code has moved on and the two no longer agree.
"""
import inspect

import numpy as np
import tensorflow as tf

from tfrec_kuai import ops
from tfrec_kuai.layers import feedback_features
from tfrec_kuai.models import features as F

ENGAGE = ("like", "follow", "comment", "forward")
_FEEDBACK_ARGS = set(inspect.signature(feedback_features).parameters)


def _repeat(tensor, times):
    return tf.repeat(tensor, times, axis=0)


def _history(encoder_layer, user, query_input, c):
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
    if enc.use_feedback:
        extra = {"age_s": user["hist_age_s"]} if "age_s" in _FEEDBACK_ARGS else {}
        feedback = feedback_features(user["hist_play_s"], user["hist_duration_s"], user["hist_feedback"],
                                     with_context=he.variant != "no_context", **extra)
        bias, gate = enc.bias_and_gate(feedback)
    else:
        bias = tf.zeros(tf.shape(keys)[:3], tf.float32)
        gate = tf.ones(tf.shape(keys)[:3], tf.float32)
    if getattr(enc, "feedback_channel", False):  # a constant 1 channel: its output is sum_l p_l * gate_l
        values = tf.concat([values, tf.ones_like(values[..., :1])], -1)
        dv += 1
    lengths = tf.clip_by_value(tf.cast(tf.reshape(user["hist_len"], [-1]), tf.int32), 0, num_positions)
    query = tf.reshape(enc.query_proj(query_input), [-1, h, d])
    out = ops.feedback_weighted_attention(query, _repeat(keys, c), _repeat(values, c), _repeat(bias, c),
                                          _repeat(gate, c), _repeat(lengths, c),
                                          implementation=enc.attention_implementation)
    return tf.reshape(out, [-1, h * dv])


def rank_shared_history(model, user, candidates, output_names):
    """``[B, C]`` outputs for user rows ``user`` (``[B]``/``[B, L]``) and candidates ``[B, C]``."""
    shape = tf.shape(candidates["video_id"])
    b, c = shape[0], shape[1]
    cand = {k: tf.reshape(v, [-1]) for k, v in candidates.items()}
    target = F.target_vector(model, cand)                                                  # [B*C, T]
    context = _repeat(F.request_context(model, user), c)
    parts = [target, context]
    if model.user_embedding is not None:
        parts.append(_repeat(model.user_embedding(F._flat(user["user_id"])), c))
    if model.history_encoder is not None:
        parts.append(_history(model.history_encoder, user, tf.concat([target, context], -1), c))
    x = tf.concat(parts, -1)
    # The prediction module, as RankingModel.predict_all.
    skip_in, depth_in, watch_in, engage_in, hate_in = model.bottom(x)
    logits = tf.concat([model.skip_tower(skip_in), model.depth_tower(depth_in)], -1)
    out = dict(model.cascade(logits))
    engage = tf.sigmoid(model.engage_tower(engage_in))
    for i, name in enumerate(ENGAGE):
        out[f"p_{name}"] = engage[:, i]
    out["p_hate"] = tf.sigmoid(model.hate_tower(hate_in)[:, 0])
    out["watch_ratio"], out["watch_s"] = model.watch_head(watch_in, cand["duration_s"])
    out["score"] = model.blend_score(out)
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
