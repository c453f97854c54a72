"""Feature preprocessing layers: raw §6 ids and floats in, dense tensors out.

The model receives *raw* ids (docs/design.md §6) and maps them through vocabularies stored inside the
model (``IntegerLookup``), so a SavedModel is self-contained and a serving client can send an
example's features as they are. Padding ids (−1) and ids the vocabulary lacks map to the
out-of-vocabulary rows (one by default, ``K`` hashed buckets with ``oov_buckets``, see
:class:`IdEmbedding`); padded history positions are never read by the attention anyway.
"""
import math

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai.schema import FEEDBACK_BITS

# Duration buckets (seconds): the skip and watch-ratio behaviour changes fastest for short videos,
# so the boundaries are roughly log-spaced.
DURATION_BOUNDARIES = [3.0, 5.0, 7.0, 10.0, 14.0, 18.0, 25.0, 35.0, 50.0, 70.0, 100.0, 150.0, 240.0, 400.0]
# Event age (seconds before the target impression): minutes, hours, days.
AGE_BOUNDARIES = [30.0, 120.0, 600.0, 1800.0, 3600.0, 3 * 3600.0, 8 * 3600.0, 86400.0, 3 * 86400.0,
                  7 * 86400.0, 30 * 86400.0]
NUM_FEEDBACK_BITS = len(FEEDBACK_BITS)  # bit i is the i-th binary label (docs/design.md §6)


class IdEmbedding(tf.keras.layers.Layer):
    """Raw int64 id → vocabulary index → embedding, any input shape ``S`` → ``S + [dim]``.

    Indices ``0 .. K-1`` are the ``K = oov_buckets`` out-of-vocabulary rows, ``K ..`` follow the
    vocabulary order (most frequent first, as the pipeline writes it; a warm start appends the new
    day's ids after yesterday's, ``copy_rows_from``). An id the vocabulary lacks (one under the
    training's ``min_count`` or past its ``max_vocab_size``, or never seen) goes to bucket
    ``floormod(id, K)``: ``IntegerLookup``'s own rule for ``num_oov_indices = K`` (the stock
    ``FloorMod`` op, so a portable SavedModel stays servable by stock TF Serving), deterministic,
    and spread evenly over the buckets because KuaiRand ids are consecutive integers. With
    ``K = 1`` this is the single OOV row 0. Padding (−1) lands in bucket ``K - 1``; padded history
    positions are never read by the attention (masked by ``hist_len``), so that row's sharing
    with real unknown ids is harmless.

    An empty vocabulary is legal: examples built from the interaction log alone (no video table)
    know no author or tag, and every id then goes to its OOV bucket. ``IntegerLookup`` cannot
    express that (without a vocabulary it waits for ``adapt`` and its table stays uninitialised),
    so no lookup table is made then and the same ``floormod`` is applied directly.
    """

    def __init__(self, vocabulary, dim, embeddings_regularizer=None, oov_buckets=1, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary = [int(v) for v in vocabulary]
        self.dim = int(dim)
        self.oov_buckets = int(oov_buckets)
        if self.oov_buckets < 1:
            raise ValueError(f"{self.name}: oov_buckets must be >= 1, got {self.oov_buckets}")
        self.embeddings_regularizer = embeddings_regularizer
        self.lookup = tf.keras.layers.IntegerLookup(
            vocabulary=tf.constant(self.vocabulary, tf.int64), mask_token=None, num_oov_indices=self.oov_buckets,
            dtype="int64", name="lookup") if self.vocabulary else None
        self.embedding = tf.keras.layers.Embedding(
            self.vocabulary_size, self.dim, name="embedding",
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05),
            embeddings_regularizer=embeddings_regularizer)

    @property
    def vocabulary_size(self):
        """Rows of the table: the OOV buckets and the vocabulary."""
        return len(self.vocabulary) + self.oov_buckets

    def index(self, ids):
        ids = tf.cast(ids, tf.int64)
        if self.lookup is None:
            # every id is out of vocabulary: IntegerLookup's rule without its table
            return tf.math.floormod(ids, self.oov_buckets) if self.oov_buckets > 1 else tf.zeros_like(ids)
        return self.lookup(ids)

    def call(self, ids):
        return self.embedding(self.index(ids))

    def copy_rows_from(self, other):
        """Takes the rows of ``other``, a built ``IdEmbedding`` of the same ``oov_buckets`` whose
        vocabulary is a prefix of this one's: its OOV rows and every id it knows keep their rows,
        ids past the prefix keep the rows this layer was initialised with (a warm start:
        yesterday's table, grown by today's new ids, which the lookup appends after the old ones
        so no old index moves)."""
        n, old = len(self.vocabulary), len(other.vocabulary)
        if self.vocabulary[:old] != other.vocabulary or self.dim != other.dim or \
                self.oov_buckets != other.oov_buckets:
            raise ValueError(f"{self.name}: the vocabulary of {other.name} ({old} ids, dim {other.dim}, "
                             f"{other.oov_buckets} OOV buckets) is not a prefix of this one ({n} ids, dim {self.dim}, "
                             f"{self.oov_buckets} OOV buckets)")
        table = self.embedding.embeddings
        rows = table.numpy()
        rows[:old + self.oov_buckets] = other.embedding.embeddings.numpy()
        table.assign(rows)

    def get_config(self):
        config = super().get_config()
        config.update({"vocabulary": self.vocabulary, "dim": self.dim, "oov_buckets": self.oov_buckets,
                       "embeddings_regularizer": tf.keras.regularizers.serialize(self.embeddings_regularizer)
                       if self.embeddings_regularizer else None})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("embeddings_regularizer"):
            config["embeddings_regularizer"] = tf.keras.regularizers.deserialize(config["embeddings_regularizer"])
        return cls(**config)


