"""Round trip simulator -> Beam -> tf.data reader: every §6 feature, shapes, and agreement with the log."""
import csv
import os

import numpy as np

from tfrec_kuai.data import examples
from tfrec_kuai.schema import LABEL_NAMES, example_feature_spec


def _all(ds):
    out = {}
    for batch in ds:
        for k, v in batch.items():
            out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def test_metadata_reconciles_and_describes_features(tiny_examples_dir):
    meta = examples.load_metadata(tiny_examples_dir)
    rows = meta["rows"]
    assert rows["input"] == 3000
    assert rows["input"] == rows["used"] + rows["dead_letter"]
    assert rows["used"] == rows["train_examples"] + rows["eval_examples"]
    assert meta["history_length"] == 50
    spec = example_feature_spec(50, [(n, meta["features"][n]["dtype"]) for n in meta["user_feature_names"]])
    assert list(meta["features"]) == list(spec)
    assert meta["label_names"] == list(LABEL_NAMES)
    assert len(meta["date_split"]["eval_dates"]) == 1
    assert max(meta["date_split"]["train_dates"]) < meta["date_split"]["eval_dates"][0]


def test_reader_round_trip_matches_the_log(tiny_examples_dir, tiny_log_dir):
    meta = examples.load_metadata(tiny_examples_dir)
    train = _all(examples.make_dataset(tiny_examples_dir, "train", batch_size=256))
    evals = _all(examples.make_dataset(tiny_examples_dir, "eval", batch_size=256))
    assert len(train["video_id"]) == meta["rows"]["train_examples"]
    assert len(evals["video_id"]) == meta["rows"]["eval_examples"]
    assert train["hist_video_id"].shape[1] == 50 and train["hist_play_s"].dtype == np.float32
    assert set(np.unique(evals["date"])) == set(meta["date_split"]["eval_dates"])
    # every example is a log row with the same play time and duration
    log = {}
    for name in ("log_standard_sim.csv", "log_random_sim.csv"):
        with open(os.path.join(tiny_log_dir, name)) as f:
            for r in csv.DictReader(f):
                log[(int(r["user_id"]), int(r["video_id"]), int(r["time_ms"]))] = r
    for i in range(0, len(train["video_id"]), 97):
        r = log[(train["user_id"][i], train["video_id"][i], train["time_ms"][i])]
        assert abs(train["label_watch_s"][i] - int(r["play_time_ms"]) / 1000) < 1e-3
        assert abs(train["duration_s"][i] - int(r["duration_ms"]) / 1000) < 1e-3
        assert train["label_valid"][i] == int(r["is_click"]) and train["label_long"][i] == int(r["long_view"])
    # histories: valid prefix only, padding -1 / 0 after hist_len
    L = 50
    pos = np.arange(L)[None, :]
    valid = pos < train["hist_len"][:, None]
    assert np.all((train["hist_video_id"] >= 0) == valid)
    assert np.all(train["hist_play_s"][~valid] == 0) and np.all(train["hist_age_s"][valid] > 0)
    both = valid[:, 1:]  # consecutive valid positions: newest first means ages never decrease
    assert np.all(np.diff(train["hist_age_s"], axis=1)[both] >= 0)


def test_vocabulary_and_corpus(tiny_examples_dir):
    meta = examples.load_metadata(tiny_examples_dir)
    vocab = examples.read_vocabulary(tiny_examples_dir, "video_id")
    assert len(vocab) == meta["vocab_sizes"]["video_id"] and len(set(vocab)) == len(vocab)
    corpus = _all(examples.make_corpus_dataset(tiny_examples_dir, batch_size=1000))
    assert len(corpus["video_id"]) == meta["rows"]["corpus_videos"]
    assert set(vocab) <= set(corpus["video_id"].tolist())
    assert np.all(corpus["duration_s"] > 0)
