"""The optimizers ``train.optimizer`` names, and a lazy Adam for embedding tables.

Why a lazy Adam: tf-keras's ``Adam`` handles a sparse (``IndexedSlices``) gradient — what an
embedding lookup produces — by still decaying both moment slots over the *whole* table and
updating the *whole* variable (``tf_keras/src/optimizers/adam.py``, its ``IndexedSlices``
branch), so each step costs three passes over every embedding table: O(table rows), not O(ids in
the batch). On the KuaiRand-Pure catalogue (7,584 videos) that is cheap; on a 4.4 M-video
catalogue it makes a training step several times slower (benchmarks/RESULTS.md, *Fused and
composite fits*). The lazy variant — the rule of TensorFlow Addons' ``LazyAdam`` (an archived
project, not built for this TensorFlow) and of PyTorch's ``SparseAdam`` — updates, for a sparse
gradient, only the rows the batch touched: their two moments and their weights, with the global
step's bias correction. Rows the batch did not touch keep their weights and moments until an id
of theirs comes back. Dense variables (every non-embedding weight) get exactly Adam's update.

``LazyAdam`` keeps Adam's slot variables (``m``, ``v``) and their order, so checkpoints,
``BackupAndRestore`` and resumption work as with Adam.
"""
import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai.config import OPTIMIZERS


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam whose sparse-gradient step touches only the gathered rows (the module docstring says why).

    Args:
      learning_rate, beta_1, beta_2, epsilon, **kwargs: as ``tf.keras.optimizers.Adam``; ``amsgrad``
        is not offered (its running maximum would need the whole table again).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="LazyAdam", **kwargs):
        if kwargs.pop("amsgrad", False):
            raise ValueError("LazyAdam does not implement amsgrad")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=False, name=name, **kwargs)

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        # The base class has already summed duplicate indices (``_deduplicate_sparse_grad``),
        # so each row below is gathered and scattered once.
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon

        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        rows, values = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))


def make_optimizer(name, learning_rate):
    """The Keras optimizer ``train.optimizer`` names: ``adam`` (tf-keras's) or ``lazy_adam``."""
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    if name == "lazy_adam":
        return LazyAdam(learning_rate)
    raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