def table_bytes(rows, dim):
    """``(weights, with_adam)`` bytes of a float32 ``rows × dim`` table: the weights, and the
    weights with Adam's two slots (first and second moment, each the table's shape)."""
    weights = int(rows) * int(dim) * 4
    return weights, 3 * weights


def format_bytes(n):
    """``n`` bytes with one decimal in the largest binary unit that shows at least 0.1 of it:
    ``336 B``, ``2.0 KiB``, ``0.9 MiB``, ``3.9 GiB`` (bytes as they are under 1 KiB)."""
    if n < 1024:
        return f"{int(n)} B"
    value, unit = n / 1024.0, "KiB"
    for larger in ("MiB", "GiB", "TiB"):
        if value / 1024.0 < 0.1:
            break
        value, unit = value / 1024.0, larger
    return f"{value:.1f} {unit}"


def describe_tables(tables):
    """The training-start line of the id tables: ``tables`` is ``[(name, rows, dim)]``.

    ``embedding tables: video 7,584×32 (0.9 MiB, 2.8 MiB with Adam), ...; total ...``: rows ×
    dim, float32 bytes (:func:`table_bytes`). docs/data.md (*Ids at scale*) tabulates this formula
    for each KuaiRand size.
    """
    parts, total = [], [0, 0]
    for name, rows, dim in tables:
        weights, with_adam = table_bytes(rows, dim)
        total[0] += weights
        total[1] += with_adam
        parts.append(f"{name} {int(rows):,}×{int(dim)} ({format_bytes(weights)}, {format_bytes(with_adam)} with Adam)")
    return (f"embedding tables: {', '.join(parts)}; total {format_bytes(total[0])}, "
            f"{format_bytes(total[1])} with Adam")


class BucketEmbedding(tf.keras.layers.Layer):
    """A float feature bucketed by fixed boundaries, then embedded: shape ``S`` → ``S + [dim]``.

    Bucket ``i`` holds values in ``[boundaries[i-1], boundaries[i])``; ``len(boundaries) + 1``
    buckets in all.
    """

    def __init__(self, boundaries, dim, **kwargs):
        super().__init__(**kwargs)
        self.boundaries = [float(b) for b in boundaries]
        self.dim = int(dim)
        self.embedding = tf.keras.layers.Embedding(
            len(self.boundaries) + 1, self.dim, name="embedding",
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05))

    def bucket(self, x):
        return tf.raw_ops.Bucketize(input=tf.cast(x, tf.float32), boundaries=self.boundaries)

    def call(self, x):
        return self.embedding(self.bucket(x))

    def get_config(self):
        config = super().get_config()
        config.update({"boundaries": self.boundaries, "dim": self.dim})
        return config


class ModuloEmbedding(tf.keras.layers.Layer):
    """A small categorical int (hour of day, tab) embedded after ``floormod(x, num_buckets)``.

    No vocabulary is needed for such features; the modulo keeps any unexpected value in range.
    """

    def __init__(self, num_buckets, dim, **kwargs):
        super().__init__(**kwargs)
        self.num_buckets = int(num_buckets)
        self.dim = int(dim)
        self.embedding = tf.keras.layers.Embedding(
            self.num_buckets, self.dim, name="embedding",
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05))

    def call(self, x):
        return self.embedding(tf.math.floormod(tf.cast(x, tf.int64), self.num_buckets))

    def get_config(self):
        config = super().get_config()
        config.update({"num_buckets": self.num_buckets, "dim": self.dim})
        return config


