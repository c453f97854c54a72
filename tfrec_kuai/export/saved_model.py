"""Export the trained models as one SavedModel in TF Serving's layout (docs/design.md §8).

``<export_base>/<model_name>/<version>/`` holds ``saved_model.pb``, ``variables/``, ``assets/`` and
``assets.extra/tf_serving_warmup_requests``; the version folder is written aside and renamed in,
so a watching server never sees half a version. Signatures (inputs are §6 feature names):

* ``recommend`` (= ``serving_default``): user context + history → the retrieval query, top-K of
  the corpus embeddings (computed at export time), ranked by the ranking model, top-N returned
  with their ids, final scores, retrieval scores and every objective's prediction;
* ``rank``: user context + history + candidate ``video_id, author_id, tag, duration_s`` with a
  candidate axis ``[B, C]`` → every objective and the score, ``[B, C]``;
* ``retrieve``: user context + history → top-K ``video_id`` and ``score``;
* ``recommend_excluding`` / ``retrieve_excluding``: the same with one more input,
  ``exclude_video_id`` int64 ``[B, E]`` (``-1`` pads a row): ids that must not be returned to that
  request row (TF Serving signatures have no optional inputs, so the extra ids get signatures of
  their own and a client of ``recommend`` sends exactly what it did before);
* ``examples``: serialized ``tf.Example`` → ``classes``/``scores`` (the nine objectives), a
  classification signature for Classify / MultiInference; ``examples_score``: serialized
  ``tf.Example`` → ``outputs`` (the ranking score), a regression signature for Regress. (TF
  Serving allows a regression signature exactly one output, so they cannot be one signature.)

**Feed rules** (docs/design.md §8): the four retrieving signatures never return a video of the
request's history (``hist_video_id`` at the positions ``< hist_len``), unless the export was made
with ``exclude_history=False`` (``tfrec-kuai export --no_exclude_history``), nor one of
``exclude_video_id``. Excluded corpus rows get the retrieval score ``-inf`` before the top-K, so
``recommend`` still returns ``top_n`` videos whenever the corpus minus the exclusions holds that
many. Where it holds fewer, the last positions are padding: ``video_id = -1``, ``score`` and
``retrieval_score`` ``-inf``, every objective (and ``watch_s``) 0.

The **portable** variant rebuilds both models with the composite (pure TF) attention, so stock
TF Serving loads it; the default **fused** variant uses the custom op and needs a server that
loads the op library (``serving/``).
"""
import contextlib
import json
import os
import shutil
import tempfile
import time

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from tfrec_kuai import schema

from tfrec_kuai.models.ranking import OUTPUT_NAMES as RANK_OUTPUTS
from tfrec_kuai.schema import (BINARY_LABELS, CORPUS_FEATURES, HISTORY_FEATURES, HISTORY_INPUTS,
                               USER_CONTEXT_FEATURES)

CANDIDATE_FEATURES = tuple(CORPUS_FEATURES)  # a candidate is a corpus row
SIGNATURES = ("serving_default", "recommend", "rank", "retrieve", "recommend_excluding", "retrieve_excluding",
              "examples", "examples_score")
EXCLUDE_INPUT = "exclude_video_id"  # int64 [B, E], -1 pads: the extra ids of the *_excluding signatures


def _dtype(name):
    return tf.float32 if name in ("duration_s",) + schema.HISTORY_FLOAT_FEATURES else tf.int64


def user_specs(history_length):
    """Input specs of the user side (§6 names): request context ``[B]``, history ``[B, L]``."""
    specs = {name: tf.TensorSpec([None], tf.int64, name=name) for name in USER_CONTEXT_FEATURES}
    for name in HISTORY_FEATURES:
        specs[name] = tf.TensorSpec([None, history_length], _dtype(name), name=name)
    specs["hist_len"] = tf.TensorSpec([None], tf.int64, name="hist_len")
    return specs


def exclude_spec():
    """The extra input of ``recommend_excluding`` / ``retrieve_excluding``: ``[B, E]`` ids, -1 padding."""
    return {EXCLUDE_INPUT: tf.TensorSpec([None, None], tf.int64, name=EXCLUDE_INPUT)}


