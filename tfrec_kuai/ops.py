"""Feedback-weighted target attention (docs/design.md §7): the fused C++ op and its composite twin.

For every batch row ``b`` and head ``h``, over the valid history ``l < lengths[b]`` only::

    p   = softmax_l(scale * <query[b,h], keys[b,l,h]> + bias[b,l,h])
    out = sum_l p_l * gate[b,l,h] * values[b,l,h]                         # [B, H, Dv]

``lengths[b] == 0`` gives zeros. Two implementations compute the same maths:

* ``"fused"`` - the custom op ``FeedbackWeightedAttention`` from ``_fwa_ops.so`` (built from
  ``cc/`` by ``pip install --no-build-isolation -e .``), with a fused backward op. It reads only
  the valid positions, so it is the fast path for training.
* ``"composite"`` - plain TensorFlow ops. It needs no custom library, so a SavedModel that uses
  it loads in stock TF Serving (the *portable* export), and it is the reference for the tests.

``"auto"`` (the default) picks ``"fused"`` when the library loads and matches this TensorFlow,
otherwise ``"composite"`` with one warning per process.

The gradient of the fused op is registered here, in the module that loads the library, and the
library is loaded when this module is imported, so importing ``tfrec_kuai.ops`` before
``tf.saved_model.load`` is all that serving or a fine-tuning job needs for a fused SavedModel.
Inside an XLA-compiled function (``jit_compile=True``) ``"auto"`` uses the composite, since the
fused op has no XLA kernel.
"""
import logging
import math
import os
import threading
import warnings

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

__all__ = [
    "feedback_weighted_attention",
    "fused_available",
    "load_op_library",
    "OpLibraryError",
    "IMPLEMENTATIONS",
]

IMPLEMENTATIONS = ("auto", "fused", "composite")

_LOG = logging.getLogger(__name__)
_LIBRARY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fwa_ops.so")
# The op library embeds this marker followed by the TensorFlow version it was compiled against
# (cc/fwa_tf_op.cc). Reading it from the file *before* loading avoids dlopen-ing a library built
# for another TensorFlow, which can fail in confusing ways or register ops against a foreign ABI.
_VERSION_MARKER = b"tfrec_kuai_built_against_tf="
_FIX = ("rebuild it against the installed TensorFlow with "
        "`pip install --no-build-isolation -e .` (or `make install`) in the repository root")

_lock = threading.Lock()
_library = None       # the loaded module once loading succeeded
_load_error = None    # the OpLibraryError once loading failed (not retried: the answer is stable)
_warned = False


class OpLibraryError(RuntimeError):
    """The fused op library is missing, unloadable or built for another TensorFlow."""


def _built_against_version(path):
    """The TensorFlow version recorded in the library file, or None when absent."""
    with open(path, "rb") as f:
        data = f.read()
    start = data.find(_VERSION_MARKER)
    if start < 0:
        return None
    start += len(_VERSION_MARKER)
    end = data.find(b"\0", start)
    return data[start:end if end >= 0 else start + 64].decode("ascii", "replace")


def load_op_library():
    """Loads ``_fwa_ops.so`` once and returns its op module.

    Raises:
      OpLibraryError: the library is missing, fails to load, or was compiled against a different
        TensorFlow than the one imported; the message names the file and the fix.
    """
    global _library, _load_error
    with _lock:
        if _library is not None:
            return _library
        if _load_error is not None:
            raise _load_error
        try:
            if not os.path.exists(_LIBRARY_PATH):
                raise OpLibraryError(f"the fused attention op library {_LIBRARY_PATH} is missing; {_FIX}")
            built = _built_against_version(_LIBRARY_PATH)
            if built != tf.version.VERSION:
                raise OpLibraryError(
                    f"the fused attention op library {_LIBRARY_PATH} was built against TensorFlow "
                    f"{built or 'unknown'}, but TensorFlow {tf.version.VERSION} is imported; {_FIX}")
            try:
                _library = tf.load_op_library(_LIBRARY_PATH)
            except (tf.errors.OpError, OSError) as e:
                raise OpLibraryError(f"could not load the fused attention op library {_LIBRARY_PATH} "
                                     f"({e}); {_FIX}") from e
        except OpLibraryError as e:
            _load_error = e
            raise
        return _library


