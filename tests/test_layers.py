"""Layer tests: each layer against a hand-computed NumPy reference, plus get_config round trips."""
import numpy as np
import pytest

import tfrec_kuai  # noqa: F401

from tfrec_kuai.layers import (BucketEmbedding, CascadeHeads, CGCLayer, DurationAwareWatchHead,
                               FeedbackAwareEncoder, IdEmbedding, ModuloEmbedding, SharedBottom, feedback_features,
                               target_relation)


def _dense(layer, x):
    w, b = layer.get_weights()
    return x @ w + b


def _reference_encoder(enc, q_in, tokens, fb, lengths):
    """docs/design.md §5/§7 in NumPy, float64, reading only the valid positions."""
    H, D, Dv = enc.num_heads, enc.head_dim, enc.value_dim
    B, L, _ = tokens.shape
    q = _dense(enc.query_proj, q_in).reshape(B, H, D)
    k = _dense(enc.key_proj, tokens).reshape(B, L, H, D)
    v = _dense(enc.value_proj, tokens).reshape(B, L, H, Dv)
    if enc.feedback_channel:
        v = np.concatenate([v, np.ones((B, L, H, 1))], -1)
        Dv += 1
    if enc.use_feedback:
        hidden = np.maximum(_dense(enc.feedback_net, fb), 0)
        out = _dense(enc.feedback_out, hidden)
        bias, gate = out[..., :H], np.tanh(out[..., H:])
    else:
        bias, gate = np.zeros((B, L, H)), np.ones((B, L, H))
    res = np.zeros((B, H, Dv))
    for b in range(B):
        n = lengths[b]
        if n == 0:
            continue
        logits = np.einsum("hd,lhd->lh", q[b], k[b, :n]) / np.sqrt(D) + bias[b, :n]
        p = np.exp(logits - logits.max(0))
        p /= p.sum(0)
        res[b] = np.einsum("lh,lhv->hv", p * gate[b, :n], v[b, :n])
    return res.reshape(B, H * Dv)


@pytest.mark.parametrize("use_feedback", [True, False])
def test_feedback_aware_encoder_matches_reference_and_ignores_padding(use_feedback):
    rng = np.random.default_rng(1)
    B, L, Dq, Dt, F = 5, 6, 7, 9, 12
    q_in = rng.normal(size=(B, Dq)).astype(np.float32)
    tokens = rng.normal(size=(B, L, Dt)).astype(np.float32)
    fb = rng.normal(size=(B, L, F)).astype(np.float32)
    lengths = np.array([6, 3, 0, 1, 5])
    enc = FeedbackAwareEncoder(num_heads=2, head_dim=4, value_dim=3, feedback_hidden=8, use_feedback=use_feedback,
                               attention_implementation="composite")
    out = enc(q_in, tokens, fb, lengths).numpy()
    assert out.shape == (B, 2 * 4)                  # H * (Dv + the feedback channel)
    np.testing.assert_allclose(out, _reference_encoder(enc, q_in, tokens, fb, lengths), rtol=1e-4, atol=1e-5)
    assert np.all(out[2] == 0)                       # no history → zeros
    # Whatever sits in the padding never changes the result.
    tokens2, fb2 = tokens.copy(), fb.copy()
    for b, n in enumerate(lengths):
        tokens2[b, n:] = 1e3
        fb2[b, n:] = -1e3
    np.testing.assert_allclose(enc(q_in, tokens2, fb2, lengths).numpy(), out, rtol=1e-6, atol=1e-6)


def test_encoder_relation_split_equals_concatenated_feedback_on_repeated_rows():
    """Per-user feedback + per-query relation with ``repeat=c`` == the plain call on the
    concatenated, explicitly repeated inputs (the first layer is split, not changed)."""
    rng = np.random.default_rng(3)
    users, c, L, F, R = 2, 3, 5, 6, 3
    q_in = rng.normal(size=(users * c, 4)).astype(np.float32)
    tokens = rng.normal(size=(users, L, 7)).astype(np.float32)
    fb = rng.normal(size=(users, L, F)).astype(np.float32)
    rel = (rng.random((users * c, L, R)) < 0.4).astype(np.float32)
    lengths = np.array([5, 2])                                     # per user row, like the history
    enc = FeedbackAwareEncoder(num_heads=2, head_dim=3, value_dim=2, feedback_hidden=5,
                               attention_implementation="composite")
    shared = enc(q_in, tokens, fb, lengths, repeat=c, relation=rel).numpy()
    rep = lambda x: np.repeat(x, c, axis=0)  # noqa: E731
    concatenated = np.concatenate([rep(fb), rel], -1)
    np.testing.assert_allclose(shared, _reference_encoder(enc, q_in, rep(tokens), concatenated, rep(lengths)),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="built for 9 inputs"):
        enc(q_in, tokens, fb, lengths, repeat=c)                    # the relation is part of the input


