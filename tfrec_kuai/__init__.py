"""tfrec-kuai: a short-video recommender that learns from implicit negative feedback.

TensorFlow Recommenders needs Keras 2, so the package selects the legacy Keras (``tf_keras``)
*before* TensorFlow is first imported anywhere in the process. Import ``tfrec_kuai`` before
``tensorflow`` (or set ``TF_USE_LEGACY_KERAS=1`` yourself) to get a consistent Keras.

``TF_CPP_MIN_LOG_LEVEL`` defaults to 1 here; whether the user set it is remembered (and passed to
child processes through ``TFREC_KUAI_TF_LOG_DEFAULTED``) so that the commands can quiet
TensorFlow's start-up log without overriding a user's own choice (``tfrec_kuai.quiet``).
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
if "TF_CPP_MIN_LOG_LEVEL" not in _os.environ:
    _os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    _os.environ["TFREC_KUAI_TF_LOG_DEFAULTED"] = "1"

__version__ = "0.1.0"
