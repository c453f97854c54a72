"""tf.data input over the examples folder written by ``beam_pipelines.build_examples``.

The parse spec is read from the folder's ``metadata.json`` rather than rebuilt from defaults, so a
folder made with another history length or with user features is read correctly without flags.
Batches are dicts keyed by the docs/design.md §6 names (labels included); ids stay raw (the models map
them through the vocabularies, see :func:`read_vocabulary`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from tfrec_kuai.errors import InputError
from tfrec_kuai.schema import CORPUS_FEATURES

AUTOTUNE = tf.data.AUTOTUNE
_DTYPES = {"int64": tf.int64, "float32": tf.float32}
_MAKE_EXAMPLES = "write one with `python -m beam_pipelines.build_examples --input LOGS --output DIR`"


def load_metadata(examples_dir):
    """``metadata.json`` of an examples folder; a folder without one is not an examples folder."""
    path = os.path.join(examples_dir, "metadata.json")
    if not tf.io.gfile.exists(path):
        what = "does not exist" if not tf.io.gfile.exists(examples_dir) else "has no metadata.json"
        raise InputError(f"{examples_dir} is not an examples folder: it {what} ({_MAKE_EXAMPLES})")
    try:
        with tf.io.gfile.GFile(path) as f:
            metadata = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}); rebuild the examples folder") from None
    missing = [k for k in ("history_length", "features", "rows") if k not in metadata]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: not written by beam_pipelines.build_examples")
    return metadata


def read_vocabulary(examples_dir, feature, with_counts=False):
    """Ids of ``vocab/<feature>.txt``, most frequent first (empty when no id of it is known, e.g.
    ``author_id`` and ``tag`` of examples built from the log alone).

    ``with_counts``: ``(ids, counts)``, the counts of ``vocab/<feature>.counts.txt`` (train
    occurrences, line for line), or ``None`` for a folder written before the pipeline kept them.
    """
    ids = _read_int_lines(examples_dir, feature, f"{feature}.txt", "integer ids")
    if not with_counts:
        return ids
    if not tf.io.gfile.exists(os.path.join(examples_dir, "vocab", f"{feature}.counts.txt")):
        return ids, None
    counts = _read_int_lines(examples_dir, feature, f"{feature}.counts.txt", "integer counts")
    if len(counts) != len(ids):
        raise InputError(f"{os.path.join(examples_dir, 'vocab', feature + '.counts.txt')} holds {len(counts)} counts "
                         f"for the {len(ids)} ids of {feature}.txt; rebuild the examples folder")
    return ids, counts


def _read_int_lines(examples_dir, feature, name, what):
    path = os.path.join(examples_dir, "vocab", name)
    if not tf.io.gfile.exists(path):
        raise InputError(f"{examples_dir} has no vocabulary {os.path.join('vocab', name)} ({_MAKE_EXAMPLES})")
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        return [int(line) for line in text.split()]
    except ValueError:
        raise InputError(f"{path} holds something other than {what}, one a line") from None


def require_examples(examples_dir, split):
    """The metadata, after checking that ``split`` has examples (an empty split is a user error,
    not something to train or evaluate on)."""
    metadata = load_metadata(examples_dir)
    split_files(examples_dir, split)
    if split in ("train", "eval") and not int(metadata["rows"].get(f"{split}_examples", 0)):
        raise InputError(f"{examples_dir} has no {split} examples (metadata.json counts 0 of "
                         f"{metadata['rows'].get('input', 0)} input rows): nothing to "
                         f"{'train on' if split == 'train' else 'evaluate'}")
    return metadata


def side_information(examples_dir, metadata=None):
    """Which side tables the examples were built with, as the model sees them.

    Read from the data itself, so it holds for any folder: the video table is ``absent`` when no
    author and no tag is known (empty vocabularies: every author / tag is out-of-vocabulary),
    ``partial`` when some corpus videos have neither author nor tag (−1), else ``present``; the
    user table is ``absent`` when the examples carry no ``user_<column>`` feature.
    """
    metadata = metadata or load_metadata(examples_dir)
    sizes = metadata.get("vocab_sizes", {})
    video = {"author_vocabulary": int(sizes.get("author_id", 0)), "tag_vocabulary": int(sizes.get("tag", 0))}
    unknown, total = 0, 0
    if tf.io.gfile.glob(_pattern(examples_dir, "corpus")):
        corpus = read_corpus(examples_dir)
        total = len(corpus["video_id"])
        unknown = int(np.sum((corpus["author_id"] < 0) & (corpus["tag"] < 0)))
    video.update(corpus_videos=total, videos_without_author_or_tag=unknown)
    if not video["author_vocabulary"] and not video["tag_vocabulary"]:
        video["status"] = "absent"
    else:
        video["status"] = "partial" if unknown else "present"
    columns = list(metadata.get("user_feature_names", []))
    user = {"status": "present" if columns else "absent", "columns": columns}
    return {"video_features": video, "user_features": user,
            "absent": [name for name, part in (("video_features", video), ("user_features", user))
                       if part["status"] == "absent"]}


def describe_side_information(info):
    """One line for logs and the report, e.g. ``video table absent (author and tag ...)``."""
    video, user = info["video_features"], info["user_features"]
    if video["status"] == "absent":
        parts = ["video table absent (every author and tag is out-of-vocabulary)"]
    elif video["status"] == "partial":
        parts = [f"video table partial ({video['videos_without_author_or_tag']} of {video['corpus_videos']} "
                 "corpus videos have no author or tag: out-of-vocabulary)"]
    else:
        parts = ["video table present"]
    parts.append("user table absent (no user_<column> features)" if user["status"] == "absent"
                 else f"user table present ({len(user['columns'])} columns)")
    return "side information: " + "; ".join(parts)


def feature_spec(metadata):
    """``{name: tf.io.FixedLenFeature}`` of the examples described by ``metadata``."""
    return {name: tf.io.FixedLenFeature(desc["shape"], _DTYPES[desc["dtype"]])
            for name, desc in metadata["features"].items()}


def _pattern(examples_dir, split):
    return os.path.join(examples_dir, split, "*.tfrecord.gz")


def split_files(examples_dir, split):
    """The TFRecord files of ``split`` ("train", "eval" or "corpus"), sorted: the one listing of
    the folder, so that every reader sees the same files in the same order."""
    files = sorted(tf.io.gfile.glob(_pattern(examples_dir, split)))
    if not files:
        raise InputError(f"{examples_dir} has no {split} examples: no files match {_pattern(examples_dir, split)} "
                         f"({_MAKE_EXAMPLES})")
    return files


def _tf_message(error):
    """TensorFlow's message without its ``{{function_node ...}}`` prefix and ``[Op:...]`` suffix."""
    text = getattr(error, "message", str(error))
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text.splitlines()[0] if text else "", flags=re.S).strip()


