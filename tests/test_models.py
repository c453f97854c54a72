"""Model tests on small in-memory batches: the output contract, variants, traceability, losses."""
import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf

from tests.model_helpers import L, VOCABS, make_batch
from tfrec_kuai.config import Config, ModelConfig
from tfrec_kuai.models import OUTPUT_NAMES, BatchRecallAtK, RankingModel, RetrievalModel
from tfrec_kuai.models.retrieval import _recent_skips
from tfrec_kuai.schema import BINARY_LABELS, CORPUS_FEATURES, HISTORY_INPUTS


def small(variant="full", stage="ranking", **kw):
    return ModelConfig(stage=stage, variant=variant, history_length=L, user_dim=4, video_dim=8, author_dim=4,
                       tag_dim=4, context_dim=4, num_heads=2, head_dim=4, value_dim=4, feedback_hidden=8,
                       expert_units=16, tower_units=8, bottom_units=[16, 8], embedding_dim=8,
                       attention_implementation="composite", **kw)


def _inputs(batch):
    return {k: v for k, v in batch.items() if not k.startswith("label_")}


@pytest.fixture(scope="module")
def batch():
    return make_batch(32, seed=3)


def test_ranking_outputs_contract_and_cascade_order(batch):
    model = RankingModel(small(), VOCABS)
    out = {k: v.numpy() for k, v in model(_inputs(batch)).items()}
    assert sorted(out) == sorted(OUTPUT_NAMES)
    assert all(v.shape == (32,) for v in out.values())
    tol = 1e-6
    assert np.all(out["p_complete"] <= out["p_long"] + tol)
    assert np.all(out["p_long"] <= out["p_valid"] + tol)
    assert np.all(out["p_valid"] <= 1 - out["p_skip"] + tol)
    assert np.all(out["watch_s"] >= 0)
    c = model.model_config
    engage = 1 + sum(w * out[f"p_{k}"] for k, w in c.score_engage_weights.items())
    np.testing.assert_allclose(out["score"], out["watch_s"] * (1 - out["p_skip"]) ** c.score_skip_exponent * engage
                               * (1 - out["p_hate"]) ** c.score_hate_exponent, rtol=1e-5)


def test_ranking_traces_with_unknown_batch_and_matches_eager(batch):
    model = RankingModel(small(), VOCABS)
    inputs = _inputs(batch)
    eager = model(inputs)
    spec = {k: tf.TensorSpec([None] + list(v.shape[1:]), tf.as_dtype(v.dtype), name=k) for k, v in inputs.items()}
    fn = tf.function(lambda f: model(f)).get_concrete_function(spec)
    traced = fn(inputs)
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(traced[k].numpy(), eager[k].numpy(), rtol=1e-5, atol=1e-6)
    assert fn.structured_outputs["p_skip"].shape.as_list() == [None]


def _perturb_history(batch, keys):
    b = dict(batch)
    rng = np.random.default_rng(9)
    for k in keys:
        b[k] = (batch[k] + rng.integers(1, 50, batch[k].shape)).astype(batch[k].dtype)
    return b


@pytest.mark.parametrize("variant, changed, sensitive", [
    ("no_history", ["hist_video_id", "hist_play_s", "hist_feedback"], False),
    ("no_feedback", ["hist_play_s", "hist_feedback"], False),
    ("no_context", ["hist_play_s"], False),
    ("full", ["hist_play_s"], True),
    ("full", ["hist_feedback"], True),
])
def test_variants_read_only_what_they_should(batch, variant, changed, sensitive):
    """no_history ignores the history, no_feedback the feedback, no_context the play seconds."""
    model = RankingModel(small(variant), VOCABS)
    inputs = _inputs(batch)
    a = model(inputs)["p_skip"].numpy()
    b = model(_perturb_history(inputs, changed))["p_skip"].numpy()
    if sensitive:
        assert np.max(np.abs(a - b)) > 1e-6
    else:
        np.testing.assert_allclose(a, b, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "shared_bottom"])
