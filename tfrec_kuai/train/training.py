"""Training: Keras ``fit`` on the tf.data reader, resumable, and the model-directory format.

A model directory holds::

    config.json            the Config tree (model + train), incl. variant and history length
    examples.json          what it was trained on: the examples folder, its history length,
                           which side tables were absent (``examples.side_information``) and,
                           for a warm start, the model it started from and the ids it added
    vocab/<feature>.txt     the vocabularies the model was built with (the examples', after the
                           config's min_count and max_vocab_size: docs/data.md, *Ids at scale*)
    weights/               the final (best on validation) weights, a TF checkpoint
    checkpoints/epoch-N    per-epoch weights
    backup/                BackupAndRestore state while a run is in progress (deleted at the end)
    logs/                  TensorBoard
    training_state.json    early-stopping / best-epoch state (kept in step with backup/)
    history.json           per-epoch metrics

**Resumption that ends where an unbroken run ends.** Keras' ``BackupAndRestore`` restores the
weights, the optimizer and the (epoch, step) counters, but it re-creates the input iterator from
the start, so a resumed run would see a different stream of batches. Here the training input is
one deterministic stream — epoch ``e`` is the training split shuffled with seed ``seed + e`` and
cut to ``steps_per_epoch`` batches, the epochs concatenated — and on resume it is advanced by the
checkpoint's ``train_counter`` (the number of steps already taken). Early-stopping and best-epoch
state live in ``training_state.json``, written at the epoch ends and ignored for epochs already
counted, so they resume too.

**Warm start (continual training).** ``train(..., warm_start=DIR)`` starts from the weights of
yesterday's finished model of the same stage, variant, architecture and L. Its vocabularies are
yesterday's, in the same order, with the new ids of today's examples appended (in the examples'
own order: most frequent first, ties by id), so every known id keeps its embedding row; the
tables' old rows and OOV row are copied, new rows start as a fresh model's, and every other
weight is copied as it is (``copy_weights``). The optimizer starts afresh: the checkpoint keeps
Adam's moments by position in the list Adam was built with (variables without a gradient left
out), not by variable, so nothing ties them reliably to the grown model's variables. A run so
started resumes after a kill like any other. With a ``max_vocab_size`` the growth stops at the
cap: yesterday's vocabulary stays a prefix, and today's new ids past the cap hash into the OOV
buckets (``grown_vocabularies``).

**Validation is not the test set.** Early stopping and best-epoch selection watch the *last day
of the training split* (held out from training), never the eval days that ``evaluate`` reports.
"""
import dataclasses
import json
import logging
import os
import shutil
import time

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from tfrec_kuai.config import Config, ModelConfig
from tfrec_kuai.errors import InputError
from tfrec_kuai.models import RankingModel, RetrievalModel
from tfrec_kuai.schema import CORPUS_FEATURES, VOCAB_FEATURES
from tfrec_kuai.train.optimizers import make_optimizer

_LOG = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
EXAMPLES_FILE = "examples.json"
WEIGHTS = os.path.join("weights", "model")


# ----------------------------------------------------------------------------- model directory

def read_vocabularies(examples_dir, min_count=None):
    """The examples' vocabularies (``vocab/<feature>.txt``, most frequent first); ``min_count``
    (``{feature: n}``, ``ModelConfig.min_count``) leaves out the ids seen fewer than ``n`` times
    in train, by the counts the pipeline writes beside the ids (``vocab/<feature>.counts.txt``)."""
    from tfrec_kuai.data import examples
    out = {}
    for name in VOCAB_FEATURES:
        least = int((min_count or {}).get(name, 1))
        if least <= 1:
            out[name] = [int(v) for v in examples.read_vocabulary(examples_dir, name)]
            continue
        ids, counts = examples.read_vocabulary(examples_dir, name, with_counts=True)
        if counts is None:
            raise InputError(f"--min_count {name}={least} needs the id counts of "
                             f"{os.path.join(examples_dir, 'vocab', name + '.counts.txt')}, which this examples "
                             "folder lacks (an older build_examples wrote it): rebuild it, or train without "
                             "--min_count")
        out[name] = [int(v) for v, c in zip(ids, counts) if c >= least]
    return out


def _write_vocabularies(model_dir, vocabularies):
    os.makedirs(os.path.join(model_dir, "vocab"), exist_ok=True)
    for name, ids in vocabularies.items():
        with open(os.path.join(model_dir, "vocab", f"{name}.txt"), "w") as f:
            f.write("".join(f"{int(v)}\n" for v in ids))


