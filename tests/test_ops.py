"""Tests of the feedback-weighted attention op (docs/design.md §7).

The fused op, the composite and the pybind11 kernel are checked against an independent float64
NumPy reference (forward and hand-derived backward), and that reference's backward is itself
checked against central finite differences, so a shared mistake cannot hide. "Within 1e-5
relative" means every element within 1e-5 of the reference scaled by the reference tensor's
largest magnitude (float32 kernels cannot promise more on near-zero elements), loosened only
where the logits are so large that float32 cannot hold them that precisely (``logit_rtol``).
"""
import os
import pathlib
import subprocess
import sys
import threading
import warnings
import zlib

import numpy as np
import pytest

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai import ops
from tests.native_required import missing_native

RTOL = 1e-5
NAMES = ("query", "keys", "values", "bias", "gate")

needs_fused = pytest.mark.skipif(not ops.fused_available(), reason="op library not built "
                                 "(pip install --no-build-isolation -e .)")


# --- float64 NumPy reference -----------------------------------------------------------------

def _reference_softmax(q, k, bias, b, h, n, scale):
    """p_l = softmax_l(scale q[b,h].k[b,l,h] + bias[b,l,h]) over the n valid positions (max-subtracted)."""
    s = scale * k[b, :n, h] @ q[b, h] + bias[b, :n, h]
    p = np.exp(s - s.max())
    return p / p.sum()


def reference_forward(q, k, v, bias, gate, lengths, scale):
    """out[b,h] = sum_{l<n} softmax(scale q.k_l + bias_l) gate_l v_l, in float64."""
    q, k, v, bias, gate = (np.asarray(x, np.float64) for x in (q, k, v, bias, gate))
    B, H, _ = q.shape
    out = np.zeros((B, H, v.shape[-1]))
    for b in range(B):
        n = int(lengths[b])
        for h in range(H):
            if n == 0:
                continue
            p = _reference_softmax(q, k, bias, b, h, n, scale)
            out[b, h] = (p * gate[b, :n, h]) @ v[b, :n, h]
    return out


def reference_backward(q, k, v, bias, gate, lengths, scale, dout):
    """Gradients of sum(out * dout) w.r.t. (q, k, v, bias, gate), derived by hand, in float64."""
    q, k, v, bias, gate, dout = (np.asarray(x, np.float64) for x in (q, k, v, bias, gate, dout))
    grads = [np.zeros_like(x) for x in (q, k, v, bias, gate)]
    dq, dk, dv, dbias, dgate = grads
    B, H, _ = q.shape
    for b in range(B):
        n = int(lengths[b])
        for h in range(H):
            if n == 0:
                continue
            p = _reference_softmax(q, k, bias, b, h, n, scale)
            g = gate[b, :n, h]
            u = v[b, :n, h] @ dout[b, h]
            dv[b, :n, h] = (p * g)[:, None] * dout[b, h]
            dgate[b, :n, h] = p * u
            ds = p * (g * u - np.sum(p * g * u))
            dbias[b, :n, h] = ds
            dk[b, :n, h] = scale * ds[:, None] * q[b, h]
            dq[b, h] = scale * ds @ k[b, :n, h]
    return grads


def make_inputs(rng, B, L, H, D, Dv, lengths=None, logit_offset=0.0):
    q = rng.normal(size=(B, H, D)).astype(np.float32)
    k = rng.normal(size=(B, L, H, D)).astype(np.float32)
    v = rng.normal(size=(B, L, H, Dv)).astype(np.float32)
    bias = (rng.normal(size=(B, L, H)) + logit_offset).astype(np.float32)
    gate = rng.uniform(-1.5, 1.5, size=(B, L, H)).astype(np.float32)
    if lengths is None:
        lengths = rng.integers(0, L + 1, size=B)
    return q, k, v, bias, gate, np.asarray(lengths, np.int32)


def assert_close(actual, expected, what, rtol=RTOL):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    tol = rtol * max(np.abs(expected).max(initial=0.0), 1e-30)
    err = np.abs(actual - expected).max(initial=0.0)
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"


