"""tfrec-kuai: a short-video recommender that learns from implicit negative feedback.

TensorFlow Recommenders needs Keras 2, so the package selects the legacy Keras (``tf_keras``)
*before* TensorFlow is first imported anywhere in the process. Import ``tfrec_kuai`` before
``tensorflow`` (or set ``TF_USE_LEGACY_KERAS=1`` yourself) to get a consistent Keras.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