def fused_available():
    """True when the fused op library loads and matches the imported TensorFlow."""
    try:
        load_op_library()
        return True
    except OpLibraryError:
        return False


def fused_isa():
    """The instruction set the fused kernels run with in this process — ``"avx2"`` (AVX2 + FMA,
    where the CPU has both) or ``"baseline"`` (x86-64-v2), chosen once from the CPU or forced by
    ``TFREC_KUAI_FWA_ISA`` (cc/fwa_kernel.h) — or None when the native libraries are not built.
    The op library and the pybind11 module choose by the same rule; the module is asked."""
    if not fused_available():
        return None
    try:
        from tfrec_kuai import _native
    except ImportError:
        return None
    return _native.fwa_isa()


def _warn_fallback(error):
    """One warning per process: the fallback is slower but correct, so it must not be silent."""
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    message = f"feedback_weighted_attention: using the composite (pure TF) implementation because {error}"
    _LOG.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


@tf.RegisterGradient("FeedbackWeightedAttention")
def _feedback_weighted_attention_grad(op, grad):
    """One fused backward op gives the gradients of all five float inputs (none for lengths)."""
    lib = load_op_library()
    q, k, v, bias, gate, lengths = op.inputs
    dq, dk, dv, dbias, dgate = lib.feedback_weighted_attention_grad(
        grad=grad, query=q, keys=k, values=v, bias=bias, gate=gate, lengths=lengths,
        scale=op.get_attr("scale"))
    return dq, dk, dv, dbias, dgate, None


def _in_xla_context():
    """True while tracing a function that XLA compiles (``jit_compile=True``, Keras jit_compile).

    The fused op has no XLA kernel, so "auto" must pick the composite there (XLA fuses it well).
    """
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # internal modules moved: assume no XLA rather than fail
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


_RANKS = {"query": 3, "keys": 4, "values": 4, "bias": 3, "gate": 3, "lengths": 1}
# (name, axis) pairs that must agree, per dimension.
_DIM_GROUPS = {
    "B (batch)": [("query", 0), ("keys", 0), ("values", 0), ("bias", 0), ("gate", 0), ("lengths", 0)],
    "L (history)": [("keys", 1), ("values", 1), ("bias", 1), ("gate", 1)],
    "H (heads)": [("query", 1), ("keys", 2), ("values", 2), ("bias", 2), ("gate", 2)],
    "D (key depth)": [("query", 2), ("keys", 3)],
}


def _runtime_shape_checks(tensors):
    """Assertions for what the trace-time check could not see (unknown ranks or dimensions).

    The composite needs them to fail with InvalidArgument naming the input, like the fused
    kernel, instead of an anonymous einsum error; fully static shapes add no ops.
    """
    checks = []
    for name, rank in _RANKS.items():
        if tensors[name].shape.rank is None:
            checks.append(tf.debugging.assert_rank(tensors[name], rank, message=f"{name} must have rank {rank}"))
    for what, members in _DIM_GROUPS.items():
        dims = [tensors[name].shape[axis] if tensors[name].shape.rank is not None else None
                for name, axis in members]
        if all(d is not None for d in dims):
            continue
        ref_name, ref_axis = members[0]
        ref = tf.shape(tensors[ref_name])[ref_axis]
        for name, axis in members[1:]:
            checks.append(tf.debugging.assert_equal(
                tf.shape(tensors[name])[axis], ref,
                message=f"{name} dimension {axis} must equal {ref_name} dimension {ref_axis}: {what}"))
    return checks


