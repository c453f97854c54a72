"""TensorFlow's C++ start-up notices kept off a command's stderr.

Importing TensorFlow prints, on every run, notices that say nothing about the user's job: the
oneDNN numerics notice, "Could not find cuda drivers", ``failed call to cuInit`` on a machine
without a GPU, abseil's "All log messages before absl::InitializeLog()". ``TF_CPP_MIN_LOG_LEVEL``
does not reach most of them — they are written before TensorFlow initialises its logging, and
abseil then writes everything — so the entry points import TensorFlow (and let it find its
devices, which is when ``cuInit`` complains) with the process' stderr captured, and write back
every captured line except those notices. Anything else, including a Python error, comes back.

Kept quiet unless the user asked otherwise: a ``TF_CPP_MIN_LOG_LEVEL`` of the user's own, or the
command's ``--verbose``, leaves TensorFlow as it is.
"""
import contextlib
import os
import re
import sys
import tempfile

QUIET_LEVEL = "3"
# The start-up notices, as TensorFlow 2.21 and its CUDA stubs write them.
NOISE = re.compile(
    rb"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|oneDNN custom operations are on"
    rb"|cudart_stub\.cc.*Could not find cuda drivers"
    rb"|failed call to cuInit"
    rb"|Unable to register cu(DNN|FFT|BLAS) factory"
    rb"|computation placer already registered"
    rb"|cpu_feature_guard\.cc.*(optimized to use available CPU instructions|rebuild TensorFlow)")


def user_chose_log_level(environ=os.environ):
    """Whether ``TF_CPP_MIN_LOG_LEVEL`` is the user's (not the default ``tfrec_kuai`` set)."""
    return "TF_CPP_MIN_LOG_LEVEL" in environ and environ.get("TFREC_KUAI_TF_LOG_DEFAULTED") != "1"


@contextlib.contextmanager
def filtered_stderr(pattern=NOISE):
    """Captures file descriptor 2 (C++ and Python writes alike) and writes back every line that
    does not match ``pattern`` when the block ends, also when it raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured:
                if not pattern.search(line):
                    os.write(2, line)


def quiet_log_level(verbose=False):
    """Sets the quiet ``TF_CPP_MIN_LOG_LEVEL`` (inherited by child processes) unless ``verbose`` or
    the user chose a level; whether it did. For entry points that may never import TensorFlow
    (the Beam job), so need not pay for the import :func:`quiet_tensorflow` makes."""
    if verbose or user_chose_log_level():
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_LEVEL
    os.environ["TFREC_KUAI_TF_LOG_DEFAULTED"] = "1"
    return True


def quiet_tensorflow(verbose=False):
    """Imports TensorFlow without its start-up notices (see the module docstring); with
    ``verbose`` or a user's ``TF_CPP_MIN_LOG_LEVEL`` it changes nothing. Child processes inherit
    the quiet level."""
    if not quiet_log_level(verbose):
        return
    if "tensorflow" in sys.modules:
        return
    import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
    with filtered_stderr():
        import tensorflow as tf
        tf.config.list_physical_devices()
