"""Ranking C candidates for one user without encoding the user's history C times.

``model(features)`` takes one row per (user, candidate) pair, so ranking 200 candidates repeats
the history side — token embeddings and the key/value projections over ``L`` events — 200
times, although only the attention query (and the events' relation to the candidate, read by
the feedback network) depends on the candidate. The model's own history encoder supports
sharing: ``HistoryEncoder.call(..., repeat=c)`` computes the user side once per user row and
repeats only what the candidate-dependent part needs (features.py ``HistoryEncoder``, encoder.py
``FeedbackAwareEncoder``). Here the rest — target, context, experts, heads, score — runs the
model's own ``features_vector`` / ``predictions`` through a view whose history encoder is called
with the user rows and ``repeat=c``. ``verify`` compares the result with ``model(features)`` at
export time as a safety net; the export falls back to the plain path if they ever disagree.
"""
import numpy as np

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai.schema import CORPUS_FEATURES, HISTORY_INPUTS, USER_CONTEXT_FEATURES


class _SharedHistoryView:
    """The ranking model seen through one change: its history encoder shares each user row's history.

    ``RankingModel.features_vector`` is then run *unchanged* on this view, so
    everything but the history side (target, context, experts, heads, score blend) is the
    model's own code, whatever it currently is; the history side is the model's own
    ``history_encoder`` called with ``repeat``.
    """

    def __init__(self, model, user_history, repeat, jit_compile=False):
        self._model = model
        self.history_encoder = None
        if model.history_encoder is not None:
            def history_encoder(features, query_input, **kwargs):
                # Target ids (and the query) per (user, candidate) row; history per user row.
                return model.history_encoder(dict(features, **user_history), query_input, repeat=repeat,
                                             jit_compile=jit_compile, **kwargs)
            self.history_encoder = history_encoder

    def features_vector(self, features, training=False):
        return type(self._model).features_vector(self, features, training)

    def __getattr__(self, name):
        return getattr(self._model, name)


# Users per XLA program call in the batched rank path, largest first and ending with 1, so that
# any batch splits greedily (13 users: 8 + 4 + 1). One program per size and candidate bucket; a
# larger group amortises the per-call cost over more users (8 users: 15.2 ms as one group,
# 16.7 ms as two of 4, RESULTS.md).
USER_GROUPS = (8, 4, 1)