def _check_static_shapes(query, keys, values, bias, gate, lengths):
    """Rejects shapes that are wrong already at trace time, naming the input.

    Dynamic dimensions are checked by the fused kernel at run time (and by the composite's
    assertions on ``lengths``); this catches the common mistakes early and with a clear message.
    """
    tensors = {"query": query, "keys": keys, "values": values, "bias": bias, "gate": gate,
               "lengths": lengths}
    for name, rank in _RANKS.items():
        r = tensors[name].shape.rank
        if r is not None and r != rank:
            raise _invalid(f"{name} must have rank {rank}, got shape {tensors[name].shape}")

    def dim(t, i):
        return t.shape[i] if t.shape.rank is not None else None

    for what, members in _DIM_GROUPS.items():
        ref_name, ref_value = None, None
        for name, axis in members:
            d = dim(tensors[name], axis)
            if d is None:
                continue
            if ref_value is None:
                ref_name, ref_value = name, d
            elif d != ref_value:
                raise _invalid(f"{name} has {what} = {d} in dimension {axis}, but {ref_name} has {ref_value}; "
                               f"shapes: query {query.shape}, keys {keys.shape}, values {values.shape}, "
                               f"bias {bias.shape}, gate {gate.shape}, lengths {lengths.shape}")


def _default_scale(query):
    d = query.shape[-1] if query.shape.rank is not None else None
    if d is None:
        return None
    return 1.0 / math.sqrt(d) if d > 0 else 1.0


def _after(checks, *tensors):
    """``tensors`` made to wait for ``checks`` (assertions), in graph mode.

    Without the dependency the graph may run an op on a wrongly shaped input before the check, and
    which error is reported (the check's, naming the input, or that op's anonymous one) is a race.
    No checks (static shapes, or XLA, which drops assertions): the tensors as they are, no ops.
    """
    if not checks:
        return tensors
    with tf.control_dependencies(checks):
        return tuple(tf.identity(t) for t in tensors)


def _composite(query, keys, values, bias, gate, lengths, scale):
    """The same maths in plain TF ops: the portable (stock TF Serving) path and the reference
    (``_attend`` with one query row per history row; padding handled there)."""
    shape_checks = _runtime_shape_checks({"query": query, "keys": keys, "values": values, "bias": bias,
                                          "gate": gate, "lengths": lengths})
    query, keys, values, bias, gate, lengths = _after(shape_checks, query, keys, values, bias, gate, lengths)
    num_positions = tf.shape(keys)[1]
    lengths = tf.cast(lengths, tf.int32)
    with tf.control_dependencies([
            tf.debugging.assert_non_negative(lengths, message="lengths must be >= 0"),
            tf.debugging.assert_less_equal(lengths, num_positions,
                                           message="lengths must be <= L (keys.shape[1])")]):
        valid = tf.sequence_mask(lengths, num_positions)                 # [B, L]
    per_row = lambda t: t[:, tf.newaxis]  # noqa: E731  (one query row per history row)
    return _attend(per_row(query), keys, values, per_row(bias), per_row(gate), valid, scale)[:, 0]


