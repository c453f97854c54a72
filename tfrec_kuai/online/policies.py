"""The policies an A/B arm can run: ``random``, ``popular``, ``logging``, ``oracle`` and
``savedmodel:<export dir>`` and ``served:<model name or export dir>`` (docs/design.md §10).

A model arm may re-rank what ``recommend`` returns with another ranking score:
``savedmodel:<export dir>?watch=1&skip=1&hate=2&engage=1`` orders the returned videos by
``E[watch]^watch · (1 − p_skip)^skip · (1 + engage · Σ w_k p_k) · (1 − p_hate)^hate`` with the
model's own predictions (``w_k``: the configured engagement weights, like 1, follow 2, comment 1,
forward 1). The defaults are the exported blend (:class:`Blend`), so ``?`` alone changes nothing;
``?skip=0&hate=0&engage=0`` orders by ``E[watch]`` alone and ``?watch=0&hate=0&engage=0`` by
``p_skip`` alone. Export with ``--top_n`` equal to ``--retrieve_k`` so that every ranked
candidate comes back to be re-ordered.

A policy answers "the next N videos for these users now" (:class:`tfrec_kuai.sim.world.Page`)
with catalogue indices ``[b, N]`` and, for the log's ``is_rand`` column, which of them were
random exposures. The baselines bracket a model: ``random`` and ``popular`` are what a model must
beat, ``logging`` is the policy that wrote the training log, and ``oracle`` is the upper bound.
Every policy but ``logging`` (the simulator's policy, as it was) leaves out videos the user has
already seen.
"""
from __future__ import annotations

import dataclasses
import os
import urllib.parse
import zlib

import numpy as np

from tfrec_kuai.errors import InputError
from tfrec_kuai.schema import COLUMN_INDEX

KINDS = ("random", "popular", "logging", "oracle", "savedmodel", "served")


def top_unseen(scores, seen, n):
    """Indices of the ``n`` best scores per row among unseen videos, best first (ties: lower index)."""
    scores = np.where(seen, -np.inf, scores)
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)
    return np.take_along_axis(part, order, 1)


class Policy:
    """Base: ``recommend(page) -> (videos [b, size], is_rand [b, size] or None)``."""
    history_length = 0

    def __init__(self, spec, world):
        self.name = spec
        self.world = world
        self.salt = zlib.crc32(spec.encode())

    def page_rng(self, page):
        """The policy's own randomness: seeded by the page, so a rerun is identical."""
        first = int(page.user_ids[0]) if len(page.user_ids) else 0
        return np.random.default_rng([self.world.seed, self.salt, page.day, page.visit, page.position, first])


class RandomPolicy(Policy):
    """Uniformly random unseen videos (KuaiRand's ``is_rand=1`` exposures)."""

    def recommend(self, page):
        seen = page.excluded()
        videos = top_unseen(self.page_rng(page).random(seen.shape), seen, page.size)
        return videos, np.ones(videos.shape, bool)


class PopularPolicy(Policy):
    """The most watched videos of the training log (impressions in the world's log), unseen ones."""

    def __init__(self, spec, world, log_rows):
        super().__init__(spec, world)
        index = world.video_index(log_rows[:, COLUMN_INDEX["video_id"]])
        self.counts = np.bincount(index, minlength=len(world.catalogue.video_id)).astype(np.float64)

    def recommend(self, page):
        seen = page.excluded()
        return top_unseen(np.broadcast_to(self.counts, seen.shape), seen, page.size), None


class LoggingPolicy(Policy):
    """The simulator's logging policy, unchanged: a topic from its blurred belief, a popular video
    of it; a ``random_share`` of uniformly random videos (``is_rand=1``); no exclusion. Its topic
    tables know the catalogue it was fitted on; uploads reach it through the random exposures,
    drawn among every video there that day."""

    def recommend(self, page):
        rng = self.page_rng(page)
        rows = np.repeat(page.cohort.pop_rows[page.rows], page.size)
        is_rand = rng.random(len(rows)) < self.world.params.random_share
        videos = self.world.population.pick_videos(rng, rows, is_rand)
        there = np.flatnonzero(self.world.available(page.day))
        if len(there) > self.world.population.base_videos:      # uploads: random exposures among all
            videos = np.where(is_rand, there[rng.integers(0, len(there), len(rows))], videos)
        return videos.reshape(-1, page.size), is_rand.reshape(-1, page.size)


