"""The feature front end shared by the ranking model and the retrieval query tower.

It turns raw §6 features into (a) the target/context vector and (b) the encoded history. Which
parts exist depends on the variant, so that every ablation is the *same code* with one piece
switched off:

* ``full``        — history tokens + feedback network reading feedback *and* context;
* ``no_history``  — no history at all (user id, target and request context only);
* ``no_feedback`` — target attention over the history with bias 0 and gate 1 (DIN-style);
* ``no_context``  — the feedback network sees only the label bits, not play seconds, duration or
  watch ratio;
* ``shared_bottom`` — the full front end; the difference is in the prediction module.
"""
import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai.layers import (AGE_BOUNDARIES, DURATION_BOUNDARIES, BucketEmbedding, FeedbackAwareEncoder,
                               IdEmbedding, ItemEmbedding, ModuloEmbedding, feedback_features, log_duration,
                               target_relation)
from tfrec_kuai.schema import HISTORY_INPUTS, VOCAB_FEATURES



def feature_names(history_length_unused=None, with_history=True):
    """The §6 input names the model reads (labels excluded)."""
    names = ["user_id", "video_id", "author_id", "tag", "hour", "tab", "duration_s"]
    return names + list(HISTORY_INPUTS) if with_history else names


class HistoryEncoder(tf.keras.layers.Layer):
    """Raw history features + a query vector → ``[B, H*Dv]`` via the feedback-aware encoder.

    Tokens are ``item(hist ids) ⊕ (duration-bucket + age-bucket + position)`` embeddings; the
    feedback features come from ``feedback_features`` (with or without context per variant).
    ``call(..., repeat=c)`` shares each user row's history among ``c`` query rows (see ``call``).
    """

    def __init__(self, item_embedding, history_length, context_dim, num_heads, head_dim, value_dim,
                 feedback_hidden, variant, attention_implementation, **kwargs):
        super().__init__(**kwargs)
        self.item_embedding = item_embedding
        self.history_length = int(history_length)
        self.variant = variant
        self.duration_bucket = BucketEmbedding(DURATION_BOUNDARIES, context_dim, name="hist_duration")
        self.age_bucket = BucketEmbedding(AGE_BOUNDARIES, context_dim, name="hist_age")
        self.position = tf.keras.layers.Embedding(
            self.history_length, context_dim, name="hist_position",
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05))
        self.encoder = FeedbackAwareEncoder(num_heads, head_dim, value_dim, feedback_hidden,
                                            use_feedback=variant != "no_feedback",
                                            attention_implementation=attention_implementation, name="encoder")

    def call(self, features, query_input, with_target=True, repeat=1, jit_compile=False):
        """``with_target``: the features hold a target video (ranking) whose relation to each
        history event (same video / author / tag) the feedback network reads; the retrieval query
        tower has no target and passes False.

        ``repeat`` (python int or scalar int tensor, default 1): each user row stands for
        ``repeat`` consecutive query rows — ranking ``C`` candidates for one user without encoding
        the history ``C`` times. The history features (``hist_*``, ``[B_user, L]``; ``hist_len``
        ``[B_user]``) are then per user row, while ``query_input`` (``[B_user * repeat, Dq]``) and
        the target ids (``video_id, author_id, tag``, ``[B_user * repeat]``) are per query row.
        Tokens and the target-independent feedback features are computed once per user row; only
        the relation to the target is per query row (by broadcasting, ``target_relation``). Returns
        ``[B_user * repeat, H*Dv]`` (``H*(Dv+1)`` with the feedback channel).

        ``jit_compile``: run the encoder (everything after the embedding lookups, which XLA cannot
        compile) as one XLA-compiled function. Its attention then always takes the shared-history
        form (``ops.shared_history_attention``; the fused op has no XLA kernel), and the caller
        should keep the set of input shapes small: XLA compiles once per shape (``export.shared_history``
        groups users and pads the candidates to a few sizes).
        """
        hist_ids = {"video_id": features["hist_video_id"], "author_id": features["hist_author_id"],
                    "tag": features["hist_tag"]}
        items = self.item_embedding(hist_ids)                                            # [B_user, L, Di]
        num_positions = tf.shape(items)[1]
        positions = tf.minimum(tf.range(num_positions), self.history_length - 1)
        context = (self.duration_bucket(features["hist_duration_s"]) + self.age_bucket(features["hist_age_s"])
                   + self.position(positions)[tf.newaxis])
        tokens = tf.concat([items, context], -1)                                        # [B_user, L, Dt]
        with_context = self.variant != "no_context"
        # Target-independent, per user row [B_user, L, F]; the encoder repeats what it needs.
        feedback = feedback_features(features["hist_play_s"], features["hist_duration_s"], features["hist_feedback"],
                                     with_context=with_context, age_s=features["hist_age_s"])
        lengths = tf.reshape(features["hist_len"], [-1])                                 # [B_user]
        with_relation = with_context and with_target and self.variant != "no_feedback"
        target_ids = {k: features[k] for k in hist_ids} if with_relation else {}

        def encode(query_input, tokens, feedback, lengths, hist_ids, target_ids):
            # ``repeat`` again from the shapes, so that under XLA it is a compile-time constant.
            rows = tf.shape(query_input)[0] // tf.shape(tokens)[0] if jit_compile else repeat
            relation = target_relation(hist_ids, target_ids) if target_ids else None   # [B, L, 3]
            return self.encoder(query_input, tokens, feedback, lengths, repeat=rows, relation=relation)

        if jit_compile:
            encode = tf.function(encode, jit_compile=True, autograph=False)
        return encode(query_input, tokens, feedback, lengths, hist_ids, target_ids)