def _attend(query, keys, values, bias, gate, valid, scale):
    """The maths of both composite forms, for ``C`` query rows per history row.

    query ``[U, C, H, D]``, keys ``[U, L, H, D]``, values ``[U, L, H, Dv]``, bias and gate
    ``[U, C, L, H]``, valid ``[U, L]`` bool → ``[U, C, H, Dv]``. Padding positions are replaced by
    zeros with ``tf.where`` *before* any arithmetic, so whatever they hold (even NaN or inf) never
    reaches the result and they get exactly zero gradient; the masked logits use the dtype's lowest
    finite value rather than ``-inf``, so an all-padding row gives zeros instead of NaN.
    """
    dtype = query.dtype
    zero = tf.zeros([], dtype)
    history_valid = valid[:, :, tf.newaxis, tf.newaxis]                  # [U, L, 1, 1]
    # Heads first ([U, H, C, L] logits): both products are then batched matrix products in the
    # canonical layout (batch, rows, contraction), which XLA's CPU dot emitter runs ≈ 1.5× faster
    # than the einsum's head-interleaved layout for 200-candidate requests (benchmarks/RESULTS.md).
    keys = tf.transpose(tf.where(history_valid, keys, zero), [0, 2, 3, 1])          # [U, H, D, L]
    values = tf.transpose(tf.where(history_valid, values, zero), [0, 2, 1, 3])      # [U, H, L, Dv]
    query = tf.transpose(query, [0, 2, 1, 3])                                      # [U, H, C, D]
    bias, gate = (tf.transpose(t, [0, 3, 1, 2]) for t in (bias, gate))            # [U, H, C, L]
    row_valid = valid[:, tf.newaxis, tf.newaxis, :]                      # [U, 1, 1, L]
    bias = tf.where(row_valid, bias, zero)
    gate = tf.where(row_valid, gate, zero)
    logits = tf.matmul(query, keys) * tf.cast(scale, dtype) + bias
    logits = tf.where(row_valid, logits, tf.cast(dtype.min, dtype))
    logits -= tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
    weights = tf.where(row_valid, tf.exp(logits), zero)
    denom = tf.reduce_sum(weights, axis=-1, keepdims=True)
    probs = weights / tf.where(denom > 0, denom, tf.ones([], dtype))      # [U, H, C, L]
    return tf.transpose(tf.matmul(probs * gate, values), [0, 2, 1, 3])    # [U, C, H, Dv]


def shared_history_attention(query, keys, values, bias, gate, lengths, repeat, scale=None):
    """``feedback_weighted_attention`` when ``repeat`` consecutive query rows share one history row.

    Ranking ``C`` candidates for one user asks the same question of one history ``C`` times: only
    the query, and the feedback bias/gate (which read each event's relation to the candidate),
    change. The op needs keys and values per query row, i.e. ``C`` copies of ``[L, H, D]``; here the
    two products are batched matrix products against the *one* copy
    (``[C, D] x [D, L]`` per user and head), in plain TF ops (so also in a portable or XLA-compiled
    SavedModel). The result equals ``feedback_weighted_attention`` on repeated keys, values and
    lengths.

    Args:
      query: ``[B, H, D]`` float32 with ``B = B_user * repeat``.
      keys: ``[B_user, L, H, D]`` float32; values: ``[B_user, L, H, Dv]`` float32.
      bias, gate: ``[B, L, H]`` float32, per query row.
      lengths: ``[B_user]`` int, per history row; clipped to ``[0, L]``.
      repeat: python int or scalar int tensor.
      scale: logit scale; ``None`` means ``1/sqrt(D)``.

    Returns:
      ``[B, H, Dv]`` float32.
    """
    with tf.name_scope("shared_history_attention"):
        query, keys, values, bias, gate = (tf.convert_to_tensor(t) for t in (query, keys, values, bias, gate))
        if scale is None:
            scale = _default_scale(query) or tf.math.rsqrt(tf.cast(tf.shape(query)[-1], query.dtype))
        users, num_positions, heads = tf.shape(keys)[0], tf.shape(keys)[1], tf.shape(keys)[2]
        repeat = tf.cast(repeat, tf.int32)
        # XLA drops Assert ops (with a warning); there the reshapes below fail on a mismatch instead.
        checks = [] if _in_xla_context() else [tf.debugging.assert_equal(
            tf.shape(query)[0], users * repeat, message="query rows must be keys' rows x repeat")]
        query, bias, gate, lengths = _after(checks, query, bias, gate, lengths)
        lengths = tf.clip_by_value(tf.cast(lengths, tf.int32), 0, num_positions)
        per_user = lambda t: tf.reshape(t, tf.concat([[users, repeat], tf.shape(t)[1:]], 0))  # noqa: E731
        out = _attend(per_user(query), keys, values, per_user(bias), per_user(gate),
                      tf.sequence_mask(lengths, num_positions), scale)
        return tf.reshape(out, [-1, heads, tf.shape(values)[3]])


