"""The two-tower retrieval model (docs/design.md §5) on ``tfrs.tasks.Retrieval``.

* ``query_tower(features) -> [B, d]``: user id, request context and the user's history through
  the same feedback-aware encoder as the ranking model, with a learned (user- and context-
  conditioned) query in place of the target.
* ``candidate_tower({video_id, author_id, tag, duration_s}) -> [B, d]``: the video. It shares the
  item embedding with the history tokens, so history and candidates live in one space.

Both outputs are L2-normalised; scores are cosines divided by a temperature.

Training (``compute_loss``) uses effective views (``label_valid``) as positives:

* in-batch negatives are the other positives' videos, which are drawn proportionally to their
  popularity — the **logQ correction** subtracts ``log q(video)`` (q = the video's share of the
  training impressions, a non-trainable weight set by ``set_candidate_probabilities``) so the
  model learns relevance instead of popularity;
* **skips serve as hard negatives**: each query also scores the videos its user most recently
  skipped (from the history, so no future information), masked so that a query only sees its own
  user's skips.
"""
import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_kuai.config import ModelConfig
from tfrec_kuai.layers import BucketEmbedding, DURATION_BOUNDARIES, log_duration
from tfrec_kuai.models import features as F
from tfrec_kuai.models.metrics import BatchRecallAtK
from tfrec_kuai.schema import CORPUS_FEATURES

NUM_HARD_NEGATIVES = 4
SKIP_BIT = 1


class QueryTower(tf.keras.layers.Layer):
    """Raw user features + history → ``[B, d]`` unit vectors."""

    def __init__(self, owner, model_config, **kwargs):
        super().__init__(**kwargs)
        c = model_config
        # The shared front-end layers live on the owner (the model); referencing them here makes
        # the tower callable on its own (the serving engineer calls ``model.query_tower``).
        self.user_embedding = owner.user_embedding
        self.hour_embedding = owner.hour_embedding
        self.tab_embedding = owner.tab_embedding
        self.history_encoder = owner.history_encoder
        self.mlp = [tf.keras.layers.Dense(u, activation="relu", name=f"dense{i}")
                    for i, u in enumerate(c.bottom_units)]
        self.out = tf.keras.layers.Dense(c.embedding_dim, name="out")

    def call(self, features):
        context = F.request_context(self, features)
        parts = [context]
        if self.user_embedding is not None:
            parts.append(self.user_embedding(F._flat(features["user_id"])))
        query_input = tf.concat(parts, -1)
        if self.history_encoder is not None:
            parts.append(self.history_encoder(features, query_input, with_target=False))
        x = tf.concat(parts, -1)
        for layer in self.mlp:
            x = layer(x)
        return tf.math.l2_normalize(self.out(x), axis=-1)


class CandidateTower(tf.keras.layers.Layer):
    """``{video_id, author_id, tag, duration_s}`` (any leading shape ``S``) → ``S + [d]`` unit vectors."""

    def __init__(self, owner, model_config, **kwargs):
        super().__init__(**kwargs)
        c = model_config
        self.item_embedding = owner.item_embedding
        self.duration_embedding = BucketEmbedding(DURATION_BOUNDARIES, c.context_dim, name="duration")
        self.hidden = tf.keras.layers.Dense(c.bottom_units[-1], activation="relu", name="hidden")
        self.out = tf.keras.layers.Dense(c.embedding_dim, name="out")

    def call(self, features):
        duration = tf.cast(features["duration_s"], tf.float32)
        x = tf.concat([
            self.item_embedding({"video_id": features["video_id"], "author_id": features["author_id"],
                                 "tag": features["tag"]}),
            self.duration_embedding(duration), log_duration(duration)[..., tf.newaxis]], -1)
        return tf.math.l2_normalize(self.out(self.hidden(x)), axis=-1)