def _read_model_vocabularies(model_dir):
    out = {}
    for name in VOCAB_FEATURES:
        path = os.path.join(model_dir, "vocab", f"{name}.txt")
        if not os.path.exists(path):
            raise InputError(f"{model_dir} is an incomplete model folder: {path} is missing")
        with open(path) as f:
            out[name] = [int(line) for line in f if line.strip()]
    return out


def build_model(config: Config, vocabularies):
    """A fresh, built (variables created) model for ``config.model.stage``."""
    cls = RankingModel if config.model.stage == "ranking" else RetrievalModel
    model = cls(config.model, vocabularies)
    _build(model, config.model.history_length)
    return model


def dummy_features(history_length, batch=2):
    """A well-formed §6 batch of padding, used to create the variables before loading weights."""
    L = int(history_length)
    ints = {k: np.zeros([batch], np.int64) for k in ("user_id", "video_id", "author_id", "tag", "hour", "tab")}
    hist = {k: np.full([batch, L], -1, np.int64) for k in ("hist_video_id", "hist_author_id", "hist_tag")}
    floats = {k: np.zeros([batch, L], np.float32) for k in ("hist_play_s", "hist_duration_s", "hist_age_s")}
    return {**ints, **hist, **floats, "hist_feedback": np.zeros([batch, L], np.int64),
            "hist_len": np.zeros([batch], np.int64), "duration_s": np.ones([batch], np.float32)}


def _build(model, history_length):
    features = dummy_features(history_length)
    model(features)
    if isinstance(model, RetrievalModel):
        model.candidate_tower({k: features[k] for k in CORPUS_FEATURES})


def save_model_dir(model, config: Config, model_dir):
    """Writes config, vocabularies and weights: everything ``load_*_model`` needs."""
    os.makedirs(model_dir, exist_ok=True)
    config.save(os.path.join(model_dir, CONFIG_FILE))
    _write_vocabularies(model_dir, model.vocabularies)
    model.save_weights(os.path.join(model_dir, WEIGHTS))


def load_config_from_model_dir(model_dir):
    """The saved Config of a model folder; a folder without one is not a model folder."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        what = "does not exist" if not os.path.exists(model_dir) else f"has no {CONFIG_FILE}"
        raise InputError(f"{model_dir} is not a model folder: it {what} (write one with `tfrec-kuai train`)")
    try:
        with open(path) as f:
            return Config.from_dict(json.load(f))
    except ValueError as error:   # bad JSON, or keys of another version of the Config tree
        raise InputError(f"{path} is not a model config this version reads: {error}") from None


def check_model_dir(model_dir, stage=None, variant=None, history_length=None, config=None):
    """The saved Config of ``model_dir``, after checking it is the model the caller expects: a
    ``stage`` (a retrieval folder where a ranking one is expected), a ``variant``, and examples of
    its ``history_length``. Each mismatch is an ``InputError`` naming both sides."""
    config = config or load_config_from_model_dir(model_dir)
    m = config.model
    if stage is not None and m.stage != stage:
        raise InputError(f"{model_dir} holds a {m.stage} model, not a {stage} one")
    if variant is not None and m.variant != variant:
        raise InputError(f"{model_dir} holds the {m.stage} variant {m.variant!r}, not {variant!r}")
    if history_length is not None and int(m.history_length) != int(history_length):
        raise InputError(f"history length mismatch: the model in {model_dir} was trained with L = {m.history_length}"
                         f", the examples have L = {history_length}; build the examples with "
                         f"--history_length {m.history_length} or train on these")
    return config


def read_examples_record(model_dir):
    """``examples.json`` of a model folder (``{}`` for folders written before it existed)."""
    path = os.path.join(model_dir, EXAMPLES_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _load(model_dir, stage, attention_implementation):
    config = check_model_dir(model_dir, stage=stage)
    config = config.override("model", attention_implementation=attention_implementation)
    model = build_model(config, _read_model_vocabularies(model_dir))
    model.load_weights(os.path.join(model_dir, WEIGHTS)).expect_partial()
    return model


def load_ranking_model(model_dir, attention_implementation="auto"):
    """Rebuilds the ranking model from ``model_dir`` (config + vocabularies + weights).

    ``attention_implementation`` overrides the saved one: the portable export asks for
    ``"composite"`` so the SavedModel needs no custom op.
    """
    return _load(model_dir, "ranking", attention_implementation)


def load_retrieval_model(model_dir, attention_implementation="auto"):
    """Rebuilds the retrieval model (both towers) from ``model_dir``."""
    return _load(model_dir, "retrieval", attention_implementation)


# ----------------------------------------------------------------------------- warm start

def grown_vocabularies(old, new, max_vocab_size=None):
    """Each of ``old`` (yesterday's model's vocabularies) followed by the ids of ``new`` (today's
    examples') it lacks, in ``new``'s order — the examples' rule, most frequent first, ties by id,
    ids under the pipeline's ``--vocab_min_count`` (and the training's ``min_count``) already
    left out — so the result depends on the inputs alone and an old id's index never moves. Ids
    of ``old`` that today's examples lack stay: an id once learnt keeps its row.

    ``max_vocab_size`` (``{feature: cap}``, ``ModelConfig.max_vocab_size``) stops the growth at
    ``cap`` ids: only the most frequent of the new ids that fit are appended, the rest go to the
    OOV buckets. ``old`` is kept whole even when it already holds more (a cap lowered since
    yesterday): no new id is added then, and no learnt row is dropped. A fresh vocabulary is the
    growth of an empty one, ``new``'s first ``cap`` ids."""
    out = {}
    for name in VOCAB_FEATURES:
        known = set(old[name])
        added = [v for v in new[name] if v not in known]
        cap = (max_vocab_size or {}).get(name)
        if cap is not None:
            added = added[:max(0, int(cap) - len(old[name]))]
        out[name] = list(old[name]) + added
    return out