class OraclePolicy(Policy):
    """The world's truth: the unseen videos of the highest *expected watch seconds* for this user
    now (the behaviour model's closed form at the user's current skip streak). Greedy per page:
    the upper bound of a policy that ranks one impression at a time, not of every possible feed."""

    def recommend(self, page):
        W, A, static = page.cohort.true_utility()
        beh = self.world.beh
        streak = np.minimum(page.streak, beh.streak_cap)[:, None]
        p_skip = 1.0 / (1.0 + np.exp(-(static[page.rows] + beh.skip_streak * streak)))
        expected = W[page.rows] + p_skip * (A[page.rows] - W[page.rows])
        return top_unseen(expected, page.excluded(), page.size), None


def resolve_export(path, kind="savedmodel"):
    """The version folder (with ``saved_model.pb``) that ``path`` names: itself, the newest
    numeric version under it, or the newest version of its single model folder."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise InputError(f"{kind}:{path}: no such folder")
    versions = sorted((int(d) for d in os.listdir(path) if d.isdigit() and
                       os.path.isfile(os.path.join(path, d, "saved_model.pb"))))
    if versions:
        return os.path.join(path, str(versions[-1]))
    models = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
    if len(models) == 1:
        return resolve_export(os.path.join(path, models[0]), kind)
    raise InputError(f"{kind}:{path}: no saved_model.pb in it, in a version folder under it, "
                     "or under its one model folder (expected a `tfrec-kuai export` output)")


@dataclasses.dataclass(frozen=True)
class Blend:
    """The ranking score's exponents and engagement scale (docs/design.md §5); the defaults are
    the exported score's (``ModelConfig.score_*``), so ``Blend()`` re-ranks nothing."""
    watch: float = 1.0
    skip: float = 1.0
    hate: float = 2.0
    engage: float = 1.0

    OUTPUTS = ("watch_s", "p_skip", "p_hate", "p_like", "p_follow", "p_comment", "p_forward")

    @classmethod
    def engage_weights(cls):
        from tfrec_kuai.config import ModelConfig

        return ModelConfig().score_engage_weights

    def score(self, out):
        """``[b, n]`` scores of the returned videos; padding (id −1) at −inf."""
        engage = 1.0 + self.engage * sum(w * out[f"p_{k}"] for k, w in sorted(self.engage_weights().items()))
        watch = np.maximum(out["watch_s"], 0.0)
        score = (watch ** self.watch * (1.0 - out["p_skip"]) ** self.skip * engage
                 * (1.0 - out["p_hate"]) ** self.hate)
        return np.where(out["video_id"] >= 0, score, -np.inf)

    def text(self):
        return f"watch={self.watch:g}&skip={self.skip:g}&hate={self.hate:g}&engage={self.engage:g}"


def split_blend(argument, kind="savedmodel"):
    """``(export dir or model name, Blend or None)`` of a model arm's argument ``WHERE[?QUERY]``."""
    where, sep, query = argument.partition("?")
    if not sep:
        return argument, None
    fields = sorted(f.name for f in dataclasses.fields(Blend))
    expected = f"{kind}:{argument}: expected ?{'&'.join(f + '=X' for f in fields)} with each X a number >= 0 " \
               "at most once"
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise InputError(f"{expected}, got {query!r}") from None
    values = {}
    for key, value in pairs:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if key not in fields or key in values or not np.isfinite(number) or number < 0:
            raise InputError(f"{expected}, got {key}={value!r}")
        values[key] = number
    return where, Blend(**values)


# Model arms call the export's ``recommend_excluding`` with every video the user has seen, so they
# play by the rule of every other policy but ``logging`` (the export alone leaves out only the
# request's last L events; a user re-served what they watched long ago would count as a gain).
SIGNATURE = "recommend_excluding"
EXCLUDE_INPUT = "exclude_video_id"


def seen_ids(world, seen):
    """``[b, E]`` video ids of the ``True`` cells of ``seen`` ([b, V] catalogue mask), −1 padded."""
    counts = seen.sum(1)
    ids = np.full((len(seen), max(int(counts.max(initial=0)), 1)), -1, np.int64)
    rows, cols = np.nonzero(seen)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    ids[rows, slot] = world.catalogue.video_id[cols]
    return ids


