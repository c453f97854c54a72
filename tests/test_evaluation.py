"""Evaluation metrics against brute-force / hand-computed values on small inputs (no sklearn)."""
import itertools
import os

import numpy as np

from tfrec_kuai.evaluate import evaluation as E
from tfrec_kuai.schema import BINARY_LABELS


def _brute_auc(y, s):
    pos = [si for yi, si in zip(y, s) if yi]
    neg = [si for yi, si in zip(y, s) if not yi]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])


def _brute_xauc(t, p):
    num = den = 0.0
    for i, j in itertools.combinations(range(len(t)), 2):
        if t[i] == t[j]:
            continue
        den += 1
        d = (t[i] - t[j]) * (p[i] - p[j])
        num += 1.0 if d > 0 else 0.5 if p[i] == p[j] else 0.0
    return num / den


def test_auc_hand_values_and_ties():
    assert E.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert E.auc([1, 0], [0.5, 0.5]) == 0.5
    assert np.isnan(E.auc([1, 1], [0.1, 0.2]))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 10, 200)          # many ties
    np.testing.assert_allclose(E.auc(y, s), _brute_auc(y, s), rtol=1e-12)


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.8, 0.2, 0.5, 0.3, 0.4]
    users = [1, 1, 2, 2, 2, 3, 3]          # user 3 has one class only
    # user 1: AUC 1 over 2 impressions; user 2: pos 0.2 vs negs 0.8, 0.5 → 0, over 3 impressions
    assert E.gauc(labels, scores, users) == (1.0 * 2 + 0.0 * 3) / 5


def test_xauc_matches_brute_force():
    assert E.xauc([1, 2, 3], [10, 20, 30]) == 1.0
    assert E.xauc([1, 2, 3], [30, 20, 10]) == 0.0
    assert E.xauc([1, 2], [5, 5]) == 0.5
    rng = np.random.default_rng(3)
    t = rng.integers(0, 6, 60).astype(float)   # ties in truth are excluded
    p = rng.integers(0, 8, 60).astype(float)   # ties in predictions count one half
    np.testing.assert_allclose(E.xauc(t, p), _brute_xauc(t, p), rtol=1e-12)


def test_calibration_and_ece():
    cal = E.calibration([0, 1, 1, 0], [0.05, 0.05, 0.95, 0.95], bins=10)
    assert cal["observed_rate"] == 0.5 and cal["mean_prediction"] == 0.5
    assert abs(cal["ece"] - 0.45) < 1e-12          # both bins off by 0.45
    assert [c["count"] for c in cal["curve"]] == [2, 2]


def test_recall_and_ndcg_at_k():
    out = E.recall_ndcg_at_k(np.array([0, 1, 9, 10, 50]), ks=(10,))
    assert out["recall_at_10"] == 3 / 5
    np.testing.assert_allclose(out["ndcg_at_10"], (1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)


def test_read_ground_truth_and_oracle(tmp_path):
    path = os.path.join(tmp_path, "ground_truth.csv")
    with open(path, "w") as f:
        f.write("user_id,video_id,time_ms,p_skip,p_valid,expected_watch_s\n1,2,3,0.25,0.5,7.5\n4,5,6,0.9,0.05,1\n")
    truth = E.read_ground_truth(path, keys={(1, 2, 3)})
    assert truth == {(1, 2, 3): {"p_skip": 0.25, "p_valid": 0.5, "expected_watch_s": 7.5}}
    preds, found = E.oracle_predictions(truth, [(1, 2, 3), (9, 9, 9)])
    assert found.tolist() == [True, False]
    assert preds["p_skip"][0] == 0.25 and preds["watch_s"][0] == 7.5


def test_ranking_metrics_keys():
    rng = np.random.default_rng(0)
    n = 50
    labels = {o: rng.integers(0, 2, n) for o in BINARY_LABELS}
    labels["watch_s"] = rng.uniform(0, 30, n)
    preds = {f"p_{o}": rng.uniform(size=n) for o in BINARY_LABELS}
    preds["watch_s"] = labels["watch_s"] * 2          # perfectly ordered
    m = E.ranking_metrics(labels, preds, rng.integers(0, 5, n))
    for key in ("auc_skip", "auc_valid", "auc_long", "auc_complete", "auc_like", "gauc_skip", "xauc_watch",
                "mae_watch_s"):
        assert key in m
    assert m["xauc_watch"] == 1.0
    np.testing.assert_allclose(m["mae_watch_s"], labels["watch_s"].mean())