def vocabularies_from(vocabularies):
    missing = [k for k in VOCAB_FEATURES if k not in vocabularies]
    if missing:
        raise ValueError(f"vocabularies missing for {missing}")
    return {k: [int(v) for v in vocabularies[k]] for k in VOCAB_FEATURES}


def build_front_end(owner, model_config, vocabularies):
    """Creates the embedding layers and (unless ``no_history``) the history encoder on ``owner``."""
    c = model_config
    owner.item_embedding = ItemEmbedding(vocabularies["video_id"], vocabularies["author_id"], vocabularies["tag"],
                                         c.video_dim, c.author_dim, c.tag_dim, oov_buckets=c.oov_buckets, name="item")
    owner.user_embedding = IdEmbedding(vocabularies["user_id"], c.user_dim, oov_buckets=c.oov_rows("user_id"),
                                       name="user") if c.use_user_id else None
    owner.hour_embedding = ModuloEmbedding(24, c.context_dim, name="hour")
    owner.tab_embedding = ModuloEmbedding(16, c.context_dim, name="tab")
    owner.duration_embedding = BucketEmbedding(DURATION_BOUNDARIES, c.context_dim, name="duration")
    owner.history_encoder = None
    if c.variant != "no_history":
        owner.history_encoder = HistoryEncoder(
            owner.item_embedding, c.history_length, c.context_dim, c.num_heads, c.head_dim, c.value_dim,
            c.feedback_hidden, c.variant, c.attention_implementation, name="history")


def request_context(owner, features):
    """``[B, 2*context_dim]``: hour and tab of the request."""
    return tf.concat([owner.hour_embedding(_flat(features["hour"])), owner.tab_embedding(_flat(features["tab"]))], -1)


def target_vector(owner, features):
    """``[B, Di + context_dim + 1]``: the target item, its duration bucket and log duration."""
    duration = tf.cast(_flat(features["duration_s"]), tf.float32)
    return tf.concat([
        owner.item_embedding({"video_id": _flat(features["video_id"]), "author_id": _flat(features["author_id"]),
                              "tag": _flat(features["tag"])}),
        owner.duration_embedding(duration), log_duration(duration)[:, tf.newaxis]], -1)


def _flat(x):
    """``[B]`` or ``[B, 1]`` → ``[B]`` (serving clients sometimes send a trailing 1)."""
    x = tf.convert_to_tensor(x)
    return tf.reshape(x, [-1]) if x.shape.rank != 1 else x