def bucket_size(n, steps_per_octave=8):
    """The size ``n`` (an int tensor, >= 1) is padded to: ``steps_per_octave`` sizes per power of two.

    XLA compiles once per input shape, and a request may have any number of candidates. Rounding
    it up to a few sizes per octave bounds the compilations (about ``steps_per_octave`` per
    doubling) and the padding (under ``1/steps_per_octave`` of the next power of two: 200
    candidates → 208 with 8 steps, → 224 with 4).
    """
    n = tf.maximum(tf.cast(n, tf.int64), 1)
    octave = tf.cast(tf.math.floor(tf.math.log(tf.cast(n, tf.float64)) / tf.math.log(tf.constant(2.0, tf.float64))),
                     tf.int64)
    shift = tf.maximum(octave - (int(steps_per_octave).bit_length() - 1), 0)
    step = tf.bitwise.left_shift(tf.constant(1, tf.int64), shift)
    return tf.cast((n + step - 1) // step * step, tf.int32)


def rank_shared_history(model, user, candidates, output_names, xla=False, programs=None):
    """``[B, C]`` outputs for user rows ``user`` (``[B]``/``[B, L]``) and candidates ``[B, C]``.

    ``xla``: compile the history encoder (past the embedding lookups, which XLA cannot compile)
    and the prediction part (experts, towers, heads, score) with XLA, which fuses their dozens of
    small ops per row into a few kernels — 1.3–1.5x faster on CPU for 200-candidate requests
    (benchmarks/RESULTS.md). XLA compiles once per input shape (≈ 1.5 s for the default model), so
    the compiled parts see few shapes: the users of a batch are ranked in groups of the
    ``USER_GROUPS`` sizes (greedily, largest first, ``tf.map_fn`` over the groups of one size),
    and the candidates are padded to ``bucket_size(C)`` (200 → 208): one program per group size
    and candidate bucket, whatever the batch size.
    Needs XLA's CPU JIT where the SavedModel runs: TensorFlow itself, or TF Serving started with
    ``--xla_cpu_compilation_enabled``.

    ``programs``: a dict the caller keeps, in which each group size's ranking function is traced
    once and reused — by every signature that ranks (``rank``, ``recommend``) and by ``verify``.
    Tracing one group through the model's Keras layers takes seconds; shared, the SavedModel also
    holds one copy of each instead of one per signature.
    """
    programs = {} if programs is None else programs
    if not xla:
        return _ranking_program(model, user, candidates, output_names, programs)(user, candidates)
    shape = tf.shape(candidates["video_id"])
    c = shape[1]
    pad = bucket_size(c) - c
    candidates = {k: tf.pad(v, [[0, 0], [0, pad]], constant_values=tf.cast(1 if k == "duration_s" else 0, v.dtype))
                  for k, v in candidates.items()}   # padding candidates: id 0, 1 s long; sliced off below
    parts, start = [], tf.constant(0)
    for group in USER_GROUPS:
        end = start + (shape[0] - start) // group * group
        rank_group = _ranking_program(model, user, candidates, output_names, programs, group)
        parts.append(_map_user_groups(rank_group, {k: v[start:end] for k, v in user.items()},
                                      {k: v[start:end] for k, v in candidates.items()}, output_names, group))
        start = end
    return {name: tf.concat([part[name] for part in parts], 0)[:, :c] for name in output_names}


def _ranking_program(model, user, candidates, output_names, programs, group=None):
    """``_rank_rows`` as a ``tf.function`` traced once per ``programs``: for exactly ``group`` users
    with the XLA parts, or (``None``) for any number of users without XLA.

    Its input signature leaves the history and candidate lengths (and without a group, the batch)
    open, so every caller's shapes (a signature's ``[None, L]``, verify's concrete ones) hit the
    one trace.
    """
    def spec(t, open_dims):
        return tf.TensorSpec([group] + [None] * open_dims, t.dtype)
    user_spec = {k: spec(v, v.shape.rank - 1) for k, v in sorted(user.items())}
    candidate_spec = {k: spec(v, 1) for k, v in sorted(candidates.items())}
    key = (group, tuple(output_names), repr(user_spec), repr(candidate_spec))
    if key not in programs:
        programs[key] = tf.function(
            lambda user, candidates: _rank_rows(model, user, candidates, output_names, jit_compile=group is not None),
            input_signature=[user_spec, candidate_spec], autograph=False)
    return programs[key]


def _map_user_groups(rank_group, user, candidates, output_names, group):
    """``rank_group`` on consecutive groups of ``group`` users (their number a multiple of it)."""
    shape = tf.shape(candidates["video_id"])

    def grouped(t):
        return tf.reshape(t, tf.concat([[-1, group], tf.shape(t)[1:]], 0))

    def run():
        out = tf.map_fn(lambda row: rank_group(*row),
                        ({k: grouped(v) for k, v in user.items()}, {k: grouped(v) for k, v in candidates.items()}),
                        parallel_iterations=2,
                        fn_output_signature={name: tf.TensorSpec([group, None], tf.float32) for name in output_names})
        return {name: tf.reshape(value, shape) for name, value in out.items()}

    # map_fn over no element cannot give a [0, C] result: an empty part is zeros of that shape.
    return tf.cond(shape[0] > 0, run, lambda: {name: tf.zeros(shape, tf.float32) for name in output_names})


def _rank_rows(model, user, candidates, output_names, jit_compile=False):
    """``rank_shared_history`` on the given shapes; ``jit_compile``: the XLA parts (see there)."""
    shape = tf.shape(candidates["video_id"])
    flat = {k: tf.reshape(v, [-1]) for k, v in candidates.items()}
    # Per-(user, candidate) rows carry only the cheap scalar user features; the history stays [B, L].
    rows = dict(flat, **{k: tf.repeat(v, shape[1], axis=0) for k, v in user.items()
                         if k in USER_CONTEXT_FEATURES})
    view = _SharedHistoryView(model, {k: user[k] for k in HISTORY_INPUTS}, shape[1], jit_compile=jit_compile)
    x = view.features_vector(rows)
    predictions = model.predictions
    if jit_compile:
        predictions = tf.function(model.predictions, jit_compile=True, autograph=False)
    out = predictions(x, flat["duration_s"])
    return {name: tf.reshape(out[name], shape) for name in output_names}


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
    cand = {k: np.asarray(corpus[k])[rows] for k in CORPUS_FEATURES}
    return user, cand


def verify(model, plain_rank, corpus, history_length, output_names, xla=False, rtol=1e-4, atol=1e-5, programs=None):
    """(ok, message): does the shared-history path give the model's own outputs on a sample?

    ``programs``: as in ``rank_shared_history``; pass the export's, so the group functions checked
    here are the ones the signatures call.
    """
    user, cand = ({k: tf.constant(v) for k, v in part.items()} for part in sample_request(corpus, history_length))
    try:
        # Traced, as in the SavedModel (map_fn runs its iterations in parallel only in a graph).
        traced = tf.function(lambda u, c: rank_shared_history(model, u, c, output_names, xla, programs),
                             autograph=False)
        fast = traced(user, cand)
        slow = plain_rank(user, cand)
    except Exception as error:  # the model's layers changed shape or name
        return False, f"shared-history path failed: {type(error).__name__}: {error}"
    for name in output_names:
        a, b = fast[name].numpy(), slow[name].numpy()
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            return False, f"shared-history path differs on {name} by {np.abs(a - b).max():.3g}"
    return True, "shared-history path matches model(features)"