def candidate_specs():
    """Candidate inputs of ``rank``: ``[B, C]``, C candidates per request row."""
    return {name: tf.TensorSpec([None, None], _dtype(name), name=name) for name in CANDIDATE_FEATURES}


class ServingModule(tf.Module):
    """The exported object: both models, the corpus and its embeddings, and the signatures."""

    def __init__(self, ranking_model, retrieval_model, corpus, history_length, top_n=20, retrieve_k=100,
                 lean=True, shared_history=True, xla=False, exclude_history=True):
        super().__init__(name="kuai_serving")
        self.xla = bool(xla)
        self.exclude_history = bool(exclude_history)
        self.lean = bool(lean)
        if lean:
            # Track only what the signatures capture (variables and lookup tables), not the Keras
            # models: saving a Keras model also serializes every layer and metric, 4x slower.
            object.__setattr__(self, "ranking", ranking_model)
            object.__setattr__(self, "retrieval", retrieval_model)
            self.model_variables, self.model_resources = _captured_state([ranking_model, retrieval_model])
        else:
            self.ranking = ranking_model
            self.retrieval = retrieval_model
        self.history_length = int(history_length)
        n = len(corpus["video_id"])
        if n == 0:
            raise ValueError("the corpus is empty: nothing to retrieve")
        self.retrieve_k = int(min(retrieve_k, n))
        self.top_n = int(min(top_n, self.retrieve_k))
        embeddings = _corpus_embeddings(retrieval_model, corpus)
        # Rank with the user's history encoded once per request row when that provably gives the
        # model's own outputs (shared_history.verify); else one full model row per candidate.
        self.shared_history, self.rank_path_note = False, "per-candidate model call"
        # The rank path's functions (one per user group with XLA, one without), each traced once
        # and shared by verify, rank and recommend (shared_history.rank_shared_history).
        object.__setattr__(self, "rank_programs", {})
        if shared_history:
            from tfrec_kuai.export import shared_history
            self.shared_history, self.rank_path_note = shared_history.verify(
                ranking_model, self._rank_rows_plain, corpus, history_length, RANK_OUTPUTS, self.xla,
                programs=self.rank_programs)
        # Non-trainable variables (not constants): they live in variables/, not in the graph proto.
        self.corpus = {name: tf.Variable(np.asarray(corpus[name]), trainable=False, name=f"corpus_{name}")
                       for name in CANDIDATE_FEATURES}
        self.corpus_embeddings = tf.Variable(embeddings, trainable=False, name="corpus_embeddings")
        # The corpus ids sorted, and each one's corpus row: an excluded id finds its row by binary
        # search (plain TF ops, so the portable export and stock TF Serving run it too).
        ids = np.asarray(corpus["video_id"], np.int64)
        order = np.argsort(ids, kind="stable")
        self.corpus_sorted_ids = tf.Variable(ids[order], trainable=False, name="corpus_sorted_ids")
        self.corpus_sorted_rows = tf.Variable(order.astype(np.int64), trainable=False, name="corpus_sorted_rows")
        user = user_specs(self.history_length)
        examples = [tf.TensorSpec([None], tf.string, name="inputs")]
        # No AutoGraph: nothing here (or in the models) has data-dependent Python control flow, and
        # AutoGraph's source rewriting costs seconds per trace on a small CPU.
        function = lambda f, spec: tf.function(f, input_signature=spec, autograph=False)  # noqa: E731
        # Exported as signatures only. A tf.function *attribute* of a saved object is traced once
        # more by tf.saved_model.save (in its saving context) to serialize it as a method: seconds
        # per rank path, for methods no server calls. A plain dict set this way is not tracked.
        object.__setattr__(self, "functions", {
            "rank": function(self._rank, [{**user, **candidate_specs()}]),
            "retrieve": function(self._retrieve, [user]),
            "recommend": function(self._recommend, [user]),
            "retrieve_excluding": function(self._retrieve, [{**user, **exclude_spec()}]),
            "recommend_excluding": function(self._recommend, [{**user, **exclude_spec()}]),
            "examples": function(self._classify_examples, examples),
            "examples_score": function(self._score_examples, examples),
        })

    # -- signatures ------------------------------------------------------------------------------
    def _rank_rows(self, user, candidates):
        """Rank ``[B, C]`` candidates for ``B`` users -> {output: ``[B, C]``}."""
        if self.shared_history:
            from tfrec_kuai.export import shared_history
            return shared_history.rank_shared_history(self.ranking, user, candidates, RANK_OUTPUTS, self.xla,
                                                   self.rank_programs)
        return self._rank_rows_plain(user, candidates)

    def _rank_rows_plain(self, user, candidates):
        """The reference: repeat each user row C times and call the model on every pair."""
        shape = tf.shape(candidates["video_id"])
        b, c = shape[0], shape[1]
        features = {name: tf.repeat(value, c, axis=0) for name, value in user.items()}
        for name in CANDIDATE_FEATURES:
            features[name] = tf.reshape(candidates[name], [-1])
        out = self.ranking(features, training=False)
        return {name: tf.reshape(out[name], [b, c]) for name in RANK_OUTPUTS}

    def _split(self, inputs):
        user = {name: inputs[name] for name in USER_CONTEXT_FEATURES + HISTORY_INPUTS}
        candidates = {name: inputs[name] for name in CANDIDATE_FEATURES if name in inputs}
        return user, candidates

    def _rank(self, inputs):
        user, candidates = self._split(inputs)
        return self._rank_rows(user, candidates)

    def _excluded_ids(self, inputs):
        """``[B, M]`` ids not to return per request row (-1: none), or None when nothing is excluded."""
        parts = []
        if self.exclude_history:
            history = inputs["hist_video_id"]
            valid = tf.range(tf.shape(history, out_type=tf.int64)[1])[None, :] < inputs["hist_len"][:, None]
            parts.append(tf.where(valid, history, tf.constant(-1, tf.int64)))
        if EXCLUDE_INPUT in inputs:
            parts.append(inputs[EXCLUDE_INPUT])
        return tf.concat(parts, 1) if parts else None

    def _excluded_rows(self, ids, batch):
        """``[B, N]`` bool: the corpus rows of ``ids`` (``[B, M]``; -1 and ids not in the corpus match nothing)."""
        n = int(self.corpus_sorted_ids.shape[0])
        m = tf.shape(ids)[1]
        flat = tf.reshape(ids, [1, -1])
        position = tf.minimum(tf.searchsorted(self.corpus_sorted_ids[None, :], flat, out_type=tf.int64)[0], n - 1)
        found = tf.equal(tf.gather(self.corpus_sorted_ids, position), flat[0]) & (flat[0] >= 0)
        rows = tf.gather(self.corpus_sorted_rows, position)
        owner = tf.repeat(tf.range(batch, dtype=tf.int64), m)
        indices = tf.boolean_mask(tf.stack([owner, rows], 1), found)
        hits = tf.scatter_nd(indices, tf.ones(tf.shape(indices)[:1], tf.int32),
                             tf.stack([tf.cast(batch, tf.int64), tf.constant(n, tf.int64)]))
        return hits > 0

    def _top_k(self, user, excluded_ids=None):
        """Top-K corpus rows by retrieval score with the excluded rows at ``-inf`` -> (scores, rows, valid)."""
        query = self.retrieval.query_tower(user)                                   # [B, d]
        scores = tf.matmul(query, self.corpus_embeddings, transpose_b=True)        # [B, N]
        if excluded_ids is None:
            top = tf.math.top_k(scores, k=self.retrieve_k)
            return top.values, top.indices, tf.ones(tf.shape(top.indices), tf.bool)
        excluded = self._excluded_rows(excluded_ids, tf.shape(scores)[0])
        scores = tf.where(excluded, tf.constant(-np.inf, tf.float32), scores)
        top = tf.math.top_k(scores, k=self.retrieve_k)
        return top.values, top.indices, ~tf.gather(excluded, top.indices, batch_dims=1)

    def _retrieve(self, inputs):
        user, _ = self._split(inputs)
        scores, indices, valid = self._top_k(user, self._excluded_ids(inputs))
        video_id = tf.where(valid, tf.gather(self.corpus["video_id"], indices), tf.constant(-1, tf.int64))
        return {"video_id": video_id, "score": scores}

    def _recommend(self, inputs):
        user, _ = self._split(inputs)
        retrieval_scores, indices, valid = self._top_k(user, self._excluded_ids(inputs))   # [B, K]
        candidates = {name: tf.gather(self.corpus[name], indices) for name in CANDIDATE_FEATURES}
        ranked = self._rank_rows(user, candidates)                                 # [B, K] each
        minus_inf = tf.constant(-np.inf, tf.float32)
        ranked["score"] = tf.where(valid, ranked["score"], minus_inf)
        order = tf.math.top_k(ranked["score"], k=self.top_n).indices               # [B, N]
        pick = lambda t: tf.gather(t, order, batch_dims=1)  # noqa: E731
        kept = pick(valid)
        # Padding where fewer than N videos remain: id -1, scores -inf, predictions 0.
        out = {name: tf.where(kept, pick(value), tf.zeros_like(pick(value))) for name, value in ranked.items()}
        out["score"] = pick(ranked["score"])
        out["video_id"] = tf.where(kept, pick(candidates["video_id"]), tf.constant(-1, tf.int64))
        out["retrieval_score"] = pick(retrieval_scores)
        return out

    def _parse(self, serialized):
        spec = parse_spec(self.history_length)
        features = tf.io.parse_example(serialized, spec)
        return features

    def _classify_examples(self, serialized):
        out = self.ranking(self._parse(serialized), training=False)
        n = tf.shape(serialized)[0]
        scores = tf.stack([out[f"p_{o}"] for o in BINARY_LABELS], axis=1)
        classes = tf.tile(tf.constant([list(BINARY_LABELS)]), [n, 1])
        return {"classes": classes, "scores": scores}

    def _score_examples(self, serialized):
        return {"outputs": self.ranking(self._parse(serialized), training=False)["score"]}

    def signatures(self):
        concrete = {name: function.get_concrete_function() for name, function in self.functions.items()}
        return {"serving_default": concrete["recommend"], **concrete}