def logit_rtol(inputs, scale):
    """RTOL, or more where the logits are large: a float32 logit carries an absolute rounding error
    of about eps·|logit| (a logit of 130 is only known to ±1e-5), and the softmax turns that into
    the same *relative* error of every probability — so no float32 implementation can beat
    ≈ eps·max|logit| against the float64 reference (the ``large_logits`` case)."""
    q, k, _, bias, _, _ = inputs
    logits = scale * np.einsum("bhd,blhd->blh", q.astype(np.float64), k.astype(np.float64)) + bias
    return max(RTOL, 8 * np.finfo(np.float32).eps * np.abs(logits).max(initial=0.0))


def run_with_grads(inputs, implementation, scale, dout, use_function=False):
    q, k, v, bias, gate, lengths = inputs

    def f(*floats):
        with tf.GradientTape() as tape:
            tape.watch(floats)
            out = ops.feedback_weighted_attention(*floats, lengths, scale=scale, implementation=implementation)
        return out, tape.gradient(out, floats, output_gradients=dout)

    if use_function:
        f = tf.function(f)
    out, grads = f(*[tf.constant(x) for x in (q, k, v, bias, gate)])
    return out.numpy(), [g.numpy() for g in grads]


CASES = {
    # name: (B, L, H, D, Dv, lengths, logit_offset, scale)
    "mixed_lengths": (6, 7, 2, 5, 3, [0, 7, 3, 1, 7, 5], 0.0, None),
    "L1": (3, 1, 2, 4, 4, [0, 1, 1], 0.0, None),
    "H1_D_ne_Dv": (5, 6, 1, 8, 2, [6, 2, 0, 4, 1], 0.0, 0.3),
    "batch1_full": (1, 9, 3, 4, 6, [9], 0.0, None),
    "all_empty": (3, 4, 2, 3, 3, [0, 0, 0], 0.0, None),
    # exp() of these logits overflows float32 without the max subtraction; the spread (scale 4)
    # makes the softmax peaky so underflowing terms are exercised too.
    "large_logits": (4, 8, 2, 6, 5, [8, 3, 8, 1], 100.0, 4.0),
    "larger_threaded": (64, 50, 2, 16, 16, None, 0.0, None),
    # The kernel has unrolled specialisations for D = Dv in {16, 32, 64}; cover each.
    "specialised_32": (8, 12, 2, 32, 32, [12, 0, 5, 1, 12, 7, 3, 9], 0.0, None),
    "specialised_64": (3, 5, 1, 64, 64, [5, 2, 0], 0.0, None),
}


def case_inputs(case):
    """(inputs, dout, scale) of ``CASES[case]``, with a fixed seed per case (str hash() is salted
    per process and made these tests flaky)."""
    B, L, H, D, Dv, lengths, offset, scale = CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    inputs = make_inputs(rng, B, L, H, D, Dv, lengths, offset)
    return inputs, rng.normal(size=(B, H, Dv)).astype(np.float32), scale


def assert_matches_reference(out, grads, inputs, scale, dout, what):
    """The output and the five gradients against the float64 reference (``logit_rtol``)."""
    used = scale if scale is not None else 1.0 / np.sqrt(inputs[0].shape[-1])
    rtol = logit_rtol(inputs, used)
    assert_close(out, reference_forward(*inputs, used), f"{what} output", rtol)
    for name, got, want in zip(NAMES, grads, reference_backward(*inputs, used, dout)):
        assert_close(got, want, f"{what} d{name}", rtol)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("implementation", ["fused", "composite"])
def test_forward_and_gradients_match_float64_reference(case, implementation):
    if implementation == "fused" and not ops.fused_available():
        missing_native("the op library")
    inputs, dout, scale = case_inputs(case)
    out, grads = run_with_grads(inputs, implementation, scale, dout)
    assert_matches_reference(out, grads, inputs, scale, dout, implementation)
    if case == "all_empty":
        assert not out.any() and not any(g.any() for g in grads)


