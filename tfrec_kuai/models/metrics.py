"""Retrieval metrics that work with this TensorFlow.

``tfrs.metrics.FactorizedTopK`` builds on Keras metrics and top-k layers whose behaviour changed
across TF releases; the in-batch metric here needs only the score matrix the task already has.
"""
import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf


class BatchRecallAtK(tf.keras.metrics.Mean):
    """Share of queries whose positive candidate ranks in the top ``k`` of the batch's candidates.

    ``update_state(labels [Q, C] one-hot, scores [Q, C], sample_weight [Q])``: the rank of the
    positive is the number of candidates scoring strictly higher, so ties favour the positive (as
    top-k with a stable sort would). Masked candidates carry a very low score and never count.
    """

    def __init__(self, k=50, name=None, **kwargs):
        super().__init__(name=name or f"batch_recall_at_{k}", **kwargs)
        self.k = int(k)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, y_pred.dtype)
        positive = tf.reduce_sum(y_true * y_pred, axis=1, keepdims=True)
        rank = tf.reduce_sum(tf.cast(y_pred > positive, tf.int32), axis=1)
        hit = tf.cast(rank < self.k, tf.float32)
        return super().update_state(hit, sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update({"k": self.k})
        return config
