"""The multi-objective ranking model (docs/design.md §5): a ``tfrs.models.Model`` with one
``tfrs.tasks.Ranking`` per objective.

Input: a dict of §6 features with raw ids (``[B]`` scalars, ``[B, L]`` history). Output of
``model(features)``: a dict of ``[B]`` tensors ``p_skip, p_valid, p_long, p_complete, p_like,
p_follow, p_comment, p_forward, p_hate, watch_s, score``.

Prediction module: PLE experts with five task groups — skip, depth (valid/long/complete
conditionals), watch, engage (like/follow/comment/forward), hate — then the cascade for the depth
objectives and the duration-aware watch head. The ``shared_bottom`` variant replaces the experts by
one MLP and the cascade by independent sigmoids.
"""
import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_kuai.config import ModelConfig
from tfrec_kuai.layers import CascadeHeads, CGCLayer, DurationAwareWatchHead, SharedBottom, TaskTower
from tfrec_kuai.models import features as F
from tfrec_kuai.models.base import StaticGraphModel
from tfrec_kuai.schema import BINARY_LABELS

OUTPUT_NAMES = tuple(f"p_{o}" for o in BINARY_LABELS) + ("watch_s", "score")
TASK_GROUPS = ("skip", "depth", "watch", "engage", "hate")
ENGAGE = ("like", "follow", "comment", "forward")


class PLE(tf.keras.layers.Layer):
    """``levels`` stacked CGC extraction layers: ``[B, F]`` → list of ``num_tasks`` ``[B, units]``.

    Every level but the last also emits the shared experts' mix, which feeds the next level's
    shared experts (Tang et al., 2020), so the shared and task-specific parts separate
    progressively; the depth matches the shared-bottom baseline's two layers.
    """

    def __init__(self, num_tasks, num_shared_experts, num_task_experts, units, levels=2, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks, self.levels = int(num_tasks), int(levels)
        self.num_shared_experts, self.num_task_experts, self.units = num_shared_experts, num_task_experts, units
        self.cgc = [CGCLayer(num_tasks, num_shared_experts, num_task_experts, units,
                             output_shared=i < self.levels - 1, name=f"level{i}") for i in range(self.levels)]

    def call(self, x):
        for layer in self.cgc:
            x = layer(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"num_tasks": self.num_tasks, "num_shared_experts": self.num_shared_experts,
                       "num_task_experts": self.num_task_experts, "units": self.units, "levels": self.levels})
        return config