def test_reference_backward_matches_finite_differences():
    """The hand-derived reference gradients are right (central differences, float64)."""
    rng = np.random.default_rng(7)
    inputs = make_inputs(rng, 3, 4, 2, 3, 2, [4, 2, 0])
    inputs64 = [x.astype(np.float64) for x in inputs[:5]]
    lengths = inputs[5]
    dout = rng.normal(size=(3, 2, 2))
    analytic = reference_backward(*inputs64, lengths, 0.7, dout)
    eps = 1e-6
    for i, name in enumerate(NAMES):
        numeric = np.zeros_like(inputs64[i])
        for idx in np.ndindex(*inputs64[i].shape):
            plus = [x.copy() for x in inputs64]
            minus = [x.copy() for x in inputs64]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            numeric[idx] = np.sum((reference_forward(*plus, lengths, 0.7)
                                   - reference_forward(*minus, lengths, 0.7)) * dout) / (2 * eps)
        np.testing.assert_allclose(analytic[i], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@needs_fused
def test_fused_gradient_matches_tf_compute_gradient():
    """TF's own numeric Jacobian agrees with the registered fused gradient (float32 steps)."""
    rng = np.random.default_rng(3)
    q, k, v, bias, gate, lengths = make_inputs(rng, 2, 3, 2, 3, 2, [3, 1])
    for i, name in enumerate(NAMES):
        floats = [tf.constant(x) for x in (q, k, v, bias, gate)]

        def f(x, i=i, floats=floats):
            args = list(floats)
            args[i] = x
            return ops.feedback_weighted_attention(*args, lengths, implementation="fused")

        theoretical, numerical = tf.test.compute_gradient(f, [floats[i]], delta=1e-2)
        np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3, err_msg=name)


@pytest.mark.parametrize("implementation", ["fused", "composite"])
def test_padding_never_changes_result_and_gets_zero_gradient(implementation):
    if implementation == "fused" and not ops.fused_available():
        missing_native("the op library")
    rng = np.random.default_rng(11)
    q, k, v, bias, gate, lengths = make_inputs(rng, 4, 6, 2, 4, 3, [0, 2, 6, 5])
    dout = rng.normal(size=(4, 2, 3)).astype(np.float32)
    clean = run_with_grads((q, k, v, bias, gate, lengths), implementation, None, dout)
    pad = np.arange(6)[None, :] >= lengths[:, None]  # [B, L]
    dirty = []
    for x, garbage in zip((k, v, bias, gate), (np.nan, 1e30, np.inf, -np.nan)):
        x = x.copy()
        x[pad] = garbage
        dirty.append(x)
    noisy = run_with_grads((q, *dirty, lengths), implementation, None, dout)
    np.testing.assert_array_equal(noisy[0], clean[0])
    for name, a, b in zip(NAMES, noisy[1], clean[1]):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for name, g in zip(NAMES[1:], noisy[1][1:]):
        assert not g[pad].any(), f"d{name} is non-zero at padding"


@pytest.mark.parametrize("jit_compile", [False, True])
def test_shared_history_attention_equals_the_op_on_repeated_keys_and_values(jit_compile):
    """Query rows sharing a user's history (``repeat``) give the float64 reference's result on
    explicitly repeated keys/values/lengths — empty histories and garbage padding included —
    traced with a tensor ``repeat``, plain and XLA-compiled; a wrong ``repeat`` is InvalidArgument."""
    rng = np.random.default_rng(21)
    users, c, L, H, D, Dv = 3, 4, 6, 2, 4, 3
    q, _, _, bias, gate, _ = make_inputs(rng, users * c, L, H, D, Dv)
    keys = rng.normal(size=(users, L, H, D)).astype(np.float32)
    values = rng.normal(size=(users, L, H, Dv)).astype(np.float32)
    lengths = np.array([6, 0, 3], np.int32)                               # per user: full, empty, partial
    rep = lambda x: np.repeat(x, c, axis=0)  # noqa: E731
    padding = np.arange(L)[None] >= lengths[:, None]
    keys[padding], values[padding] = np.nan, np.inf                       # never read
    bias[rep(padding)] = np.nan
    expected = reference_forward(q, rep(np.nan_to_num(keys)), rep(np.nan_to_num(values, posinf=0)), np.nan_to_num(bias),
                                 gate, rep(lengths), 0.5)
    f = tf.function(lambda *a: ops.shared_history_attention(*a, scale=0.5), jit_compile=jit_compile, autograph=False)
    out = f(q, keys, values, bias, gate, lengths, tf.constant(c))
    assert_close(out.numpy(), expected, "shared-history attention", 2e-5)
    assert not out.numpy()[4:8].any()                                     # empty history: zeros
    with pytest.raises(tf.errors.InvalidArgumentError, match="repeat"):
        ops.shared_history_attention(q, keys, values, bias, gate, lengths, c + 1)