class RetrievalModel(tfrs.models.Model):
    """Two towers trained with ``tfrs.tasks.Retrieval`` (logQ correction, skip hard negatives).

    Unlike the ranking model its steps keep AutoGraph: ``tfrs.tasks.Retrieval`` calls ``len()`` on
    a tensor shape, which only traces through AutoGraph's conversion.
    """

    def __init__(self, model_config: ModelConfig, vocabularies, recall_k=(10, 50), **kwargs):
        super().__init__(**kwargs)
        self.model_config = model_config.validate()
        self.vocabularies = F.vocabularies_from(vocabularies)
        c = self.model_config
        F.build_front_end(self, c, self.vocabularies)
        self.query_tower = QueryTower(self, c, name="query_tower")
        self.candidate_tower = CandidateTower(self, c, name="candidate_tower")
        # q(video) indexed like the video table (its OOV buckets first); uniform until set.
        n = self.item_embedding.video.vocabulary_size
        self.candidate_probability = self.add_weight(
            "candidate_probability", [n], trainable=False,
            initializer=tf.keras.initializers.Constant(1.0 / n))
        self.task = tfrs.tasks.Retrieval(
            temperature=c.temperature, remove_accidental_hits=True,
            batch_metrics=[BatchRecallAtK(k) for k in recall_k])

    def set_candidate_probabilities(self, counts_by_video_id):
        """Sets q from impression counts ``{raw video_id: count}`` (add-one smoothed)."""
        video = self.item_embedding.video
        counts = np.ones(video.vocabulary_size, np.float64)
        ids = np.array([int(v) for v in counts_by_video_id], np.int64)
        if len(ids):   # the table's own lookup: an id out of vocabulary counts for its OOV bucket
            np.add.at(counts, video.index(tf.constant(ids)).numpy(),
                      np.array([float(c) for c in counts_by_video_id.values()]))
        self.candidate_probability.assign((counts / counts.sum()).astype(np.float32))

    def call(self, features):
        return self.query_tower(features)

    def compute_loss(self, features, training=False):
        c = self.model_config
        query = self.query_tower(features)                                           # [B, d]
        video_id = F._flat(features["video_id"])
        positives = self.candidate_tower({"video_id": video_id, "author_id": F._flat(features["author_id"]),
                                          "tag": F._flat(features["tag"]),
                                          "duration_s": F._flat(features["duration_s"])})  # [B, d]
        batch = tf.shape(query)[0]
        is_positive = tf.cast(F._flat(features["label_valid"]), tf.bool)
        sample_weight = tf.cast(is_positive, tf.float32)
        # Only positives are candidates; a query always keeps its own positive (the diagonal).
        mask = tf.logical_or(is_positive[tf.newaxis, :], tf.eye(batch, dtype=tf.bool))
        candidates, ids = positives, video_id
        probability = tf.gather(self.candidate_probability, self.item_embedding.video.index(video_id))
        if not c.logq_correction:
            probability = tf.ones_like(probability)
        if c.skip_hard_negatives and self.history_encoder is not None:
            k = NUM_HARD_NEGATIVES
            hard, hard_valid = _recent_skips(features, k)                              # dict [B, k], [B, k]
            hard_embeddings = tf.reshape(self.candidate_tower(hard), [-1, c.embedding_dim])
            candidates = tf.concat([positives, hard_embeddings], 0)                     # [B + B*k, d]
            ids = tf.concat([video_id, tf.reshape(hard["video_id"], [-1])], 0)
            # Query i may only see row i's own skips: a block-diagonal mask.
            own = tf.repeat(tf.eye(batch, dtype=tf.bool), k, axis=1) & tf.reshape(hard_valid, [1, -1])
            mask = tf.concat([mask, own], 1)
            # A hard negative was not sampled from the popularity distribution: no correction.
            probability = tf.concat([probability, tf.ones([batch * k])], 0)
        return self.task(query, candidates, sample_weight=sample_weight, candidate_sampling_probability=probability,
                         candidate_ids=ids, compute_metrics=not training, compute_batch_metrics=True,
                         score_mask=mask)


def _recent_skips(features, k):
    """The ``k`` most recent skipped history events per row (newest first): ids and a validity mask."""
    bits = tf.cast(features["hist_feedback"], tf.int64)
    num_positions = tf.shape(bits)[1]
    lengths = tf.reshape(tf.cast(features["hist_len"], tf.int32), [-1])
    in_history = tf.sequence_mask(lengths, num_positions)
    skipped = in_history & (tf.bitwise.bitwise_and(bits, SKIP_BIT) > 0)
    # Positions of skipped events first (stable, so newest first), then the rest.
    order = tf.argsort(tf.cast(tf.logical_not(skipped), tf.int32), axis=1, stable=True)
    pad = tf.maximum(k - num_positions, 0)
    order = tf.pad(order, [[0, 0], [0, pad]])[:, :k]
    valid = tf.pad(tf.gather(skipped, order, batch_dims=1), [[0, 0], [0, 0]])
    valid = valid & (tf.range(k) < num_positions)[tf.newaxis]
    hard = {name: tf.gather(features[f"hist_{name}"], order, batch_dims=1)
            for name in CORPUS_FEATURES}
    return hard, valid
