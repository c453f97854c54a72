"""Round trip simulator -> Beam -> tf.data reader: every §6 feature, shapes, and agreement with the log."""
import csv
import os

import numpy as np
import pytest

from tfrec_kuai.data import examples
from tfrec_kuai.errors import InputError
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


def _copy_with_corpus(source, target, corpus_files):
    """An examples folder like ``source`` whose corpus/ holds ``corpus_files`` (lists of records)."""
    import shutil

    import tensorflow as tf
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("corpus"))
    os.makedirs(os.path.join(target, "corpus"))
    for i, records in enumerate(corpus_files):
        with tf.io.TFRecordWriter(os.path.join(target, "corpus", f"part-{i:05d}.tfrecord.gz"), "GZIP") as writer:
            for record in records:
                writer.write(record)


def test_a_video_twice_in_the_corpus_is_read_once_the_first_row_winning(tiny_examples_dir, tmp_path):
    """Every corpus reader keeps one row per video, the first read (file order): a hand-merged folder
    must not give retrieval a duplicate candidate, nor export and evaluation different corpora."""
    import tensorflow as tf
    records = [r.numpy() for r in tf.data.TFRecordDataset(examples.split_files(tiny_examples_dir, "corpus"),
                                                          compression_type="GZIP")]
    first = examples.read_corpus(tiny_examples_dir)
    assert len(first["video_id"]) == len(records) == len(set(first["video_id"].tolist()))
    changed = tf.train.Example.FromString(records[0])
    changed.features.feature["duration_s"].float_list.value[0] += 100.0  # the same video, another row
    target = str(tmp_path / "merged")
    _copy_with_corpus(tiny_examples_dir, target, [records, [changed.SerializeToString()] + records[:3]])
    corpus = examples.read_corpus(target)
    for name, values in first.items():
        np.testing.assert_array_equal(corpus[name], values)
    batched = _all(examples.make_corpus_dataset(target, batch_size=7))
    for name, values in first.items():
        np.testing.assert_array_equal(batched[name], values)
    assert examples.side_information(target)["video_features"]["corpus_videos"] == len(records)


def test_serialized_examples_come_from_eval_and_from_train_when_eval_is_empty(tiny_examples_dir, tmp_path):
    import shutil

    import tensorflow as tf
    eval_records = [r.numpy() for r in tf.data.TFRecordDataset(examples.split_files(tiny_examples_dir, "eval"),
                                                               compression_type="GZIP").take(3)]
    assert examples.read_serialized_examples(tiny_examples_dir, "eval", 3) == eval_records
    target = tmp_path / "no_eval"
    shutil.copytree(tiny_examples_dir, target, ignore=shutil.ignore_patterns("eval"))
    train = examples.read_serialized_examples(str(target), "eval", 2)
    assert len(train) == 2 and train[0] not in eval_records
    with pytest.raises(InputError, match="has no train examples"):
        examples.read_serialized_examples(str(tmp_path), "eval", 1)