def test_ranking_fit_reduces_loss(batch, variant):
    tf.keras.utils.set_random_seed(0)
    model = RankingModel(small(variant), VOCABS)
    model.compile(tf.keras.optimizers.Adam(0.01))
    ds = tf.data.Dataset.from_tensor_slices(batch).batch(32)
    first = model.evaluate(ds, return_dict=True, verbose=0)["loss"]
    model.fit(ds.repeat(30), epochs=1, verbose=0)
    last = model.evaluate(ds, return_dict=True, verbose=0)
    assert last["loss"] < 0.8 * first
    assert "auc_skip" in last and "mae_ratio" in last


def test_shared_bottom_has_no_experts_and_no_cascade(batch):
    model = RankingModel(small("shared_bottom"), VOCABS)
    model(_inputs(batch))
    names = [w.name for w in model.weights]
    assert not any("ple" in n for n in names) and any("shared_bottom" in n for n in names)
    assert model.cascade.cascade is False


def test_recent_skips_takes_newest_skips_of_the_row():
    f = {"hist_feedback": np.array([[2, 1, 1, 0, 1, 1], [1, 2, 2, 2, 2, 2]]),
         "hist_len": np.array([5, 6]),
         "hist_video_id": np.array([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]]),
         "hist_author_id": np.zeros((2, 6), np.int64), "hist_tag": np.zeros((2, 6), np.int64),
         "hist_duration_s": np.ones((2, 6), np.float32)}
    hard, valid = _recent_skips(f, 3)
    # Row 0: skips at positions 1, 2, 4 (5 is beyond hist_len). Row 1: only position 0.
    np.testing.assert_array_equal(hard["video_id"].numpy()[0], [11, 12, 14])
    np.testing.assert_array_equal(valid.numpy(), [[True, True, True], [True, False, False]])
    assert hard["video_id"].numpy()[1, 0] == 20


def test_batch_recall_at_k():
    m = BatchRecallAtK(k=2)
    labels = np.eye(3, dtype=np.float32)
    scores = np.array([[3, 1, 2], [5, 1, 4], [0, 0, 0]], np.float32)   # ranks 0, 2, 0 (tie → favourable)
    m.update_state(labels, scores)
    np.testing.assert_allclose(m.result().numpy(), 2 / 3, rtol=1e-6)


def test_retrieval_towers_and_loss_matches_hand_computation(batch):
    tf.keras.utils.set_random_seed(0)
    config = small(stage="retrieval", skip_hard_negatives=False)
    model = RetrievalModel(config, VOCABS)
    counts = {vid: (i + 1) * 10 for i, vid in enumerate(VOCABS["video_id"])}
    model.set_candidate_probabilities(counts)
    inputs = _inputs(batch)
    q = model.query_tower(inputs).numpy()
    cand_in = {k: batch[k] for k in CORPUS_FEATURES}
    c = model.candidate_tower(cand_in).numpy()
    assert q.shape == (32, 8) and c.shape == (32, 8)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, rtol=1e-5)
    # The loss by hand: logits = q·c / T − log q(video), softmax over positive candidates only,
    # summed over positive queries; accidental hits (same video) removed.
    loss = float(model.compute_loss(batch, training=True))
    prob = model.candidate_probability.numpy()[model.item_embedding.video.index(batch["video_id"]).numpy()]
    logits = q @ c.T / config.temperature - np.log(prob)[None, :]
    pos = batch["label_valid"].astype(bool)
    vid = batch["video_id"]
    expected = 0.0
    for i in np.flatnonzero(pos):
        allowed = pos.copy()
        allowed[vid == vid[i]] = False
        allowed[i] = True
        row = logits[i][allowed]
        expected += -(logits[i, i] - (np.log(np.exp(row - row.max()).sum()) + row.max()))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


@pytest.mark.slow
def test_retrieval_hard_negatives_raise_the_loss_and_fit(batch):
    tf.keras.utils.set_random_seed(0)
    with_hard = RetrievalModel(small(stage="retrieval"), VOCABS)
    without = RetrievalModel(small(stage="retrieval", skip_hard_negatives=False), VOCABS)
    with_hard(_inputs(batch))
    without(_inputs(batch))
    without.candidate_tower({k: batch[k] for k in CORPUS_FEATURES})
    with_hard.candidate_tower({k: batch[k] for k in CORPUS_FEATURES})
    without.set_weights(with_hard.get_weights())
    # More negatives in every softmax can only raise the cross-entropy.
    assert float(with_hard.compute_loss(batch)) > float(without.compute_loss(batch))
    with_hard.compile(tf.keras.optimizers.Adam(0.01))
    h = with_hard.fit(tf.data.Dataset.from_tensor_slices(batch).batch(32).repeat(20), epochs=1, verbose=0)
    assert "batch_recall_at_50" in h.history


