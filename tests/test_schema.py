"""docs/design.md §4 label rules at their boundaries, §6 feedback bits and feature spec."""
import numpy as np

from tfrec_kuai import schema


def test_label_boundaries():
    play = np.array([2999, 3000, 1999, 2000, 7000, 7001, 6999, 17999, 18000, 40000, 100, 25000])
    dur = np.array([60000, 60000, 2000, 2000, 60000, 60000, 6999, 60000, 60000, 20000, 100, 18000])
    lab = schema.compute_labels(play, dur, {"is_like": np.r_[1, np.zeros(11, int)]})
    assert lab["skip"].tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    # valid: play >= dur when dur <= 7 s, else play > 7 s
    assert lab["valid"].tolist() == [0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    # long: play >= dur when dur <= 18 s, else play >= 18 s
    assert lab["long"].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 1, 1, 1, 1]
    assert lab["complete"].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1]
    assert lab["like"].tolist()[:2] == [1, 0] and lab["hate"].sum() == 0
    np.testing.assert_allclose(lab["watch_s"][:2], [2.999, 3.0])
    assert lab["watch_ratio"][9] == 2.0 and lab["watch_ratio"].dtype == np.float32
    assert schema.compute_labels([60000], [1000])["watch_ratio"][0] == 5.0  # clipped


def test_feedback_bits():
    lab = schema.compute_labels([1000, 8000], [5000, 8000], {"is_like": [0, 1], "is_hate": [1, 0]})
    assert schema.feedback_bits(lab).tolist() == [1 | 256, 2 | 4 | 8 | 16]


def test_feature_spec():
    spec = schema.example_feature_spec(7, [("user_active_degree", "int64")])
    assert spec["hist_video_id"] == schema.FeatureDesc("int64", [7])
    assert spec["hist_play_s"].dtype == "float32" and spec["duration_s"] == schema.FeatureDesc("float32", [])
    assert spec["label_watch_s"].dtype == "float32" and spec["label_skip"].dtype == "int64"
    assert set(schema.LABEL_NAMES) <= set(spec)
    assert "user_active_degree" in spec and "label_skip" not in schema.SERVING_FEATURE_NAMES
    assert len(schema.LOG_COLUMNS) == 19
