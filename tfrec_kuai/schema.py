"""The data contract of docs/design.md §3, §4 and §6 in one place, without TensorFlow.

The simulator writes the log columns, the Beam job turns them into labels and example features,
the reader and the models parse those features: all of them import the names from here so that a
renamed column or a new label is changed once. Nothing here imports TensorFlow (the simulator and
the Beam workers must not pay for it); ``data/examples.py`` turns :func:`example_feature_spec` into
``tf.io.FixedLenFeature``\\ s.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

# --- §3: the 19 columns of KuaiRand's log_standard_* / log_random_* files, in file order --------
LOG_COLUMNS = (
    "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow",
    "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms",
    "profile_stay_time", "comment_stay_time", "is_profile_enter", "is_rand", "tab",
)
COLUMN_INDEX = {name: i for i, name in enumerate(LOG_COLUMNS)}
FLAG_COLUMNS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate",
                "long_view", "is_profile_enter", "is_rand")

VIDEO_FEATURE_COLUMNS = (
    "video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status",
    "video_duration", "server_width", "server_height", "music_id", "music_type", "tag",
)

# --- §4: label thresholds ---------------------------------------------------------------------
SKIP_MS = 3000        # a play shorter than min(3 s, duration) is a glance: a skip
VALID_MS = 7000       # KuaiRand's is_click rule
LONG_MS = 18000       # KuaiRand's long_view rule
WATCH_RATIO_CLIP = 5.0

# --- §4: the nine binary labels, which are also the ranking model's nine objectives -----------
BINARY_LABELS = ("skip", "valid", "long", "complete", "like", "follow", "comment", "forward", "hate")
LABEL_NAMES = tuple(f"label_{name}" for name in BINARY_LABELS) + ("label_watch_s", "label_watch_ratio")

# --- §6: history feedback bits: bit i is the i-th binary label (skip 1, valid 2, ..., hate 256) --
FEEDBACK_BITS = OrderedDict((name, 1 << i) for i, name in enumerate(BINARY_LABELS))
# label name -> the log flag it copies (the depth labels are computed, not copied)
FLAG_LABELS = OrderedDict([
    ("like", "is_like"), ("follow", "is_follow"), ("comment", "is_comment"),
    ("forward", "is_forward"), ("hate", "is_hate"),
])
FeatureDesc = namedtuple("FeatureDesc", ["dtype", "shape"])  # dtype: "int64" | "float32"

CONTEXT_INT_FEATURES = ("user_id", "video_id", "author_id", "tag", "hour", "tab", "date", "time_ms",
                        "is_rand")
# The seven per-event sequences of a history window, ``[L]`` each ...
HISTORY_FEATURES = ("hist_video_id", "hist_author_id", "hist_tag", "hist_play_s", "hist_duration_s",
                    "hist_age_s", "hist_feedback")
HISTORY_FLOAT_FEATURES = ("hist_play_s", "hist_duration_s", "hist_age_s")
# ... and what a model reads of the history: those sequences and how many events are real.
HISTORY_INPUTS = HISTORY_FEATURES + ("hist_len",)
ID_PADDING = -1  # 0 is a real KuaiRand id, so padding and "unknown" are -1
VOCAB_FEATURES = ("user_id", "video_id", "author_id", "tag")
# A request's user side besides the history: who, and the request context (hour of day, tab).
USER_CONTEXT_FEATURES = ("user_id", "hour", "tab")
CORPUS_FEATURES = OrderedDict([("video_id", "int64"), ("author_id", "int64"), ("tag", "int64"),
                               ("duration_s", "float32")])


def example_feature_spec(history_length, user_features=()):
    """``{name: FeatureDesc(dtype, shape)}`` of one example (docs/design.md §6), labels included.

    ``user_features`` is a sequence of ``(name, dtype)`` pairs (names already ``user_``-prefixed),
    as recorded in ``metadata.json``.
    """
    L = int(history_length)
    if L < 1:
        raise ValueError(f"history_length must be >= 1, got {L}")
    spec = OrderedDict()
    for name in CONTEXT_INT_FEATURES:
        spec[name] = FeatureDesc("int64", [])
    spec["duration_s"] = FeatureDesc("float32", [])
    for name in HISTORY_FEATURES:
        spec[name] = FeatureDesc("float32" if name in HISTORY_FLOAT_FEATURES else "int64", [L])
    spec["hist_len"] = FeatureDesc("int64", [])
    for name, dtype in user_features:
        if not name.startswith("user_"):
            raise ValueError(f"user feature names start with 'user_': {name!r}")
        spec[name] = FeatureDesc(dtype, [])
    for name in LABEL_NAMES:
        spec[name] = FeatureDesc("float32" if name in ("label_watch_s", "label_watch_ratio") else "int64", [])
    return spec


def serving_feature_names(history_length=50, user_features=()):
    """The §6 names a serving request carries: every example feature except the labels."""
    return tuple(n for n in example_feature_spec(history_length, user_features) if n not in LABEL_NAMES)


SERVING_FEATURE_NAMES = serving_feature_names()


def compute_labels(play_time_ms, duration_ms, flags=None):
    """§4 labels of impressions, vectorised.

    ``play_time_ms``, ``duration_ms``: int arrays (duration > 0, checked by the caller).
    ``flags``: optional ``{log column: array}`` for the copied flags (missing ones are 0).
    Returns ``{label name (without "label_"): array}``; binary labels int64, the two watch labels
    float32.
    """
    play = np.asarray(play_time_ms, dtype=np.int64)
    dur = np.asarray(duration_ms, dtype=np.int64)
    out = OrderedDict()
    out["skip"] = (play < np.minimum(SKIP_MS, dur)).astype(np.int64)
    complete = play >= dur
    out["valid"] = np.where(dur <= VALID_MS, complete, play > VALID_MS).astype(np.int64)
    out["long"] = np.where(dur <= LONG_MS, complete, play >= LONG_MS).astype(np.int64)
    out["complete"] = complete.astype(np.int64)
    for label, column in FLAG_LABELS.items():
        value = None if flags is None else flags.get(column)
        out[label] = np.zeros_like(play) if value is None else (np.asarray(value) != 0).astype(np.int64)
    out["watch_s"] = (play / 1000.0).astype(np.float32)
    out["watch_ratio"] = np.clip(play / np.maximum(dur, 1), 0.0, WATCH_RATIO_CLIP).astype(np.float32)
    return out


def feedback_bits(labels):
    """The §6 ``hist_feedback`` bit set of each impression from :func:`compute_labels` output."""
    bits = np.zeros_like(np.asarray(labels["skip"]), dtype=np.int64)
    for name, bit in FEEDBACK_BITS.items():
        bits |= np.asarray(labels[name], dtype=np.int64) * bit
    return bits


BEIJING_OFFSET_MS = 8 * 3600 * 1000  # KuaiRand's date and hourmin are Beijing time (UTC+8), time_ms is UTC


def local_calendar(time_ms):
    """KuaiRand's ``date`` (YYYYMMDD) and ``hourmin`` (HHMM) of epoch milliseconds, Beijing time."""
    local = (np.asarray(time_ms, np.int64) + BEIJING_OFFSET_MS).astype("datetime64[ms]")
    day = local.astype("datetime64[D]")
    month = local.astype("datetime64[M]")
    year = local.astype("datetime64[Y]").astype(np.int64) + 1970
    date = year * 10000 + (month.astype(np.int64) % 12 + 1) * 100 + (day - month.astype("datetime64[D]")).astype(np.int64) + 1
    ms_of_day = (local - day).astype(np.int64)
    hourmin = (ms_of_day // 3_600_000) * 100 + (ms_of_day // 60_000) % 60
    return date, hourmin