class ModelPolicy(Policy):
    """An export's ``recommend_excluding`` signature as a policy: the part every way of calling it shares.

    A subclass says what the signature takes (``input_dtypes``: {input: TensorFlow dtype}, and
    the history length it declares) and how to call it (``call(inputs) -> video ids [b, top-N]``);
    this class builds one request per page for all the page's users from the world's log
    (:class:`~tfrec_kuai.online.requests.RequestBuilder`) and maps the first ``size`` ids back to
    the world's videos. So the in-process and the served arm send the same tensors and read the
    answer the same way, and can only differ by the path between."""

    failed_requests = 0
    blend = None

    @property
    def outputs(self):
        """The ``recommend`` outputs the policy reads: the ids, and what a re-ranking blend needs."""
        return ("video_id",) + (Blend.OUTPUTS if self.blend is not None else ())

    def _set_signature(self, input_dtypes, history_length):
        from tfrec_kuai.online.requests import RequestBuilder

        self.input_dtypes = dict(input_dtypes)
        self.history_length = int(history_length)
        self.requests = RequestBuilder(self.world, self.history_length)

    def inputs(self, page):
        """``{input: numpy array}`` of the page's request, in the signature's dtypes."""
        features = self.requests.build(page)
        features[EXCLUDE_INPUT] = seen_ids(self.world, page.cohort.seen[page.rows])
        missing = sorted(set(self.input_dtypes) - set(features))
        if missing:
            raise InputError(f"{self.name}: the `{SIGNATURE}` signature takes {missing}, which a request "
                             "built from the world's log does not carry")
        return {name: np.asarray(features[name], dtype.as_numpy_dtype) for name, dtype in self.input_dtypes.items()}

    def recommend(self, page):
        out = {name: np.asarray(value) for name, value in self.call(self.inputs(page)).items()}
        ids = out["video_id"]
        if self.blend is not None:
            order = np.argsort(-self.blend.score(out), axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, 1)
        if ids.ndim != 2 or ids.shape[1] < page.size:
            raise InputError(f"{self.name}: the export returns {ids.shape[-1]} videos per request, "
                             f"fewer than --page_size {page.size}")
        return self.world.video_index(ids[:, :page.size].ravel()).reshape(len(ids), page.size), None


class SavedModelPolicy(ModelPolicy):
    """An export's ``recommend_excluding`` signature, loaded in-process."""

    def __init__(self, spec, world, export_dir):
        super().__init__(spec, world)
        export_dir, self.blend = split_blend(export_dir)
        import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
        import tensorflow as tf

        from tfrec_kuai import ops

        self.tf = tf
        self.path = resolve_export(export_dir)
        try:                      # a fused export needs the op registered; a portable one loads without it
            ops.load_op_library()
            op_problem = ""
        except ops.OpLibraryError as error:
            op_problem = f"; {error}"
        try:
            loaded = tf.saved_model.load(self.path)
            self.signature = loaded.signatures[SIGNATURE]
        except (OSError, KeyError, ValueError, RuntimeError, tf.errors.OpError) as error:
            raise InputError(f"savedmodel:{export_dir}: not a loadable export with a `{SIGNATURE}` "
                             f"signature ({type(error).__name__}){op_problem}") from None
        self._loaded = loaded
        specs = self.signature.structured_input_signature[1]
        self._set_signature({name: spec.dtype for name, spec in specs.items()}, specs["hist_video_id"].shape[1])

    def call(self, inputs):
        tf = self.tf
        out = self.signature(**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: out[name].numpy() for name in self.outputs}


def parse_spec(spec):
    """``(kind, argument)`` of an arm's policy spec, or InputError naming what is accepted."""
    kind, _, argument = spec.partition(":")
    if kind not in KINDS or (kind in ("savedmodel", "served")) != bool(argument):
        raise InputError(f"unknown policy {spec!r}: expected random, popular, logging, oracle, "
                         "savedmodel:<export dir> or served:<model name or export dir>")
    if argument:
        split_blend(argument, kind)       # a malformed ?blend is refused with the spec, at parse time
    return kind, argument


def make_policy(spec, world, log_rows, server=None, model_name=None):
    """The arm's policy; a ``served`` one calls ``model_name`` (default: the spec's argument) on
    the gRPC ``server`` address."""
    kind, argument = parse_spec(spec)
    if kind == "served":
        from tfrec_kuai.online.served import ServedPolicy

        if server is None:
            raise InputError(f"{spec}: no server to call (give --server ADDRESS, or served:<export dir>)")
        return ServedPolicy(spec, world, server, model_name or split_blend(argument, kind)[0])
    if kind == "random":
        return RandomPolicy(spec, world)
    if kind == "popular":
        return PopularPolicy(spec, world, log_rows)
    if kind == "logging":
        return LoggingPolicy(spec, world)
    if kind == "oracle":
        return OraclePolicy(spec, world)
    return SavedModelPolicy(spec, world, argument)