@needs_fused
def test_fused_in_tf_function_and_xla_composite_agree():
    rng = np.random.default_rng(5)
    inputs = make_inputs(rng, 8, 10, 2, 4, 4)
    dout = rng.normal(size=(8, 2, 4)).astype(np.float32)
    eager = run_with_grads(inputs, "fused", None, dout)
    graph = run_with_grads(inputs, "fused", None, dout, use_function=True)
    for a, b in zip([eager[0]] + eager[1], [graph[0]] + graph[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    xla = tf.function(lambda *a: ops.feedback_weighted_attention(*a, implementation="composite"),
                      jit_compile=True)(*inputs)
    assert_close(xla.numpy(), eager[0], "XLA composite vs fused")


@needs_fused
def test_static_shapes_reach_keras():
    """The shape functions give Keras static [B, H, Dv] for both ops."""
    spec = [tf.TensorSpec([None, 2, 8]), tf.TensorSpec([None, None, 2, 8]), tf.TensorSpec([None, None, 2, 5]),
            tf.TensorSpec([None, None, 2]), tf.TensorSpec([None, None, 2]), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=spec)
    def f(q, k, v, bias, gate, lengths):
        with tf.GradientTape() as tape:
            tape.watch(k)
            out = ops.feedback_weighted_attention(q, k, v, bias, gate, lengths, implementation="fused")
        assert out.shape.as_list() == [None, 2, 5]
        assert tape.gradient(out, k).shape.as_list() == [None, None, 2, 8]
        return out

    f.get_concrete_function()
    import tf_keras
    inputs = [tf_keras.Input(shape=s.shape[1:], dtype=s.dtype) for s in spec]
    layer = tf_keras.layers.Lambda(lambda x: ops.feedback_weighted_attention(*x, implementation="fused"))
    assert tuple(layer(inputs).shape) == (None, 2, 5)


class _Attender(tf.Module):
    """A tiny trainable model around the op, to save, reload and fine-tune."""

    def __init__(self, implementation, H=2, D=4):
        super().__init__()
        self.implementation = implementation
        self.w = tf.Variable(np.random.default_rng(0).normal(size=(D, H * D)).astype(np.float32) * 0.3)
        self.H, self.D = H, D

    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None, None, 2, 4]),
                                  tf.TensorSpec([None, None, 2, 3]), tf.TensorSpec([None, None, 2]),
                                  tf.TensorSpec([None, None, 2]), tf.TensorSpec([None], tf.int32)])
    def __call__(self, x, k, v, bias, gate, lengths):
        q = tf.reshape(x @ self.w, [-1, self.H, self.D])
        return ops.feedback_weighted_attention(q, k, v, bias, gate, lengths, implementation=self.implementation)


def _saved_op_types(path):
    from tensorflow.core.protobuf import saved_model_pb2
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(pathlib.Path(path, "saved_model.pb").read_bytes())
    graph = sm.meta_graphs[0].graph_def
    types = {n.op for n in graph.node}
    for fn in graph.library.function:
        types |= {n.op for n in fn.node_def}
    return types


@needs_fused
def test_fused_savedmodel_reload_fine_tunes(tmp_path):
    """After tf.saved_model.load the fused op still has its gradient: a fine-tuning step works."""
    rng = np.random.default_rng(2)
    q, k, v, bias, gate, lengths = make_inputs(rng, 5, 6, 2, 4, 3)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    model = _Attender("fused")
    tf.saved_model.save(model, str(tmp_path))
    assert "FeedbackWeightedAttention" in _saved_op_types(tmp_path)
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(loaded(x, k, v, bias, gate, lengths), model(x, k, v, bias, gate, lengths), rtol=1e-6)

    def grad_of(m):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(m(x, k, v, bias, gate, lengths)))
        return loss, tape.gradient(loss, m.w)

    loss0, g_loaded = grad_of(loaded)
    _, g_orig = grad_of(model)
    assert g_loaded is not None and np.abs(g_loaded.numpy()).max() > 0
    np.testing.assert_allclose(g_loaded, g_orig, rtol=1e-5, atol=1e-7)
    loaded.w.assign_sub(0.05 * g_loaded)
    loss1, _ = grad_of(loaded)
    assert loss1 < loss0


def test_composite_savedmodel_has_no_custom_op(tmp_path):
    """The portable export path: a composite SavedModel needs no op library (stock TF Serving)."""
    rng = np.random.default_rng(4)
    q, k, v, bias, gate, lengths = make_inputs(rng, 3, 5, 2, 4, 3)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    model = _Attender("composite")
    tf.saved_model.save(model, str(tmp_path))
    types = _saved_op_types(tmp_path)
    assert not {t for t in types if t.startswith("FeedbackWeightedAttention")}
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(loaded(x, k, v, bias, gate, lengths), model(x, k, v, bias, gate, lengths), rtol=1e-6)


