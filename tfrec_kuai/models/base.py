"""Shared ``tfrs.models.Model`` behaviour of the ranking and retrieval models."""
import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs


class StaticGraphModel(tfrs.models.Model):
    """A TFRS model whose train/test steps are traced without AutoGraph.

    The models have no data-dependent Python control flow, so AutoGraph's source rewriting buys
    nothing here but costs ~10 s per trace on a 2-core CPU (half of a tiny training run).
    """

    @tf.autograph.experimental.do_not_convert
    def train_step(self, inputs):
        return super().train_step(inputs)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, inputs):
        return super().test_step(inputs)