def _captured_state(models):
    """Every variable and every resource (the vocabulary hash tables) the models' layers own."""
    try:
        from tensorflow.python.trackable.resource import TrackableResource
    except ImportError:  # pragma: no cover - another TF layout: the caller falls back to lean=False
        raise _NotLean("no TrackableResource") from None
    variables, resources, seen = [], [], set()
    for model in models:
        variables.extend(model.variables)
        for layer in model._flatten_layers():
            for value in vars(layer).values():
                if isinstance(value, TrackableResource) and id(value) not in seen:
                    seen.add(id(value))
                    resources.append(value)
    return variables, resources


class _NotLean(Exception):
    pass


def parse_spec(history_length):
    """tf.io.parse_example spec for the ``examples`` signatures: the target video and context are
    required; a missing history means an empty history (padding), as for a new user."""
    L = int(history_length)
    spec = {name: tf.io.FixedLenFeature([], tf.int64) for name in USER_CONTEXT_FEATURES + ("video_id", "author_id", "tag")}
    spec["duration_s"] = tf.io.FixedLenFeature([], tf.float32)
    for name in HISTORY_FEATURES:
        pad = 0.0 if name in schema.HISTORY_FLOAT_FEATURES else (0 if name == "hist_feedback" else schema.ID_PADDING)
        spec[name] = tf.io.FixedLenFeature([L], _dtype(name), default_value=[pad] * L)
    spec["hist_len"] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    return spec