def _fused(query, keys, values, bias, gate, lengths, scale):
    lib = load_op_library()
    return lib.feedback_weighted_attention(
        query=query, keys=keys, values=values, bias=bias, gate=gate,
        lengths=tf.cast(lengths, tf.int32), scale=float(scale))


def feedback_weighted_attention(query, keys, values, bias, gate, lengths, scale=None, implementation="auto"):
    """Target attention over a history whose positions carry a feedback bias and a signed gate.

    Args:
      query: ``[B, H, D]`` float32, the target (one query per head).
      keys: ``[B, L, H, D]`` float32, the history tokens' keys.
      values: ``[B, L, H, Dv]`` float32.
      bias: ``[B, L, H]`` float32, added to the logits (what the feedback says about attention).
      gate: ``[B, L, H]`` float32, multiplies each value; negative pushes away from that item.
      lengths: ``[B]`` int32 (int64 is cast), each in ``[0, L]``; positions ``l >= lengths[b]`` are
        padding and are never read.
      scale: logit scale; ``None`` means ``1/sqrt(D)``.
      implementation: ``"auto"`` (fused when the op library loads, else composite with a
        warning), ``"fused"`` (raise ``OpLibraryError`` when the library is unavailable) or
        ``"composite"`` (plain TF ops; what a portable SavedModel must use).

    Returns:
      ``[B, H, Dv]`` float32.

    Raises:
      tf.errors.InvalidArgumentError: a wrong rank, mismatched dimensions, a non-float32 input or
        a length outside ``[0, L]`` (at trace time where shapes are static, else at run time),
        naming the input.
      OpLibraryError: ``implementation="fused"`` and the op library is unavailable.
      ValueError: ``implementation="fused"`` inside an XLA-compiled function (no XLA kernel),
        or a negative ``scale``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    with tf.name_scope("feedback_weighted_attention"):
        named = {}
        for name, t in (("query", query), ("keys", keys), ("values", values), ("bias", bias), ("gate", gate)):
            t = tf.convert_to_tensor(t)
            if t.dtype != tf.float32:
                raise _invalid(f"{name} must be float32, got {t.dtype.name}")
            named[name] = t
        lengths = tf.convert_to_tensor(lengths)
        if lengths.dtype not in (tf.int32, tf.int64):
            raise _invalid(f"lengths must be int32 (or int64), got {lengths.dtype.name}")
        query, keys, values, bias, gate = (named[n] for n in ("query", "keys", "values", "bias", "gate"))
        _check_static_shapes(query, keys, values, bias, gate, lengths)

        if isinstance(scale, (int, float)) and scale < 0:
            # The op reserves negative scales for "1/sqrt(D)"; a negative scale is also just the
            # same as negating the query, so nothing is lost by refusing it.
            raise ValueError(f"scale must be >= 0 (or None for 1/sqrt(D)), got {scale}")
        if scale is None:
            scale = _default_scale(query)
            if scale is None:
                if implementation == "fused":
                    raise ValueError("scale=None needs a static last dimension of query (D); pass scale")
                scale = tf.math.rsqrt(tf.cast(tf.shape(query)[-1], tf.float32))

        if implementation == "auto":
            if _in_xla_context() or isinstance(scale, tf.Tensor):
                implementation = "composite"
            else:
                try:
                    load_op_library()
                    implementation = "fused"
                except OpLibraryError as e:
                    _warn_fallback(e)
                    implementation = "composite"
        if implementation == "fused":
            if _in_xla_context():
                raise ValueError("the fused FeedbackWeightedAttention op has no XLA kernel; inside "
                                 "jit_compile=True use implementation='composite' (or 'auto')")
            return _fused(query, keys, values, bias, gate, lengths, scale)
        return _composite(query, keys, values, bias, gate, lengths, scale)


# Load the library (quietly) at import, so that importing this module is all a process needs
# before tf.saved_model.load of a model that contains the fused op: the op type is registered
# and its gradient (above) is available for fine-tuning. Failure is reported when the op is used.
try:
    load_op_library()
except OpLibraryError:
    pass