def test_feedback_aware_encoder_negative_gate_pushes_away():
    """One event, gate forced negative: the output is −|gate|·value, the opposite of DIN's."""
    enc = FeedbackAwareEncoder(num_heads=1, head_dim=2, value_dim=2, feedback_hidden=2,
                               attention_implementation="composite")
    q, t, fb = np.ones((1, 3), np.float32), np.ones((1, 1, 3), np.float32), np.ones((1, 1, 4), np.float32)
    enc(q, t, fb, np.array([1]))
    w, b = enc.feedback_out.get_weights()
    enc.feedback_out.set_weights([np.zeros_like(w), np.array([0.0, -3.0], np.float32)])   # bias 0, gate tanh(-3)
    din = FeedbackAwareEncoder.from_config({**enc.get_config(), "use_feedback": False})
    din(q, t, fb, np.array([1]))
    for name in ("query_proj", "key_proj", "value_proj"):
        getattr(din, name).set_weights(getattr(enc, name).get_weights())
    np.testing.assert_allclose(enc(q, t, fb, np.array([1])).numpy(),
                               np.tanh(-3.0) * din(q, t, fb, np.array([1])).numpy(), rtol=1e-5)


def test_encoder_get_config_round_trip():
    enc = FeedbackAwareEncoder(num_heads=3, head_dim=5, value_dim=2, feedback_hidden=7, use_feedback=False,
                               attention_implementation="composite", name="e")
    clone = FeedbackAwareEncoder.from_config(enc.get_config())
    assert clone.get_config() == enc.get_config()