# --- malformed inputs --------------------------------------------------------------------------

def _good(B=3, L=4, H=2, D=5, Dv=3):
    return list(make_inputs(np.random.default_rng(0), B, L, H, D, Dv, [0, 4, 2]))


def _malformed():
    """(description, inputs, name the error must mention)."""
    cases = []
    for i, name in enumerate(NAMES + ("lengths",)):
        x = _good()
        x[i] = x[i][..., None]  # one rank too many
        cases.append((f"{name} rank", x, name))
        x = _good()
        x[i] = np.concatenate([x[i], x[i][:1]], axis=0)  # batch too large
        cases.append((f"{name} batch", x, name))
    for i, name, axis in ((1, "keys", 3), (2, "values", 1), (3, "bias", 2), (4, "gate", 1), (1, "keys", 2)):
        x = _good()
        x[i] = np.concatenate([x[i], x[i]], axis=axis)
        cases.append((f"{name} dim {axis}", x, name))
    for bad in (-1, 5, 2**31 - 1, -2**31):
        x = _good()
        x[5] = np.array([0, bad, 2], np.int32)
        cases.append((f"length {bad}", x, "lengths"))
    return cases


MALFORMED = _malformed()


@needs_fused
@pytest.mark.parametrize("desc,inputs,name", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_fused_kernels_reject_malformed_inputs(desc, inputs, name):
    """The raw kernels (eager: no shape function runs first) answer InvalidArgument naming the input."""
    lib = ops.load_op_library()
    with pytest.raises(tf.errors.InvalidArgumentError, match=name):
        lib.feedback_weighted_attention(*inputs, scale=0.5)
    dout = np.zeros((3, 2, 3), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=name):
        lib.feedback_weighted_attention_grad(dout, *inputs, scale=0.5)


@needs_fused
@pytest.mark.parametrize("desc,inputs,name", MALFORMED[:16], ids=[c[0] for c in MALFORMED[:16]])
def test_shape_function_rejects_malformed_static_shapes(desc, inputs, name):
    lib = ops.load_op_library()
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=name):
        tf.function(lambda: lib.feedback_weighted_attention(*[tf.constant(x) for x in inputs]))()


@pytest.mark.parametrize("implementation", ["fused", "composite"])
@pytest.mark.parametrize("desc,inputs,name", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_wrapper_rejects_malformed_inputs(implementation, desc, inputs, name):
    if implementation == "fused" and not ops.fused_available():
        missing_native("the op library")
    with pytest.raises(tf.errors.InvalidArgumentError, match=name):
        ops.feedback_weighted_attention(*inputs, implementation=implementation)


@needs_fused
def test_runtime_checks_with_unknown_static_shapes():
    """Shapes only known at run time still get InvalidArgument naming the input."""
    spec = [tf.TensorSpec(None, tf.float32)] * 5 + [tf.TensorSpec(None, tf.int32)]
    for implementation in ("fused", "composite"):
        f = tf.function(lambda *a: ops.feedback_weighted_attention(*a, scale=0.5, implementation=implementation),  # noqa: B023  (traced in this iteration)
                        input_signature=spec)
        x = _good()
        x[5] = np.array([0, 9, 2], np.int32)
        with pytest.raises(tf.errors.InvalidArgumentError, match="lengths"):
            f(*x)
    for implementation in ("fused", "composite"):
        for i, name, cut in ((2, "values", np.s_[:, :3]), (3, "bias", np.s_[:, :, :1]), (0, "query", np.s_[:2]),
                             (4, "gate", np.s_[..., None])):
            x = _good()
            x[i] = x[i][cut]
            f = tf.function(lambda *a: ops.feedback_weighted_attention(*a, scale=0.5, implementation=implementation),  # noqa: B023  (traced in this iteration)
                            input_signature=spec)
            with pytest.raises(tf.errors.InvalidArgumentError, match=name):
                f(*x)


@needs_fused
@pytest.mark.parametrize("position", range(6))
def test_wrong_dtype_is_invalid_argument(position):
    lib = ops.load_op_library()
    x = _good()
    x[position] = x[position].astype(np.float64 if position < 5 else np.float32)
    name = (NAMES + ("lengths",))[position]
    # The raw op's dtype check is TensorFlow's own (it names the input by position); the public
    # wrapper below names it by name. Tensors, not arrays: arrays would be converted silently.
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"input #{position}"):
        lib.feedback_weighted_attention(*[tf.constant(t) for t in x], scale=0.5)
    for implementation in ("fused", "composite"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=name):
            ops.feedback_weighted_attention(*x, implementation=implementation)