class RankingModel(StaticGraphModel):
    """Multi-objective ranking over the feedback-aware user representation."""

    def __init__(self, model_config: ModelConfig, vocabularies, **kwargs):
        super().__init__(**kwargs)
        self.model_config = model_config.validate()
        self.vocabularies = F.vocabularies_from(vocabularies)
        c = self.model_config
        F.build_front_end(self, c, self.vocabularies)
        if c.variant == "shared_bottom":
            self.bottom = SharedBottom(len(TASK_GROUPS), c.bottom_units, name="shared_bottom")
        else:
            self.bottom = PLE(len(TASK_GROUPS), c.num_shared_experts, c.num_task_experts, c.expert_units,
                              c.ple_levels, name="ple")
        self.skip_tower = TaskTower(c.tower_units, 1, name="skip_tower")
        self.depth_tower = TaskTower(c.tower_units, 3, name="depth_tower")
        self.engage_tower = TaskTower(c.tower_units, len(ENGAGE), name="engage_tower")
        self.hate_tower = TaskTower(c.tower_units, 1, name="hate_tower")
        self.cascade = CascadeHeads(cascade=c.variant != "shared_bottom", name="cascade")
        self.watch_head = DurationAwareWatchHead(c.tower_units, name="watch_head")
        # Losses are summed per replica and divided by the *global* batch in compute_loss: the
        # mean over the batch on one replica, and the correct gradient under tf.distribute (TFRS'
        # train_step sums the replicas' gradients and Keras forbids averaging reductions there).
        self.tasks = {}
        for obj in BINARY_LABELS:
            self.tasks[obj] = tfrs.tasks.Ranking(
                loss=tf.keras.losses.BinaryCrossentropy(reduction=tf.keras.losses.Reduction.SUM),
                metrics=[tf.keras.metrics.AUC(name=f"auc_{obj}", num_thresholds=1000)], name=f"task_{obj}")
        self.tasks["watch"] = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.SUM),
            metrics=[tf.keras.metrics.MeanAbsoluteError(name="mae_ratio")], name="task_watch")

    def features_vector(self, features, training=False):
        """``[B, F]``: user ⊕ target ⊕ request context ⊕ encoded history."""
        target = F.target_vector(self, features)
        context = F.request_context(self, features)
        parts = [target, context]
        if self.user_embedding is not None:
            parts.append(self.user_embedding(F._flat(features["user_id"])))
        if self.history_encoder is not None:
            parts.append(self.history_encoder(features, tf.concat([target, context], -1)))
        return tf.concat(parts, -1)

    def predict_all(self, features, training=False):
        """Every prediction, including ``watch_ratio`` (what the watch task is trained on)."""
        return self.predictions(self.features_vector(features, training), F._flat(features["duration_s"]))

    def predictions(self, x, duration_s):
        """Everything after ``features_vector``: ``x`` ``[B, F]`` and ``duration_s`` ``[B]`` → outputs.

        Row-wise (no op mixes rows), so a caller may pad rows and slice the outputs back; the
        export compiles this part with XLA (``export.shared_history``).
        """
        skip_in, depth_in, watch_in, engage_in, hate_in = self.bottom(x)
        logits = tf.concat([self.skip_tower(skip_in), self.depth_tower(depth_in)], -1)
        out = dict(self.cascade(logits))
        engage = tf.sigmoid(self.engage_tower(engage_in))
        for i, name in enumerate(ENGAGE):
            out[f"p_{name}"] = engage[:, i]
        out["p_hate"] = tf.sigmoid(self.hate_tower(hate_in)[:, 0])
        conditional = self.cascade.cascade
        out["watch_ratio"], out["watch_s"] = self.watch_head(watch_in, duration_s,
                                                             out["p_skip"] if conditional else None)
        out["score"] = self.blend_score(out)
        return out

    def blend_score(self, out):
        """E[watch] · (1 − p_skip)^a · (1 + Σ w·p_engage) · (1 − p_hate)^b (docs/design.md §5)."""
        c = self.model_config
        engage = 1.0 + tf.add_n([w * out[f"p_{k}"] for k, w in sorted(c.score_engage_weights.items())]
                                or [tf.zeros_like(out["p_skip"])])
        return (out["watch_s"] * tf.pow(1.0 - out["p_skip"], c.score_skip_exponent) * engage
                * tf.pow(1.0 - out["p_hate"], c.score_hate_exponent))

    def call(self, features, training=False):
        out = self.predict_all(features, training)
        return {k: out[k] for k in OUTPUT_NAMES}

    def compute_loss(self, features, training=False):
        out = self.predict_all(features, training)
        weights = self.model_config.loss_weights
        losses = []
        for obj in BINARY_LABELS:
            label = tf.cast(F._flat(features[f"label_{obj}"]), tf.float32)
            # [B, 1]: Keras' cross-entropy averages the last axis; with [B] it would return the batch
            # mean, and the SUM reduction + division by the global batch below would divide twice.
            losses.append(weights.get(obj, 0.0) * self.tasks[obj](labels=label[:, tf.newaxis],
                                                                  predictions=out[f"p_{obj}"][:, tf.newaxis]))
        ratio = tf.clip_by_value(tf.cast(F._flat(features["label_watch_ratio"]), tf.float32), 0.0, 5.0)
        # With the cascade the ratio head is conditional on "not skipped": train it on those rows.
        watch_weight = (1.0 - tf.cast(F._flat(features["label_skip"]), tf.float32)) if self.cascade.cascade else None
        # [B, 1]: Keras' MSE averages the last axis, so per-row weights need a trailing axis.
        losses.append(weights.get("watch", 0.0) * self.tasks["watch"](
            labels=ratio[:, tf.newaxis], predictions=out["watch_ratio"][:, tf.newaxis], sample_weight=watch_weight))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.cast(tf.shape(ratio)[0] * replicas, tf.float32)
        return tf.math.divide_no_nan(tf.add_n(losses), global_batch)