def test_cascade_heads_are_nested_and_match_hand_computation():
    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.normal(0, 4, (200, 4)), [[30, -30, 30, 30], [-30, 30, 30, 30]]]).astype(np.float32)
    out = {k: v.numpy().astype(np.float64) for k, v in CascadeHeads()(logits).items()}
    sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
    s, a, b, c = (logits[:, i] for i in range(4))
    np.testing.assert_allclose(out["p_skip"], sig(s), rtol=1e-5)
    np.testing.assert_allclose(out["p_valid"], (1 - sig(s)) * sig(a), rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(out["p_long"], (1 - sig(s)) * sig(a) * sig(b), rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(out["p_complete"], (1 - sig(s)) * sig(a) * sig(b) * sig(c), rtol=1e-4, atol=1e-12)
    tol = 1e-6
    assert np.all(out["p_complete"] <= out["p_long"] + tol)
    assert np.all(out["p_long"] <= out["p_valid"] + tol)
    assert np.all(out["p_valid"] <= 1 - out["p_skip"] + tol)
    independent = CascadeHeads(cascade=False)(logits)
    np.testing.assert_allclose(independent["p_complete"].numpy(), sig(c), rtol=1e-5)
    assert CascadeHeads.from_config(CascadeHeads(cascade=False).get_config()).cascade is False


def test_duration_aware_watch_head():
    head = DurationAwareWatchHead(units=4, initial_ratio=0.5)
    hidden = np.zeros((3, 5), np.float32)
    duration = np.array([0.0, 10.0, 100.0], np.float32)
    ratio, watch = head(hidden, duration)
    ratio, watch = ratio.numpy(), watch.numpy()
    assert np.all(ratio >= 0)
    np.testing.assert_allclose(watch, ratio * duration, rtol=1e-6)
    assert watch[0] == 0
    # All weights zero except the output bias: the ratio is exactly the initial ratio.
    head.hidden.set_weights([np.zeros_like(w) for w in head.hidden.get_weights()])
    np.testing.assert_allclose(head(hidden, duration)[0].numpy(), 0.5, rtol=1e-5)
    assert DurationAwareWatchHead.from_config(head.get_config()).get_config() == head.get_config()
    # Conditional on not skipped: E[watch] = p_skip·min(3, d)/2 + (1 − p_skip)·ratio·d.
    p_skip = np.array([0.2, 0.5, 1.0], np.float32)
    r, w = head(hidden, duration, p_skip)
    np.testing.assert_allclose(w.numpy(), p_skip * np.minimum(duration, 3) / 2 + (1 - p_skip) * r.numpy() * duration,
                               rtol=1e-6)
    assert w.numpy()[2] == 1.5


def test_cgc_layer_matches_reference_and_stacks():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    layer = CGCLayer(num_tasks=2, num_shared_experts=2, num_task_experts=1, units=3)
    outs = [o.numpy() for o in layer(x)]
    kernel, bias = layer.shared_experts.get_weights()
    shared = np.maximum(np.einsum("bf,efu->beu", x, kernel) + bias, 0)
    for t in range(2):
        k, b = layer.task_experts[t].get_weights()
        own = np.maximum(np.einsum("bf,efu->beu", x, k) + b, 0)
        logits = _dense(layer.task_gates[t], x)
        g = np.exp(logits - logits.max(1, keepdims=True))
        g /= g.sum(1, keepdims=True)
        np.testing.assert_allclose(outs[t], np.einsum("be,beu->bu", g, np.concatenate([own, shared], 1)),
                                   rtol=1e-4, atol=1e-6)
    first = CGCLayer(num_tasks=2, units=3, output_shared=True)(x)
    assert len(first) == 3
    second = CGCLayer(num_tasks=2, units=5)(first)
    assert [o.shape for o in second] == [(4, 5), (4, 5)]
    assert CGCLayer.from_config(layer.get_config()).get_config() == layer.get_config()
    sb = SharedBottom(3, units=[8, 4])
    outs = sb(x)
    assert len(outs) == 3 and outs[0].shape == (4, 4)


def test_id_embedding_lookup_and_config():
    emb = IdEmbedding([7, 0, 42], dim=3)
    idx = emb.index(np.array([[7, 0, 42, -1, 99]])).numpy()
    np.testing.assert_array_equal(idx, [[1, 2, 3, 0, 0]])      # 0 is a real id; −1 and unknowns → OOV
    assert emb(np.array([7, -1])).shape == (2, 3)
    assert IdEmbedding.from_config(emb.get_config()).vocabulary == [7, 0, 42]
    b = BucketEmbedding([3.0, 10.0], 2)
    np.testing.assert_array_equal(b.bucket(np.array([0.0, 2.9, 3.0, 9.9, 10.0, 1e6])).numpy(), [0, 0, 1, 1, 2, 2])
    m = ModuloEmbedding(24, 2)
    assert m(np.array([25, -1])).shape == (2, 2)


def test_feedback_features_decode_bits_and_context():
    bits = np.array([[1 | 256, 2 | 4 | 8 | 16, 0]])
    play = np.array([[1.0, 12.0, 0.0]], np.float32)
    dur = np.array([[300.0, 6.0, 0.0]], np.float32)
    full = feedback_features(play, dur, bits).numpy()
    assert full.shape == (1, 3, 12)
    np.testing.assert_array_equal(full[0, 0, :9], [1, 0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(full[0, 1, :9], [0, 1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(full[0, 0, 9:], [np.log1p(1.0), np.log1p(300.0), 1 / 300], rtol=1e-5)
    np.testing.assert_allclose(full[0, 1, 11], 2.0)                # watch ratio 12/6
    assert np.all(full[0, 2] == 0)                                  # padding: all zeros, no NaN
    aged = feedback_features(play, dur, bits, age_s=np.array([[60.0, 0.0, 0.0]], np.float32)).numpy()
    np.testing.assert_allclose(aged[0, :, 12], [np.log(2.0), 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(aged[..., :12], full)
    bare = feedback_features(play, dur, bits, with_context=False).numpy()
    np.testing.assert_array_equal(bare, full[..., :9])


def test_target_relation_indicators():
    hist = {"video_id": np.array([[5, 6, -1]]), "author_id": np.array([[1, 2, -1]]), "tag": np.array([[-1, 3, -1]])}
    target = {"video_id": np.array([5]), "author_id": np.array([2]), "tag": np.array([-1])}
    rel = target_relation(hist, target).numpy()
    np.testing.assert_array_equal(rel[0], [[1, 0, 0], [0, 1, 0], [0, 0, 0]])   # unknown tag (−1) never matches


def test_target_relation_broadcasts_each_history_row_over_its_targets():
    """History ``[B_user, L]`` with ``C`` consecutive targets per row == comparing repeated rows."""
    rng = np.random.default_rng(5)
    users, c, L = 2, 3, 4
    hist = {k: rng.integers(-1, 3, (users, L)) for k in ("video_id", "author_id", "tag")}
    target = {k: rng.integers(-1, 3, users * c) for k in ("video_id", "author_id", "tag")}
    repeated = {k: np.repeat(v, c, axis=0) for k, v in hist.items()}
    np.testing.assert_array_equal(target_relation(hist, target).numpy(), target_relation(repeated, target).numpy())