def test_negative_scale_rejected_and_default_scale_is_inverse_sqrt_depth():
    x = _good(D=9)
    with pytest.raises(ValueError, match="scale"):
        ops.feedback_weighted_attention(*x, scale=-1.0)
    default = ops.feedback_weighted_attention(*x).numpy()
    assert_close(default, reference_forward(*x, 1.0 / 3.0), "default scale")


# --- pybind11 ----------------------------------------------------------------------------------

def _native():
    try:
        from tfrec_kuai import _native
    except ImportError:
        missing_native("the pybind11 module")
    return _native


@pytest.mark.parametrize("case", ["mixed_lengths", "L1", "H1_D_ne_Dv", "large_logits", "all_empty"])
def test_pybind_forward_matches_reference(case):
    native = _native()
    B, L, H, D, Dv, lengths, offset, scale = CASES[case]
    inputs = make_inputs(np.random.default_rng(1), B, L, H, D, Dv, lengths, offset)
    used = scale if scale is not None else 1.0 / np.sqrt(D)
    out = native.fwa_forward(*inputs, scale)
    assert out.dtype == np.float32 and out.shape == (B, H, Dv)
    assert_close(out, reference_forward(*inputs, used), "pybind output")
    if ops.fused_available():
        np.testing.assert_array_equal(
            out, ops.feedback_weighted_attention(*inputs, scale=scale, implementation="fused").numpy())