class ItemEmbedding(tf.keras.layers.Layer):
    """video ⊕ author ⊕ tag embeddings, shared by the target video and the history tokens.

    ``oov_buckets``: ``{feature: K}`` for ``video_id`` / ``author_id`` / ``tag`` (1 where absent).
    Input: dict with ``video_id, author_id, tag`` int64 of any shape ``S``; output ``S + [d]`` with
    ``d = video_dim + author_dim + tag_dim``.
    """

    def __init__(self, video_vocabulary, author_vocabulary, tag_vocabulary, video_dim, author_dim, tag_dim,
                 oov_buckets=None, **kwargs):
        super().__init__(**kwargs)
        self.oov_buckets = {k: int(v) for k, v in (oov_buckets or {}).items()}
        buckets = lambda feature: self.oov_buckets.get(feature, 1)  # noqa: E731
        self.video = IdEmbedding(video_vocabulary, video_dim, oov_buckets=buckets("video_id"), name="video")
        self.author = IdEmbedding(author_vocabulary, author_dim, oov_buckets=buckets("author_id"), name="author")
        self.tag = IdEmbedding(tag_vocabulary, tag_dim, oov_buckets=buckets("tag"), name="tag")
        self.output_dim = int(video_dim) + int(author_dim) + int(tag_dim)

    def call(self, ids):
        return tf.concat([self.video(ids["video_id"]), self.author(ids["author_id"]), self.tag(ids["tag"])], -1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "video_vocabulary": self.video.vocabulary, "author_vocabulary": self.author.vocabulary,
            "tag_vocabulary": self.tag.vocabulary, "video_dim": self.video.dim,
            "author_dim": self.author.dim, "tag_dim": self.tag.dim, "oov_buckets": self.oov_buckets})
        return config


def feedback_features(play_s, duration_s, feedback_bits, with_context=True, age_s=None):
    """What the feedback network reads per history event: ``[B, L]`` each → ``[B, L, F]``.

    With context (the full model): the 9 label bits, ``log1p(play_s)``, ``log1p(duration_s)``, the
    watch ratio clipped to [0, 5] — so a skip of a 5-minute video and a skip of a 6-second one look
    different — and, when ``age_s`` is given, ``log1p(age_s / 60)``, so a run of skips a minute
    ago can weigh more than one last week. Without context (the ``no_context`` variant) only the
    label bits (F = 9).
    """
    bits = tf.cast(feedback_bits, tf.int64)
    flags = tf.cast(tf.bitwise.bitwise_and(bits[..., tf.newaxis],
                                           tf.constant([1 << i for i in range(NUM_FEEDBACK_BITS)], tf.int64)) > 0,
                    tf.float32)
    if not with_context:
        return flags
    play_s = tf.maximum(tf.cast(play_s, tf.float32), 0.0)
    duration_s = tf.maximum(tf.cast(duration_s, tf.float32), 0.0)
    ratio = tf.clip_by_value(tf.math.divide_no_nan(play_s, duration_s), 0.0, 5.0)
    scalars = [tf.math.log1p(play_s), tf.math.log1p(duration_s), ratio]
    if age_s is not None:
        scalars.append(tf.math.log1p(tf.maximum(tf.cast(age_s, tf.float32), 0.0) / 60.0))
    return tf.concat([flags, tf.stack(scalars, -1)], -1)


def target_relation(hist_ids, target_ids):
    """How each history event relates to the target: ``[B, L, 3]`` float indicators.

    Same video, same author, same tag (−1 = unknown never matches). Read by the feedback network
    as part of the event's context: "the user skipped a video *of this author* a minute ago" is
    the evidence that matters for this target, and an attention bias can say so directly instead
    of waiting for query–key similarity to discover it.
    Args: dicts with ``video_id, author_id, tag`` — history ``[B_user, L]``, targets ``[B]`` with
    ``B = B_user · C``: each history row is compared with its ``C`` consecutive targets by
    broadcasting, so ranking ``C`` candidates never copies the history ids ``C`` times.
    """
    names = ("video_id", "author_id", "tag")
    hist = tf.stack([tf.cast(hist_ids[n], tf.int64) for n in names], -1)                # [B_user, L, 3]
    target = tf.stack([tf.reshape(tf.cast(target_ids[n], tf.int64), [-1]) for n in names], -1)   # [B, 3]
    num_positions = tf.shape(hist)[1]
    same = tf.logical_and(tf.equal(hist[:, tf.newaxis], tf.reshape(target, [tf.shape(hist)[0], -1, 1, 3])),
                          (hist >= 0)[:, tf.newaxis])                                   # [B_user, C, L, 3]
    return tf.reshape(tf.cast(same, tf.float32), [-1, num_positions, 3])


def num_feedback_features(with_context=True, with_age=False):
    return NUM_FEEDBACK_BITS + ((4 if with_age else 3) if with_context else 0)


def log_duration(duration_s):
    """A standardised scalar of the target duration: ``(log1p(s) − log1p(30)) / 2``."""
    return (tf.math.log1p(tf.maximum(tf.cast(duration_s, tf.float32), 0.0)) - math.log1p(30.0)) / 2.0