def check_warm_start(source, model_dir, config: Config, history_length):
    """The saved Config of ``source`` after checking that it can start a run in ``model_dir`` of
    ``config`` on examples of ``history_length``: a folder apart from ``model_dir`` (``--restart``
    would delete it, or part of it, otherwise), a finished model (its weights written, no run of its own in progress), of the
    same stage, variant and L, and of the same architecture (every model field but the attention
    implementation, which only chooses how the same weights are computed). Each refusal is an
    ``InputError`` naming ``--warm_start``."""
    src, dst = os.path.realpath(source), os.path.realpath(model_dir)
    if src == dst or src.startswith(dst + os.sep) or dst.startswith(src + os.sep):
        raise InputError(f"--warm_start {source} and --model_dir {model_dir} are one folder or one holds the other: "
                         "a warm start writes a new model folder beside yesterday's, pass another --model_dir")
    m = config.model
    try:
        saved = check_model_dir(source, stage=m.stage, variant=m.variant, history_length=history_length)
    except InputError as error:
        raise InputError(f"--warm_start: {error}") from None
    if not os.path.exists(os.path.join(source, WEIGHTS + ".index")) or \
            _read_train_counter(os.path.join(source, "backup")):
        raise InputError(f"--warm_start {source} holds no finished model (no weights yet, or a run in progress): "
                         "finish its training first (re-run its command) or warm start from another folder")
    # Not architecture: how the same weights are computed, L (the examples', checked above), and
    # which ids the vocabularies keep (grown_vocabularies applies today's cap and min_count).
    same_anyway = ("attention_implementation", "history_length", "max_vocab_size", "min_count")
    differ = [f.name for f in dataclasses.fields(ModelConfig)
              if f.name not in same_anyway and _normalized(saved.model, f.name) != _normalized(m, f.name)]
    if differ:
        what = ", ".join(f"{name} {getattr(saved.model, name)!r} (asked: {getattr(m, name)!r})" for name in differ)
        raise InputError(f"--warm_start {source} holds a model of another architecture: {what}; pass its config "
                         f"(--config {os.path.join(source, CONFIG_FILE)}) or train from scratch")
    return saved


def _normalized(model_config, field):
    """A field for comparison: ``oov_buckets`` with its default (1) filled in per feature, so
    ``{}`` and ``{"video_id": 1}`` are one architecture."""
    if field == "oov_buckets":
        return {name: model_config.oov_rows(name) for name in VOCAB_FEATURES}
    return getattr(model_config, field)


def describe_embedding_tables(model):
    """The training-start line: each id table's rows × dim and float32 bytes, alone and with
    Adam's two slots (``layers.embeddings.describe_tables``)."""
    from tfrec_kuai.layers.embeddings import describe_tables
    layers = _id_embeddings(model)
    return describe_tables([(layers[name].name, layers[name].vocabulary_size, layers[name].dim)
                            for name in VOCAB_FEATURES if name in layers])