def _corpus_embeddings(retrieval_model, corpus, batch_size=4096):
    parts = []
    n = len(corpus["video_id"])
    for start in range(0, n, batch_size):
        batch = {name: tf.constant(np.asarray(corpus[name][start:start + batch_size]), _dtype(name))
                 for name in CANDIDATE_FEATURES}
        parts.append(retrieval_model.candidate_tower(batch).numpy())
    return np.concatenate(parts, 0).astype(np.float32)


def parse_examples(serialized, history_length):
    """Serialized examples -> {§6 name: ndarray} for the request inputs."""
    parsed = tf.io.parse_example(tf.constant(serialized), parse_spec(history_length))
    return {name: value.numpy() for name, value in parsed.items()}


def user_inputs(features):
    return {name: features[name] for name in USER_CONTEXT_FEATURES + HISTORY_INPUTS}


def rank_inputs(features, candidates):
    """Request for ``rank``: each example's user + the same ``candidates`` (dict of ``[C]``) per row."""
    inputs = user_inputs(features)
    b = len(features["user_id"])
    for name in CANDIDATE_FEATURES:
        inputs[name] = np.tile(np.asarray(candidates[name])[None, :], (b, 1))
    return inputs


# -- warmup --------------------------------------------------------------------------------------
def exclude_inputs(features, exclude_ids):
    """Request for ``*_excluding``: each example's user + the same ``exclude_ids`` (``[E]``) per row."""
    inputs = user_inputs(features)
    b = len(features["user_id"])
    inputs[EXCLUDE_INPUT] = np.tile(np.asarray(exclude_ids, np.int64).reshape(1, -1), (b, 1))
    return inputs


