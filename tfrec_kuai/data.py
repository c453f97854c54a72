"""tf.data input over the examples folder written by ``beam_pipelines.build_examples``.

The parse spec is read from the folder's ``metadata.json`` rather than rebuilt from defaults, so a
folder made with another history length or with user features is read correctly without flags.
Batches are dicts keyed by the DESIGN.md §6 names (labels included); ids stay raw (the models map
them through the vocabularies, see :func:`read_vocabulary`).
"""
from __future__ import annotations

import json
import os

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai.schema import CORPUS_FEATURES

AUTOTUNE = tf.data.AUTOTUNE
_DTYPES = {"int64": tf.int64, "float32": tf.float32}


def load_metadata(examples_dir):
    with tf.io.gfile.GFile(os.path.join(examples_dir, "metadata.json")) as f:
        return json.load(f)


def read_vocabulary(examples_dir, feature):
    """Ids of ``vocab/<feature>.txt``, most frequent first."""
    with tf.io.gfile.GFile(os.path.join(examples_dir, "vocab", f"{feature}.txt")) as f:
        return [int(line) for line in f.read().split()]


def feature_spec(metadata):
    """``{name: tf.io.FixedLenFeature}`` of the examples described by ``metadata``."""
    return {name: tf.io.FixedLenFeature(desc["shape"], _DTYPES[desc["dtype"]])
            for name, desc in metadata["features"].items()}


def _files(examples_dir, split):
    pattern = os.path.join(examples_dir, split, "*.tfrecord.gz")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern}")
    return files


def _records(files, shuffle, seed, num_parallel):
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                         cycle_length=max(1, min(len(files), 4)), num_parallel_calls=num_parallel,
                         deterministic=not shuffle)


def make_dataset(examples_dir, split, batch_size, shuffle=False, repeat=False, seed=0, num_parallel=AUTOTUNE,
                 shuffle_buffer=20_000, drop_remainder=False):
    """Batches of ``split`` ("train" or "eval") as dicts of tensors (``[B]`` / ``[B, L]``)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    spec = feature_spec(load_metadata(examples_dir))
    ds = _records(_files(examples_dir, split), shuffle, seed, num_parallel)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda records: tf.io.parse_example(records, spec), num_parallel_calls=num_parallel)
    return ds.prefetch(AUTOTUNE)


def make_corpus_dataset(examples_dir, batch_size):
    """The candidate videos (``video_id, author_id, tag, duration_s``), one row per video."""
    spec = {name: tf.io.FixedLenFeature([], _DTYPES[dtype]) for name, dtype in CORPUS_FEATURES.items()}
    ds = _records(_files(examples_dir, "corpus"), False, 0, AUTOTUNE).batch(batch_size)
    return ds.map(lambda records: tf.io.parse_example(records, spec), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