@pytest.mark.parametrize("num_threads", [1, 4, 5])
def test_pybind_kernels_split_inside_rows_match_reference(num_threads):
    """Ranges of (b, h) units that start or end inside a history row (21 units over 4 or 5
    threads cut rows with >= 2 valid positions apart, as TF's thread pool may) give the same
    forward and backward as one range."""
    native = _native()
    B, L, H, D, Dv = 7, 9, 3, 8, 5
    rng = np.random.default_rng(12)
    inputs = make_inputs(rng, B, L, H, D, Dv, [9, 5, 4, 3, 9, 6, 2])
    dout = rng.normal(size=(B, H, Dv)).astype(np.float32)
    out = native.fwa_forward(*inputs, 0.4, num_threads=num_threads)
    assert_close(out, reference_forward(*inputs, 0.4), "pybind forward")
    grads = native.fwa_backward(dout, *inputs, 0.4, num_threads=num_threads)
    for name, got, want in zip(NAMES, grads, reference_backward(*inputs, 0.4, dout)):
        assert_close(got, want, f"pybind d{name}")
    if num_threads > 1:
        np.testing.assert_array_equal(out, native.fwa_forward(*inputs, 0.4))
        for a, b in zip(grads, native.fwa_backward(dout, *inputs, 0.4)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("desc,inputs,name", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_pybind_rejects_malformed_inputs(desc, inputs, name):
    native = _native()
    with pytest.raises(ValueError, match=name):
        native.fwa_forward(*inputs, 0.5)
    with pytest.raises(ValueError, match=name):
        native.fwa_backward(np.zeros((3, 2, 3), np.float32), *inputs, 0.5)


def test_pybind_runs_in_threads():
    """The GIL is released: concurrent calls from Python threads all give the right answer."""
    native = _native()
    inputs = make_inputs(np.random.default_rng(9), 32, 40, 2, 16, 16)
    want = native.fwa_forward(*inputs, None)
    results = [None] * 4

    def work(i):
        results[i] = native.fwa_forward(*inputs, None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, want)


# --- the two instruction sets of the kernels ----------------------------------------------------

@pytest.mark.parametrize("isa", ["baseline", "avx2"])
@pytest.mark.parametrize("case", ["mixed_lengths", "H1_D_ne_Dv", "large_logits", "all_empty", "larger_threaded",
                                  "specialised_32", "specialised_64"])
def test_each_instruction_set_matches_the_float64_reference(case, isa):
    """The baseline (x86-64-v2) and the AVX2 + FMA copies of the kernels, forward and backward,
    on every specialised depth and the generic one."""
    native = _native()
    if not native.fwa_isa_supported(isa):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    inputs, dout, scale = case_inputs(case)
    assert_matches_reference(native.fwa_forward(*inputs, scale, num_threads=3, isa=isa),
                             native.fwa_backward(dout, *inputs, scale, num_threads=3, isa=isa),
                             inputs, scale, dout, isa)


def test_the_op_runs_the_instruction_set_the_cpu_has_and_the_environment_can_force_one():
    native = _native()
    best = "avx2" if native.fwa_isa_supported("avx2") else "baseline"
    assert native.fwa_isa_supported("baseline")
    # The AVX2 kernel test skips where fwa_isa_supported("avx2") is False: that answer must be the
    # CPU's own (its flags), so a wrong "no" cannot silently skip the AVX2 kernels on an AVX2 CPU.
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split(":", 1)[1].split()}
        assert native.fwa_isa_supported("avx2") == ({"avx2", "fma"} <= flags)
    with pytest.raises(ValueError, match="isa must be one of"):
        native.fwa_isa_supported("avx512")
    inputs = make_inputs(np.random.default_rng(3), 5, 6, 2, 16, 16, [6, 0, 3, 6, 1])
    with pytest.raises(ValueError, match="isa must be one of auto, baseline, avx2, got 'sse'"):
        native.fwa_forward(*inputs, None, isa="sse")
    if os.environ.get("TFREC_KUAI_FWA_ISA") is None:
        assert native.fwa_isa() == best
    np.testing.assert_array_equal(native.fwa_forward(*inputs, None),
                                  native.fwa_forward(*inputs, None, isa=native.fwa_isa()))

    def isa_in_a_process(value):
        env = {**os.environ, "TFREC_KUAI_FWA_ISA": value}
        done = subprocess.run([sys.executable, "-c", "from tfrec_kuai import _native; print(_native.fwa_isa())"],
                              env=env, capture_output=True, text=True, check=True)
        return done.stdout.strip(), done.stderr
    assert isa_in_a_process("baseline") == ("baseline", "")
    assert isa_in_a_process("auto") == (best, "")
    chosen, warning = isa_in_a_process("avx512")
    assert chosen == best and "TFREC_KUAI_FWA_ISA=avx512 is not one of auto, baseline, avx2" in warning


# --- library loading and fallback -------------------------------------------------------------

@pytest.fixture
def fresh_loader(monkeypatch):
    """Runs the loader as a new process would, without disturbing the real loaded library."""
    monkeypatch.setattr(ops, "_library", None)
    monkeypatch.setattr(ops, "_load_error", None)
    monkeypatch.setattr(ops, "_warned", False)
    return monkeypatch


def test_missing_library_falls_back_with_one_warning(fresh_loader, tmp_path):
    fresh_loader.setattr(ops, "_LIBRARY_PATH", str(tmp_path / "_fwa_ops.so"))
    x = _good()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ops.feedback_weighted_attention(*x)
        ops.feedback_weighted_attention(*x)
    fallback = [w for w in caught if "composite" in str(w.message)]
    assert len(fallback) == 1 and "missing" in str(fallback[0].message)
    assert_close(first.numpy(), reference_forward(*x, 1 / np.sqrt(5)), "fallback output")
    assert not ops.fused_available()
    with pytest.raises(ops.OpLibraryError, match="pip install --no-build-isolation -e ."):
        ops.feedback_weighted_attention(*x, implementation="fused")


def test_library_built_for_other_tensorflow_is_refused(fresh_loader, tmp_path):
    fake = tmp_path / "_fwa_ops.so"
    fake.write_bytes(b"\x7fELF....tfrec_kuai_built_against_tf=2.0.0\0rest")
    fresh_loader.setattr(ops, "_LIBRARY_PATH", str(fake))
    with pytest.raises(ops.OpLibraryError, match=r"built against TensorFlow 2\.0\.0.*make install"):
        ops.load_op_library()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.feedback_weighted_attention(*_good())
    assert sum("2.0.0" in str(w.message) for w in caught) == 1


@needs_fused
def test_built_library_records_this_tensorflow():
    assert ops._built_against_version(ops._LIBRARY_PATH) == tf.version.VERSION


def test_unknown_implementation_rejected():
    with pytest.raises(ValueError, match="implementation"):
        ops.feedback_weighted_attention(*_good(), implementation="cuda")


def _graph_op_types(concrete):
    types = {n.type for n in concrete.graph.get_operations()}
    for fn in concrete.graph.as_graph_def().library.function:
        types |= {n.op for n in fn.node_def}
    return types


@needs_fused
def test_auto_uses_composite_under_xla_and_fused_refuses():
    """The fused op has no XLA kernel: "auto" must not put it in a jit_compile function."""
    x = _good()
    f = tf.function(lambda *a: ops.feedback_weighted_attention(*a), jit_compile=True)
    assert "FeedbackWeightedAttention" not in _graph_op_types(f.get_concrete_function(*x))
    assert_close(f(*x).numpy(), reference_forward(*x, 1 / np.sqrt(5)), "auto under XLA")
    g = tf.function(lambda *a: ops.feedback_weighted_attention(*a))
    assert "FeedbackWeightedAttention" in _graph_op_types(g.get_concrete_function(*x))
    with pytest.raises(ValueError, match="XLA"):
        tf.function(lambda *a: ops.feedback_weighted_attention(*a, implementation="fused"),
                    jit_compile=True)(*x)


_FRESH_PROCESS_FINE_TUNE = r"""
import sys
import numpy as np
import tfrec_kuai.ops  # registers the op and its gradient: nothing else is needed
import tensorflow as tf
path, data = sys.argv[1], np.load(sys.argv[2])
loaded = tf.saved_model.load(path)
args = [data[k] for k in ("x", "k", "v", "bias", "gate", "lengths")]
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(loaded(*args)))
grad = tape.gradient(loss, loaded.w)
np.save(sys.argv[3], grad.numpy())
"""


@needs_fused
@pytest.mark.slow
def test_fused_savedmodel_fine_tunes_in_a_fresh_process(tmp_path):
    """A new process that only imports tfrec_kuai.ops can load a fused SavedModel and train it."""
    import subprocess
    import sys
    rng = np.random.default_rng(8)
    q, k, v, bias, gate, lengths = make_inputs(rng, 4, 5, 2, 4, 3)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    model = _Attender("fused")
    tf.saved_model.save(model, str(tmp_path / "model"))
    np.savez(tmp_path / "data.npz", x=x, k=k, v=v, bias=bias, gate=gate, lengths=lengths)
    script = tmp_path / "fine_tune.py"
    script.write_text(_FRESH_PROCESS_FINE_TUNE)
    subprocess.run([sys.executable, str(script), str(tmp_path / "model"), str(tmp_path / "data.npz"),
                    str(tmp_path / "grad.npy")], check=True, capture_output=True, timeout=120,
                   cwd=str(pathlib.Path(__file__).parent.parent))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(x, k, v, bias, gate, lengths)))
    np.testing.assert_allclose(np.load(tmp_path / "grad.npy"), tape.gradient(loss, model.w), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("implementation", ["fused", "composite"])
@pytest.mark.parametrize("B,L", [(0, 5), (3, 0), (0, 0)])
def test_empty_batch_or_history(implementation, B, L):
    """B = 0 (an empty batch) and L = 0 (no history slots) are valid: zeros, empty gradients."""
    if implementation == "fused" and not ops.fused_available():
        missing_native("the op library")
    floats = [tf.ones(s) for s in [(B, 2, 4), (B, L, 2, 4), (B, L, 2, 3), (B, L, 2), (B, L, 2)]]
    with tf.GradientTape() as tape:
        tape.watch(floats)
        out = ops.feedback_weighted_attention(*floats, tf.zeros([B], tf.int32), implementation=implementation)
    grads = tape.gradient(out, floats, output_gradients=tf.ones_like(out))
    assert out.shape == (B, 2, 3) and not out.numpy().any()
    for f, g in zip(floats, grads):
        assert g.shape == f.shape and not g.numpy().any()


@pytest.mark.parametrize("implementation", ["fused", "composite"])
def test_int64_lengths_accepted(implementation):
    """``hist_len`` in the examples is int64; the wrapper casts it for the op."""
    if implementation == "fused" and not ops.fused_available():
        missing_native("the op library")
    x = _good()
    want = ops.feedback_weighted_attention(*x, implementation=implementation).numpy()
    x[5] = x[5].astype(np.int64)
    np.testing.assert_array_equal(ops.feedback_weighted_attention(*x, implementation=implementation).numpy(), want)