def warmup_logs(model_name, features, serialized, candidates):
    """PredictionLogs for every signature, built from real examples (TF Serving's warmup format)."""
    from tensorflow_serving.apis import (classification_pb2, predict_pb2, prediction_log_pb2,
                                         regression_pb2)
    logs = []

    def predict(signature, inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))

    # One request per user-group size of the XLA rank path (and all the examples), so that every
    # program `recommend` runs is compiled before the version is AVAILABLE.
    from tfrec_kuai.export import shared_history
    count = len(features["user_id"])
    for rows in sorted({g for g in shared_history.USER_GROUPS if g <= count} | {count}):
        head = {k: v[:rows] for k, v in features.items()}
        predict("recommend", user_inputs(head))
        predict("retrieve", user_inputs(head))
        predict("rank", rank_inputs(head, candidates))
        excluded = [int(candidates["video_id"][0]), -1]   # one corpus id and the padding
        predict("recommend_excluding", exclude_inputs(head, excluded))
        predict("retrieve_excluding", exclude_inputs(head, excluded))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = model_name
    classify.model_spec.signature_name = "examples"
    for record in serialized:
        classify.input.example_list.examples.add().ParseFromString(record)
    logs.append(prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=classify)))
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = model_name
    regress.model_spec.signature_name = "examples_score"
    regress.input.CopyFrom(classify.input)
    logs.append(prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=regress)))
    return logs


def _write_warmup(version_dir, logs):
    path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


# -- the export ----------------------------------------------------------------------------------
def next_version(model_base):
    """One more than the largest numeric version folder (1 for a new model); a timestamp never goes back."""
    existing = [int(n) for n in os.listdir(model_base) if n.isdigit()] if os.path.isdir(model_base) else []
    return max(existing, default=0) + 1


