"""Prediction heads: the depth cascade and the duration-aware watch-time head (docs/design.md §5).

Skip, effective view, long view and complete play are nested depths of one behaviour (every
complete play is a long view, every long view an effective view, no effective view is a skip), so
the cascade predicts *conditional* probabilities and multiplies them:

    p_skip, p_valid = (1 − p_skip)·c_valid, p_long = p_valid·c_long, p_complete = p_long·c_complete

which makes ``p_complete ≤ p_long ≤ p_valid ≤ 1 − p_skip`` hold by construction — a ranking never
sees a video that is "likely completed but unlikely watched".
"""
import math

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai.layers.embeddings import log_duration

CASCADE_OUTPUTS = ("p_skip", "p_valid", "p_long", "p_complete")
SKIP_SECONDS = 3.0   # docs/design.md §4: a play shorter than min(3 s, duration) is a skip


class CascadeHeads(tf.keras.layers.Layer):
    """Four logits → the nested depth probabilities.

    Call: ``logits`` ``[B, 4]`` = (skip, valid | not skip, long | valid, complete | long).
    Returns a dict of ``[B]`` tensors ``p_skip, p_valid, p_long, p_complete``.
    With ``cascade=False`` (the ``shared_bottom`` ablation) each is an independent sigmoid.
    The products are taken in log space (``log_sigmoid``) so tiny probabilities stay exact.
    """

    def __init__(self, cascade=True, **kwargs):
        super().__init__(**kwargs)
        self.cascade = bool(cascade)

    def call(self, logits):
        s, a, b, c = (logits[:, i] for i in range(4))
        if not self.cascade:
            return dict(zip(CASCADE_OUTPUTS, (tf.sigmoid(s), tf.sigmoid(a), tf.sigmoid(b), tf.sigmoid(c))))
        log_valid = tf.math.log_sigmoid(-s) + tf.math.log_sigmoid(a)
        log_long = log_valid + tf.math.log_sigmoid(b)
        log_complete = log_long + tf.math.log_sigmoid(c)
        return {"p_skip": tf.sigmoid(s), "p_valid": tf.exp(log_valid), "p_long": tf.exp(log_long),
                "p_complete": tf.exp(log_complete)}

    def get_config(self):
        config = super().get_config()
        config.update({"cascade": self.cascade})
        return config


class DurationAwareWatchHead(tf.keras.layers.Layer):
    """Expected watch time from a watch *ratio* times the known duration, not raw seconds.

    Raw seconds are dominated by duration: a regressor on seconds learns "long videos are watched
    longer" and ranks by length. Here the network predicts a ratio (softplus, ≥ 0) from the task
    features and the log duration, and multiplies by the duration.

    With ``p_skip`` (the cascade variants) the ratio is the one *given the video is not skipped*
    and the expectation is completed exactly by the skip definition (docs/design.md §4: a skip plays less
    than ``min(3 s, d)``, on average half of it):

        watch_s = p_skip · min(3, d) / 2 + (1 − p_skip) · ratio_not_skipped · d

    so the watch-time ranking inherits the skip head's accuracy — on short-video logs most of the
    pairwise watch-time order is "skipped vs watched". Train the ratio on non-skipped rows only.
    Without ``p_skip`` (``shared_bottom``): ``watch_s = ratio · d``, ratio trained on every row.

    Call: ``hidden`` ``[B, U]``, ``duration_s`` ``[B]``, optional ``p_skip`` ``[B]``.
    Returns ``(watch_ratio [B], watch_s [B])``.
    """

    def __init__(self, units=32, initial_ratio=0.5, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.initial_ratio = float(initial_ratio)
        self.hidden = tf.keras.layers.Dense(self.units, activation="relu", name="hidden")
        self.out = tf.keras.layers.Dense(1, name="ratio_logit", bias_initializer=tf.keras.initializers.Constant(
            math.log(math.expm1(self.initial_ratio))))

    def call(self, hidden, duration_s, p_skip=None):
        duration_s = tf.maximum(tf.cast(duration_s, tf.float32), 0.0)
        x = tf.concat([hidden, log_duration(duration_s)[:, tf.newaxis]], -1)
        ratio = tf.nn.softplus(self.out(self.hidden(x))[:, 0])
        if p_skip is None:
            return ratio, ratio * duration_s
        skipped_s = tf.minimum(duration_s, SKIP_SECONDS) / 2.0
        return ratio, p_skip * skipped_s + (1.0 - p_skip) * ratio * duration_s

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "initial_ratio": self.initial_ratio})
        return config


class TaskTower(tf.keras.layers.Layer):
    """A task's small MLP on its PLE output → ``num_outputs`` logits ``[B, num_outputs]``."""

    def __init__(self, units=32, num_outputs=1, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.num_outputs = int(num_outputs)
        self.hidden = tf.keras.layers.Dense(self.units, activation="relu", name="hidden")
        self.out = tf.keras.layers.Dense(self.num_outputs, name="logits")

    def call(self, x):
        return self.out(self.hidden(x))

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "num_outputs": self.num_outputs})
        return config