def _id_embeddings(model):
    """The model's ``IdEmbedding`` layers by vocabulary feature (no ``user_id`` without a user embedding)."""
    out = {"video_id": model.item_embedding.video, "author_id": model.item_embedding.author,
           "tag": model.item_embedding.tag}
    if model.user_embedding is not None:
        out["user_id"] = model.user_embedding
    return out


def copy_weights(source, target):
    """Every weight of ``source`` into ``target``, a built model of the same config whose
    vocabularies start with ``source``'s (``grown_vocabularies``).

    The id tables take ``source``'s OOV row and old rows (``IdEmbedding.copy_rows_from``) and keep
    their fresh rows for the new ids; the retrieval model's ``candidate_probability`` (q of the
    logQ correction) is a statistic of the training data, set from today's examples instead; any
    other weight must have its counterpart's shape. The two models are built by the same code
    from the same config, so their weights come in the same order."""
    tables = {}
    for name, layer in _id_embeddings(target).items():
        layer.copy_rows_from(_id_embeddings(source)[name])
        tables[layer.embedding.embeddings.ref()] = name
    skip = set(tables)
    if isinstance(target, RetrievalModel):
        skip.add(target.candidate_probability.ref())
    pairs = list(zip(source.weights, target.weights))
    if len(source.weights) != len(target.weights):
        raise RuntimeError(f"warm start: {len(source.weights)} weights in the source model, "
                           f"{len(target.weights)} in the new one")
    for old, new in pairs:
        if new.ref() in skip:
            continue
        if tuple(old.shape) != tuple(new.shape):
            raise RuntimeError(f"warm start: weight {old.name} {tuple(old.shape)} does not fit {new.name} "
                               f"{tuple(new.shape)}")
        new.assign(old)


# ----------------------------------------------------------------------------- input

def _mask_batch(batch, keep):
    return {k: tf.boolean_mask(v, keep) for k, v in batch.items()}


def validation_date(metadata):
    dates = sorted(int(d) for d in metadata.get("date_split", {}).get("train_dates", []))
    return dates[-1] if len(dates) >= 2 else None


