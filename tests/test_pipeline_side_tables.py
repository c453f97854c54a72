"""The real KuaiRand-Pure side tables load, empty durations and multi-tags included."""
import os

import numpy as np

from beam_pipelines.side_tables import UserTable, VideoTable

PURE = os.path.join(os.path.dirname(__file__), os.pardir, "tfrec_kuai", "data", "kuairand_pure")


def test_pure_video_table():
    t = VideoTable.load(os.path.join(PURE, "video_features_basic_pure.csv"))
    assert len(t.video_id) == 7583 and t.skipped_rows == 0
    assert int(np.isnan(t.duration_ms).sum()) == 239
    author, tag = t.lookup(np.array([0, 1, 7582, 10**9]))
    assert author[:2].tolist() == [7349781, 2103883] and tag[:2].tolist() == [39, 2]
    assert author[3] == -1 and tag[3] == -1
    # a multi-tag row keeps its first tag; a row without tags gets -1
    assert (t.tag == -1).sum() == 96


def test_pure_user_table():
    t = UserTable.load(os.path.join(PURE, "user_features_pure.csv"))
    assert len(t.user_id) == 27285
    spec = dict(t.feature_spec)
    assert spec["user_active_degree"] == "int64" and "full_active" in t.codes["user_active_degree"]
    assert spec["user_follow_user_num"] == "int64" and spec["user_onehot_feat4"] == "int64"
    assert (t.columns["user_onehot_feat12"] == -1).any()  # empty cells -> -1
    assert t.row(0)["user_register_days"] == 799 and t.contains([0, 27284, 27285]).tolist() == [True, True, False]