@contextlib.contextmanager
def _quiet_keras_saving():
    """Save without tf_keras tracing every layer's call (the signatures are all a server needs):
    several times faster, and no warning per unbuilt metric or task layer."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
        scope = keras_option_scope(save_traces=False, in_tf_saved_model_scope=True)
    except ImportError:  # another tf_keras layout: save with traces, just slower
        scope = contextlib.nullcontext()
    try:
        with scope:
            yield
    finally:
        logger.setLevel(level)


def save_version(module, export_base, model_name="kuai", version=None, warmup=(), extra_info=None):
    """Save ``module`` as ``<export_base>/<model_name>/<version>`` atomically; returns the folder."""
    model_base = os.path.join(os.path.abspath(export_base), model_name)
    os.makedirs(model_base, exist_ok=True)
    version = int(version) if version is not None else next_version(model_base)
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists: versions are immutable, pick a new one")
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_base)
    try:
        with _quiet_keras_saving():
            tf.saved_model.save(module, staging, signatures=module.signatures())
        if warmup:
            _write_warmup(staging, warmup)
        if extra_info is not None:
            os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
            with open(os.path.join(staging, "assets.extra", "export_info.json"), "w") as f:
                json.dump(extra_info, f, indent=2, sort_keys=True)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def export_models(ranking_model, retrieval_model, corpus, history_length, export_base, model_name="kuai",
                  version=None, top_n=20, retrieve_k=100, warmup_serialized=(), extra_info=None, xla=False,
                  exclude_history=True):
    """Build the serving module from model objects and save one version; returns its folder.

    ``xla``: compile the rank path's encoder and prediction part with XLA (``shared_history.rank_shared_history``).
    ``exclude_history``: the feed rule that a request's history videos are never returned.
    """
    def build(lean):
        return ServingModule(ranking_model, retrieval_model, corpus, history_length, top_n, retrieve_k,
                             lean=lean, xla=xla, exclude_history=exclude_history)
    try:
        module = build(lean=True)
    except _NotLean:
        module = build(lean=False)
    logs = []
    if warmup_serialized:
        features = parse_examples(list(warmup_serialized), history_length)
        # As many candidates as recommend ranks: with XLA, the shapes warmup compiles are the ones
        # recommend and a rank of the retrieved candidates use.
        candidates = {name: corpus[name][:module.retrieve_k] for name in CANDIDATE_FEATURES}
        logs = warmup_logs(model_name, features, list(warmup_serialized), candidates)
    info = dict(extra_info or {}, rank_path=module.rank_path_note, xla=module.xla, top_n=module.top_n,
                retrieve_k=module.retrieve_k,
                exclude_history=module.exclude_history, history_length=int(history_length),
                corpus_videos=int(len(corpus["video_id"])),
                signatures=list(SIGNATURES), exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        return save_version(module, export_base, model_name, version, logs, info)
    except (AssertionError, ValueError) as error:
        if "untracked" not in str(error).lower() or not module.lean:
            raise
        # A layer keeps a resource somewhere _captured_state does not look: track the models whole.
        module = build(lean=False)
        return save_version(module, export_base, model_name, version, logs, info)


def export(ranking_dir, retrieval_dir, examples_dir, export_base, portable=False, model_name="kuai", version=None,
           top_n=20, retrieve_k=100, warmup_examples=None, log=None, xla=None,
           exclude_history=True):
    """``tfrec-kuai export``: load both trained models, build the signatures, save one version.

    ``xla`` (None: on unless ``portable``): compile the rank path with XLA (``shared_history``). The
    portable export leaves it off by default because stock TF Serving runs XLA-compiled functions
    only when started with ``--xla_cpu_compilation_enabled``.

    ``exclude_history`` (default on): ``recommend`` and ``retrieve`` leave out the request's history.

    ``warmup_examples`` (None: the largest of ``shared_history.USER_GROUPS``, so that the warmup
    requests reach every group size; 0: no warmup records).
    """
    xla = (not portable) if xla is None else bool(xla)
    import sys
    from tfrec_kuai.data import examples
    from tfrec_kuai.export import shared_history
    from tfrec_kuai.train import training
    if warmup_examples is None:
        warmup_examples = max(shared_history.USER_GROUPS)
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    implementation = "composite" if portable else "fused"
    log(f"[1/4] loading the ranking and retrieval models ({implementation} attention)")
    ranking = training.load_ranking_model(ranking_dir, attention_implementation=implementation)
    retrieval = training.load_retrieval_model(retrieval_dir, attention_implementation=implementation)
    history_length = int(ranking.model_config.history_length)
    if int(retrieval.model_config.history_length) != history_length:
        raise ValueError(f"ranking (L={history_length}) and retrieval (L={retrieval.model_config.history_length}) "
                         "models were trained with different history lengths")
    log("[2/4] reading the corpus and the warmup examples")
    corpus = examples.read_corpus(examples_dir)
    serialized = examples.read_serialized_examples(examples_dir, "eval", warmup_examples) if warmup_examples else []
    log(f"[3/4] embedding {len(corpus['video_id'])} corpus videos, tracing the signatures, saving")
    path = export_models(ranking, retrieval, corpus, history_length, export_base, model_name, version, top_n,
                         retrieve_k, serialized, xla=xla, exclude_history=exclude_history,
                         extra_info={"variant": "portable" if portable else "fused",
                                     "attention_implementation": implementation,
                                     "ranking_dir": os.path.abspath(ranking_dir),
                                     "retrieval_dir": os.path.abspath(retrieval_dir),
                                     "examples": os.path.abspath(examples_dir)})
    log(f"[4/4] wrote {path}")
    return path