def shuffled_batches(examples_dir, split, batch_size, seed, shuffle_buffer=20_000, repeat=True):
    """Shuffled, *deterministic* batches of a split: the same seed gives the same stream in any process.

    ``examples.make_dataset(shuffle=True)`` trades determinism for interleave speed; a resumable run
    needs the exact batch sequence back, so this reader keeps every stage ordered (files shuffled
    with ``seed``, a deterministic parallel interleave, a seeded example shuffle that does not
    reshuffle, parsing after batching as the reader does). With ``repeat``: full batches, forever.
    """
    from tfrec_kuai.data import examples
    spec = examples.feature_spec(examples.load_metadata(examples_dir))
    files = examples.split_files(examples_dir, split)
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP", buffer_size=1 << 20),
                       cycle_length=max(1, min(len(files), 4)), block_length=8,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=repeat)
    return ds.map(lambda r: tf.io.parse_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def training_stream(examples_dir, config: Config, steps_per_epoch, val_date=None, skip_steps=0):
    """The deterministic stream of training batches for all epochs, advanced by ``skip_steps``.

    Epoch ``e`` is the training split shuffled with seed ``seed + e``, cut to ``steps_per_epoch``
    batches; the epochs are concatenated into one stream that Keras iterates once (it does not
    re-create the iterator per epoch when ``steps_per_epoch`` is given and the stream is longer).
    """
    t = config.train
    stream = None
    for epoch in range(t.epochs):
        ds = shuffled_batches(examples_dir, "train", t.batch_size, t.seed + epoch).take(steps_per_epoch)
        stream = ds if stream is None else stream.concatenate(ds)
    stream = stream.skip(skip_steps)
    stream = stream.map(lambda b: _prepare(b, config, val_date, training=True))
    return stream.prefetch(2)


def ps_training_input(examples_dir, config: Config):
    """The training input of a parameter-server run: each worker's own endless stream of the
    training split's batches, in an order of its own (``tfrec_kuai.train.distribute``).

    Keras traces the function once and runs the traced dataset on every worker, so a seeded
    shuffle would give every worker the same batches: the shuffles here are unseeded, and the
    graph-level seed ``set_random_seed`` gave the trace is cleared (in the traced graph only), so
    each worker's dataset draws its own seed when it starts.
    """
    def dataset_fn(input_context):
        if not tf.executing_eagerly():
            tf.random.set_seed(None)
        ds = shuffled_batches(examples_dir, "train", config.train.batch_size, seed=None)
        return ds.map(lambda b: _prepare(b, config, None, training=True)).prefetch(2)
    return tf.keras.utils.experimental.DatasetCreator(dataset_fn)


def _prepare(batch, config, val_date, training):
    keep = None
    if val_date is not None:
        is_val = tf.equal(tf.cast(batch["date"], tf.int64), val_date)
        keep = tf.logical_not(is_val) if training else is_val
    if config.model.stage == "retrieval":
        # Only effective views are retrieval queries; the other rows cost compute and add nothing.
        positive = tf.cast(batch["label_valid"], tf.bool)
        keep = positive if keep is None else tf.logical_and(keep, positive)
    return batch if keep is None else _mask_batch(batch, keep)


def validation_data(examples_dir, config: Config, val_date):
    """A fixed, cached validation set: the last training day's rows (or the eval split if asked)."""
    from tfrec_kuai.data import examples
    t = config.train
    if t.validation == "none":
        return None
    if t.validation == "eval":
        ds = examples.make_dataset(examples_dir, "eval", t.batch_size)
        ds = ds.map(lambda b: _prepare(b, config, None, training=False))
    elif val_date is None:
        return None
    else:
        ds = shuffled_batches(examples_dir, "train", t.batch_size, t.seed + 10_000, repeat=False)
        ds = ds.map(lambda b: _prepare(b, config, val_date, training=False))
        ds = ds.filter(lambda b: tf.shape(b["date"])[0] > 0)
    if t.validation_batches:
        ds = ds.take(t.validation_batches)
    return ds.cache()


def count_video_impressions(examples_dir):
    """Impressions per raw video id in the training split (for the logQ correction)."""
    from tfrec_kuai.data import examples
    files = examples.split_files(examples_dir, "train")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=2).batch(4096)
    ds = ds.map(lambda s: tf.io.parse_example(s, {"video_id": tf.io.FixedLenFeature([], tf.int64)})["video_id"])
    counts = {}
    for ids in ds:
        u, c = np.unique(ids.numpy(), return_counts=True)
        for a, b in zip(u, c):
            counts[int(a)] = counts.get(int(a), 0) + int(b)
    return counts


# ----------------------------------------------------------------------------- callbacks

class EarlyStoppingWithState(tf.keras.callbacks.Callback):
    """Early stopping + best-epoch weights, whose state survives a kill and restart.

    At each epoch end (once per epoch, even when a resumed run replays the end of an epoch) it
    compares ``monitor`` with the best so far, saves the best weights to ``best/`` and counts the
    epochs without improvement; the state is written to ``training_state.json``.
    """

    def __init__(self, model_dir, monitor, mode="max", patience=1):
        super().__init__()
        self.model_dir = model_dir
        self.monitor = monitor
        self.mode = mode
        self.patience = int(patience)
        self.path = os.path.join(model_dir, "training_state.json")
        self.state = {"last_epoch": -1, "best": None, "best_epoch": None, "wait": 0, "stopped": False}

    def on_train_begin(self, logs=None):
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.state.update(json.load(f))
        if self.state["stopped"]:
            self.model.stop_training = True

    def _better(self, value):
        best = self.state["best"]
        return best is None or (value > best if self.mode == "max" else value < best)

    def on_epoch_end(self, epoch, logs=None):
        if epoch <= self.state["last_epoch"]:
            return
        value = (logs or {}).get(self.monitor)
        if value is not None:
            value = float(value)
            if self._better(value):
                self.state.update(best=value, best_epoch=epoch, wait=0)
                self.model.save_weights(os.path.join(self.model_dir, "best", "model"))
            else:
                self.state["wait"] += 1
                if self.state["wait"] >= self.patience:
                    self.state["stopped"] = True
                    self.model.stop_training = True
        self.state["last_epoch"] = epoch
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
        os.replace(tmp, self.path)


class StopAfterSteps(tf.keras.callbacks.Callback):
    """Ends the process abruptly after ``steps`` batches — the test's stand-in for a kill."""

    def __init__(self, steps):
        super().__init__()
        self.steps = int(steps)
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.steps:
            raise KeyboardInterrupt(f"simulated kill after {self.steps} steps")