def corrupt_file(files):
    """``(path, reason)`` of the first file in ``files`` that cannot be read to its end, or None.

    Used after a read failed: TensorFlow's error does not say which of the interleaved files it
    came from, and the user needs the name to delete or rebuild it.
    """
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            return path, _tf_message(error)
    return None


@contextlib.contextmanager
def read_errors_as_input_errors(examples_dir, split):
    """Turns a corrupt or unparsable TFRecord met while reading ``split`` into an ``InputError``
    naming the file (a truncated or non-gzip file, or records of another feature layout)."""
    try:
        yield
    except tf.errors.DataLossError as error:
        found = corrupt_file(sorted(tf.io.gfile.glob(_pattern(examples_dir, split))))
        where, reason = found if found else (os.path.join(examples_dir, split), _tf_message(error))
        raise InputError(f"corrupt TFRecord file {where}: {reason}; rebuild the examples folder") from None
    except tf.errors.InvalidArgumentError as error:
        message = _tf_message(error)
        if "parse" not in message.lower() and "Feature" not in message:
            raise
        raise InputError(f"the {split} records of {examples_dir} do not match its metadata.json "
                         f"({message}); rebuild the examples folder") from None


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
    ds = _records(split_files(examples_dir, split), shuffle, seed, num_parallel)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda records: tf.io.parse_example(records, spec), num_parallel_calls=num_parallel)
    return ds.prefetch(AUTOTUNE)


def read_corpus(examples_dir):
    """The candidate videos as NumPy arrays of ``video_id, author_id, tag, duration_s``.

    One row per video id, in file order: the Beam job writes one example per video, and should a
    folder hold a video twice (files merged by hand), the first row read is kept and the others
    dropped, so retrieval, evaluation and export all rank the same candidates, each once.
    """
    spec = {name: tf.io.FixedLenFeature([], _DTYPES[dtype]) for name, dtype in CORPUS_FEATURES.items()}
    columns = {name: [] for name in CORPUS_FEATURES}
    with read_errors_as_input_errors(examples_dir, "corpus"):
        for batch in tf.data.TFRecordDataset(split_files(examples_dir, "corpus"), compression_type="GZIP").batch(8192):
            parsed = tf.io.parse_example(batch, spec)
            for name in CORPUS_FEATURES:
                columns[name].append(parsed[name].numpy())
    corpus = {name: np.concatenate(values) for name, values in columns.items()}
    _, first = np.unique(corpus["video_id"], return_index=True)
    keep = np.sort(first)
    return {name: values[keep] for name, values in corpus.items()}


def make_corpus_dataset(examples_dir, batch_size):
    """:func:`read_corpus` as batches of tensors (the corpus is one row per video: it fits in memory)."""
    return tf.data.Dataset.from_tensor_slices(read_corpus(examples_dir)).batch(batch_size)


def read_serialized_examples(examples_dir, split="eval", count=8):
    """The first ``count`` serialized ``tf.train.Example`` of ``split`` (warmup requests, the
    demo's and the client's requests); the train split when the folder has no eval files."""
    try:
        files = split_files(examples_dir, split)
    except InputError:
        if split != "eval":
            raise
        files = split_files(examples_dir, "train")
    return [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)]