def test_config_round_trip_and_rejects_unknown_keys(tmp_path):
    cfg = Config(model=small("no_context"))
    path = str(tmp_path / "c.json")
    cfg.save(path)
    from tfrec_kuai.config import load_config
    assert load_config(path).to_dict() == cfg.to_dict()
    with pytest.raises(ValueError):
        Config.from_dict({"model": {"hidden_size": 3}})
    with pytest.raises(ValueError):
        ModelConfig(variant="bogus").validate()


def test_ranking_loss_is_the_weighted_sum_of_per_row_means(batch):
    """The loss each task contributes is its mean over the batch (a regression test: the BCE of
    [B] vectors once came out divided by the batch size twice)."""
    model = RankingModel(small(), VOCABS)
    out = {k: v.numpy().astype(np.float64) for k, v in model.predict_all(_inputs(batch)).items()}
    w = model.model_config.loss_weights
    expected = 0.0
    for obj in BINARY_LABELS:
        p = np.clip(out[f"p_{obj}"], 1e-7, 1 - 1e-7)
        y = batch[f"label_{obj}"]
        expected += w[obj] * np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    ratio = np.clip(batch["label_watch_ratio"], 0, 5)
    expected += w["watch"] * np.mean((1 - batch["label_skip"]) * (ratio - out["watch_ratio"]) ** 2)
    np.testing.assert_allclose(float(model.compute_loss(batch)), expected, rtol=2e-3)


@pytest.mark.parametrize("variant", ["full", "no_feedback", "no_context"])
def test_history_encoder_repeat_equals_explicitly_repeated_rows(batch, variant):
    """``history_encoder(user rows, repeat=c)`` == the plain call on every user row repeated c times."""
    from tfrec_kuai.models import features as F
    model = RankingModel(small(variant), VOCABS)
    inputs = _inputs(batch)
    model(inputs)
    users, c = 4, 3                                  # rows 0 (full history) and 1 (empty) included
    user = {k: v[:users] for k, v in inputs.items() if k in HISTORY_INPUTS}
    rows = {k: np.repeat(v[:users], c, axis=0) for k, v in inputs.items()}
    for name in CORPUS_FEATURES:    # other rows' targets as candidates
        rows[name] = inputs[name][users:users + users * c].copy()
    rows["video_id"][0], rows["author_id"][0] = user["hist_video_id"][0, 0], user["hist_author_id"][0, 0]
    rows["tag"][c] = user["hist_tag"][1, 0]          # -1 padding never matches
    query = tf.concat([F.target_vector(model, rows), F.request_context(model, rows)], -1)
    plain = model.history_encoder(rows, query).numpy()
    candidates = {k: rows[k] for k in ("video_id", "author_id", "tag")}
    shared = model.history_encoder(dict(user, **candidates), query, repeat=c).numpy()
    assert shared.shape == plain.shape == (users * c, plain.shape[1])
    np.testing.assert_allclose(shared, plain, rtol=1e-5, atol=1e-5)
    # A scalar-tensor repeat inside a traced function with an unknown batch gives the same.
    spec = {k: tf.TensorSpec([None] + list(v.shape[1:]), tf.as_dtype(v.dtype)) for k, v in user.items()}
    cand_spec = {k: tf.TensorSpec([None], tf.as_dtype(v.dtype)) for k, v in candidates.items()}
    traced = tf.function(lambda u, t, q, r: model.history_encoder(dict(u, **t), q, repeat=r), autograph=False)
    out = traced.get_concrete_function(spec, cand_spec, tf.TensorSpec([None, query.shape[1]], tf.float32),
                                       tf.TensorSpec([], tf.int32))(user, candidates, query, tf.constant(c))
    np.testing.assert_allclose(out.numpy(), plain, rtol=1e-5, atol=1e-5)
    # The same with the encoder compiled by XLA (what the export's rank path runs).
    compiled = model.history_encoder(dict(user, **candidates), query, repeat=c, jit_compile=True).numpy()
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)