class ThroughputLogger(tf.keras.callbacks.Callback):
    """Examples per second per epoch, into the logs (TensorBoard and history.json).

    The steps are the model's step counter's advance over the epoch, not a count of step hooks:
    under ``ParameterServerStrategy`` Keras refuses callbacks with step hooks, and at an epoch
    end every step the coordinator handed out has finished."""

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.start = time.perf_counter(), int(self.model._train_counter.numpy())

    def on_epoch_end(self, epoch, logs=None):
        steps = int(self.model._train_counter.numpy()) - self.start
        if logs is not None and steps:
            logs["examples_per_s"] = steps * self.batch_size / (time.perf_counter() - self.t0)


class TensorBoardScalars(tf.keras.callbacks.Callback):
    """TensorBoard scalar logs written with TensorFlow core only.

    ``tf.keras.callbacks.TensorBoard`` needs the ``tensorboard`` package for ``tf.summary.scalar``,
    which TensorFlow 2.21 no longer pulls in; ``tf.summary.write`` with the scalars plugin's
    metadata is in TensorFlow itself and produces the same event files TensorBoard reads.
    ``logs/train`` gets the batch-level metrics every ``every`` steps (``every=None``: none, as
    under ``ParameterServerStrategy``, which refuses step hooks) and the epoch metrics,
    ``logs/validation`` the ``val_*`` ones.
    """

    def __init__(self, log_dir, every=50):
        super().__init__()
        self.log_dir = log_dir
        self.every = None if every is None else max(1, int(every))
        meta = tf.compat.v1.SummaryMetadata()
        meta.plugin_data.plugin_name = "scalars"
        self.metadata = meta.SerializeToString()
        self.writers = {}
        self.step = 0

    def _write(self, split, logs, step, prefix=""):
        writer = self.writers.get(split)
        if writer is None:
            writer = self.writers[split] = tf.summary.create_file_writer(os.path.join(self.log_dir, split))
        with writer.as_default():
            for k, v in (logs or {}).items():
                try:
                    value = float(v)
                except (TypeError, ValueError):
                    continue
                tf.summary.write(prefix + k, tf.constant(value, tf.float32), step=step, metadata=self.metadata)
        writer.flush()

    def _implements_train_batch_hooks(self):
        return self.every is not None

    def on_train_begin(self, logs=None):
        self.step = int(self.model._train_counter.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.every and self.step % self.every == 0:
            self._write("train", logs, self.step, "batch_")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._write("train", {k: v for k, v in logs.items() if not k.startswith("val_")}, epoch, "epoch_")
        self._write("validation", {k[4:]: v for k, v in logs.items() if k.startswith("val_")}, epoch, "epoch_")

    def on_train_end(self, logs=None):
        for w in self.writers.values():
            w.close()


def _read_train_counter(backup_dir):
    """Steps already taken according to the BackupAndRestore checkpoint (0 when there is none)."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    for key in reader.get_variable_to_shape_map():
        if key.startswith("train_counter"):
            return int(reader.get_tensor(key))
    return 0


# ----------------------------------------------------------------------------- fit

def check_model_config(config: Config):
    """``config.model.validate()`` and ``config.train.validate()`` as an ``InputError`` (a bad
    ``--max_vocab_size``, ``--min_count`` or ``--oov_buckets``, or config file value, is the user's
    to fix)."""
    for section in ("model", "train"):
        try:
            getattr(config, section).validate()
        except ValueError as error:
            raise InputError(f"{section} config: {error}") from None


def check_parameter_server_run(config: Config, warm_start=None):
    """An ``InputError`` for what a ``ParameterServerStrategy`` run does not do: validation and a
    warm start (``tfrec_kuai.train.distribute`` says why)."""
    refused = [flag for flag, on in ((f"--validation {config.train.validation}", config.train.validation != "none"),
                                     ("--warm_start", warm_start is not None)) if on]
    if refused:
        raise InputError(f"--distribute parameter_server does not run {' or '.join(refused)}: pass "
                         "--validation none and train from scratch (see tfrec_kuai/train/distribute.py)")


def train(examples_dir, model_dir, config: Config, verbose=1, extra_callbacks=(), log=print, strategy=None,
          warm_start=None):
    """Trains (or resumes training) and writes the model directory. Returns the Keras history dict.

    ``warm_start``: yesterday's model folder to start from (the module docstring, *Warm start*);
    ``model_dir`` holding an unfinished run resumes it, if that run was started the same way.

    ``strategy`` is a ``tf.distribute`` strategy (``tfrec_kuai.train.distribute.make_strategy``); under
    a multi-worker strategy every worker runs this same function, the global input stream is
    sharded by element, and only the chief writes ``model_dir`` (the others write a scratch
    folder, ``distribute.writable_model_dir``). Under ``ParameterServerStrategy`` only the chief
    runs it, and what that strategy does not support is routed as its module docstring says.
    """
    from tfrec_kuai.data import examples
    from tfrec_kuai.train import distribute
    strategy = strategy or tf.distribute.get_strategy()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    parameter_server = distribute.is_parameter_server(strategy)
    shared_backup_dir = os.path.join(model_dir, "backup")  # BackupAndRestore handles the workers itself
    model_dir = distribute.writable_model_dir(model_dir)
    metadata = examples.require_examples(examples_dir, "train")
    config = config.override("model", history_length=int(metadata["history_length"]))
    t, stage = config.train, config.model.stage
    check_model_config(config)
    if t.epochs < 1 or t.batch_size < 1 or not t.learning_rate > 0:
        raise InputError(f"epochs and batch_size must be >= 1 and learning_rate > 0, got epochs={t.epochs}, "
                         f"batch_size={t.batch_size}, learning_rate={t.learning_rate}")
    if parameter_server:
        check_parameter_server_run(config, warm_start)
    if warm_start is not None:
        check_warm_start(warm_start, model_dir, config, metadata["history_length"])
    backup_dir = shared_backup_dir
    done_steps = _read_train_counter(backup_dir)
    if done_steps and os.path.exists(os.path.join(model_dir, CONFIG_FILE)):
        # Resuming restores the saved weights: they must be of the model asked for now.
        saved = load_config_from_model_dir(model_dir).model
        for field in ("stage", "variant", "history_length", "max_vocab_size", "min_count", "oov_buckets"):
            if _normalized(saved, field) != _normalized(config.model, field):
                raise InputError(f"{model_dir} holds an unfinished run of another model ({field} "
                                 f"{getattr(saved, field)!r}, asked for {getattr(config.model, field)!r}): "
                                 "pass --restart to discard it, or another --model_dir")
        # ...and of the same vocabularies, which a warm start grows from its source.
        started = read_examples_record(model_dir).get("warm_start", {}).get("model_dir")
        asked = os.path.abspath(warm_start) if warm_start is not None else None
        if started != asked:
            def how(source):
                return f"a warm start from {source}" if source else "a run from scratch"
            raise InputError(f"{model_dir} holds an unfinished run of {how(started)}, asked for {how(asked)}: "
                             "pass --restart to discard it, or another --model_dir")
    m = config.model
    todays = read_vocabularies(examples_dir, m.min_count)
    known = _read_model_vocabularies(warm_start) if warm_start is not None else {n: [] for n in VOCAB_FEATURES}
    vocabularies = grown_vocabularies(known, todays, m.max_vocab_size)
    record = {"examples": os.path.abspath(examples_dir), "history_length": int(metadata["history_length"]),
              "train_examples": int(metadata["rows"]["train_examples"]),
              "vocabularies": {name: {"examples_ids": len(todays[name]), "model_ids": len(vocabularies[name]),
                                      "oov_buckets": m.oov_rows(name)} for name in VOCAB_FEATURES}}
    source_model = None
    if warm_start is not None:
        added = {name: len(vocabularies[name]) - len(known[name]) for name in VOCAB_FEATURES}
        record["warm_start"] = {"model_dir": os.path.abspath(warm_start), "new_ids": added}
        def left_out(name):
            unknown = len(set(todays[name]) - set(vocabularies[name]))
            return f" ({unknown} over the cap {m.max_vocab_size[name]}: OOV)" if unknown else ""
        log(f"warm start from {warm_start}: " + ", ".join(
            f"{name} {len(known[name])} + {added[name]} new{left_out(name)}" for name in VOCAB_FEATURES))
        if not done_steps:   # a resumed run takes every weight from its backup instead
            source_model = _load(warm_start, stage, config.model.attention_implementation)
    side = examples.side_information(examples_dir, metadata)
    record["side_information"] = side
    os.makedirs(model_dir, exist_ok=True)
    config.save(os.path.join(model_dir, CONFIG_FILE))
    _write_vocabularies(model_dir, vocabularies)
    with open(os.path.join(model_dir, EXAMPLES_FILE), "w") as f:
        json.dump(record, f, indent=1)
    log(examples.describe_side_information(side))

    tf.keras.utils.set_random_seed(t.seed)
    with strategy.scope():
        model = build_model(config, vocabularies)
        if source_model is not None:
            copy_weights(source_model, model)
            del source_model
        if stage == "retrieval" and config.model.logq_correction:
            model.set_candidate_probabilities(count_video_impressions(examples_dir))
        model.compile(optimizer=make_optimizer(t.optimizer, t.learning_rate))
    log(describe_embedding_tables(model))

    if parameter_server:
        log(distribute.describe_shards(model))
    n_train = int(metadata["rows"]["train_examples"])
    if t.max_train_examples:
        n_train = min(n_train, int(t.max_train_examples))
    steps_per_epoch = t.steps_per_epoch or max(1, n_train // t.batch_size)
    val_date = validation_date(metadata) if t.validation == "last_train_day" else None

    if done_steps:
        log(f"resuming from the backup in {backup_dir}: {done_steps} of {steps_per_epoch * t.epochs} steps done")
    else:
        # A fresh start: state left by an earlier, finished run in this directory must not leak in
        # (its best epoch, its early-stopping counter, its history).
        for stale in ("training_state.json", "history.json"):
            if os.path.exists(os.path.join(model_dir, stale)):
                os.remove(os.path.join(model_dir, stale))
        shutil.rmtree(os.path.join(model_dir, "best"), ignore_errors=True)
    if parameter_server:
        stream = ps_training_input(examples_dir, config)
    else:
        stream = training_stream(examples_dir, config, steps_per_epoch, val_date, skip_steps=done_steps)
    validation = validation_data(examples_dir, config, val_date)
    if multi_worker:
        stream = distribute.shard_by_data(stream)
        validation = None if validation is None else distribute.shard_by_data(validation)
    monitor = ("val_auc_skip" if stage == "ranking" else "val_batch_recall_at_50") if validation is not None else None

    callbacks = [
        tf.keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch" if parameter_server else t.backup_every_steps,
                                            delete_checkpoint=True),
        ThroughputLogger(t.batch_size),
        TensorBoardScalars(os.path.join(model_dir, "logs"),
                           every=None if parameter_server else max(1, steps_per_epoch // 20)),
        tf.keras.callbacks.ModelCheckpoint(os.path.join(model_dir, "checkpoints", "epoch-{epoch:02d}", "model"),
                                           save_weights_only=True),
    ]
    if monitor:
        callbacks.append(EarlyStoppingWithState(model_dir, monitor, "max", t.early_stopping_patience))
    callbacks += list(extra_callbacks)
    log(f"training {stage}/{config.model.variant}: {t.epochs} epochs x {steps_per_epoch} steps of {t.batch_size}"
        f" (validation: {t.validation if validation is not None else 'none'}"
        f"{'' if val_date is None else f', date {val_date}'})")
    with examples.read_errors_as_input_errors(examples_dir, "train"):
        history = model.fit(stream, epochs=t.epochs, steps_per_epoch=steps_per_epoch, validation_data=validation,
                            callbacks=callbacks, verbose=2 if parameter_server and verbose == 1 else verbose)
    if int(model._train_counter.numpy()) <= done_steps:
        raise InputError(f"no training batch could be read from {os.path.join(examples_dir, 'train')} "
                         f"(fewer than {t.batch_size} examples, or empty files?)")
    hist = {k: [float(x) for x in v] for k, v in history.history.items()}
    best_dir = os.path.join(model_dir, "best")
    if monitor and tf.train.latest_checkpoint(best_dir):
        model.load_weights(os.path.join(best_dir, "model")).expect_partial()
    save_model_dir(model, config, model_dir)
    _merge_history(model_dir, hist)
    return hist


def _merge_history(model_dir, hist):
    path = os.path.join(model_dir, "history.json")
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    for k, v in hist.items():
        old.setdefault(k, []).extend(v)
    with open(path, "w") as f:
        json.dump(old, f, indent=1)


def clear_model_dir(model_dir):
    """Removes a previous run's state so that ``train`` starts from scratch."""
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
