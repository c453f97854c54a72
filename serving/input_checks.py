"""What a request's values must satisfy before a model runs them.

The shapes and dtypes of a request are checked against the SignatureDef
(``servable.Signature.validate``); this module checks the *values*, because a value the model
was never meant to see does not fail, it poisons the answer: one NaN in ``hist_play_s`` makes
every score NaN with status OK, ``duration_s = 1e30`` wins every ranking, ``hist_len = 2**32+5``
is read as 5 after the model's int32 cast. Two kinds of rules, both vectorised NumPy
(O(elements), one pass per rule, no per-element Python):

* inputs named as the example features of docs/design.md §6 (the names the exported ``recommend``,
  ``rank`` and ``retrieve`` signatures take) must lie in the range the data contract gives them:
  float features finite and in [0, a bound] (NaN / ±inf / 1e30 → INVALID_ARGUMENT naming the
  input), ids >= -1, ``hist_feedback`` a set of the nine bits, ``hist_len`` in [0, L] with L read
  from the signature's own history inputs (``[?, L]``). A value outside is refused, never
  clamped, so a client learns its feed is broken;
* inputs of other names (any other SavedModel) pass as in TF Serving: a model may give NaN a
  meaning of its own.

The rules live in the server, not in the exported graph, so they hold for the portable and the
fused export alike and on every transport (both gRPC transports and REST reach
``Signature.validate``).
"""
import numpy as np

from serving.errors import invalid_argument

ID_PADDING = -1  # docs/design.md §6: -1 pads the history and stands for an unknown tag / author

# §6 id features: >= -1. A non-negative id the vocabularies do not know is out-of-vocabulary
# (the model embeds it as such); -1 is padding in the history and "unknown" for a target.
ID_FEATURES = ("user_id", "video_id", "author_id", "tag", "hist_video_id", "hist_author_id", "hist_tag",
               "exclude_video_id")  # the extra ids of recommend_excluding / retrieve_excluding (-1 pads)

# §6 seconds, [0, upper]. KuaiRand's videos last seconds to minutes; a day of play time (replays
# included) or of duration is far beyond any real row, and 1e30 is a broken feed, not a video.
MAX_SECONDS = 86_400.0
MAX_AGE_SECONDS = 10 * 366 * 86_400.0  # an event ten years before the request
FLOAT_RANGES = {
    "duration_s": (0.0, MAX_SECONDS),
    "hist_play_s": (0.0, MAX_SECONDS),
    "hist_duration_s": (0.0, MAX_SECONDS),
    "hist_age_s": (0.0, MAX_AGE_SECONDS),
}
INT_RANGES = {
    "hist_feedback": (0, 511),  # the nine feedback bits of §6
}
HISTORY_LENGTH_FROM = ("hist_video_id", "hist_author_id", "hist_tag", "hist_play_s", "hist_duration_s",
                       "hist_age_s", "hist_feedback")


def history_length(specs):
    """L of a signature: the static last dimension of its §6 history inputs (None without one)."""
    for name in HISTORY_LENGTH_FROM:
        spec = specs.get(name)
        if spec is not None and spec.shape and len(spec.shape) == 2 and spec.shape[1] > 0:
            return spec.shape[1]
    return None


def value_rules(specs):
    """``{input name: (low, high)}`` for the §6 inputs of a signature (ints and floats alike)."""
    rules = {}
    for name in ID_FEATURES:
        if name in specs:
            rules[name] = (ID_PADDING, None)
    for name, bounds in {**FLOAT_RANGES, **INT_RANGES}.items():
        if name in specs:
            rules[name] = bounds
    length = history_length(specs)
    if "hist_len" in specs and length is not None:
        rules["hist_len"] = (0, length)
    return rules


def _first_position(mask):
    """The index of the first True of ``mask``, as a list (for the message)."""
    return [int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape)]


def check_values(signature_name, inputs, rules):
    """Raise INVALID_ARGUMENT naming the first ruled input whose values are non-finite or out of range.

    ``inputs``: name -> ndarray already checked for dtype and shape; ``rules``: from
    :func:`value_rules`."""
    for key, bounds in rules.items():
        array = inputs.get(key)
        if array is None or not array.size or array.dtype.kind not in "iuf":
            continue
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = ~np.isfinite(array)
            raise invalid_argument(
                f"input '{key}' of signature '{signature_name}' holds a non-finite value "
                f"({array[tuple(_first_position(bad))]} at {_first_position(bad)}); it must be a finite number")
        low, high = bounds
        if (low is not None and array.min() < low) or (high is not None and array.max() > high):
            bad = np.zeros(array.shape, bool)
            if low is not None:
                bad |= array < low
            if high is not None:
                bad |= array > high
            where = _first_position(bad)
            span = f"[{low}, {high}]" if high is not None else f">= {low}"
            hint = " (-1 is padding / unknown)" if key in ID_FEATURES else ""
            hint = f" (L = {high}, the signature's history length)" if key == "hist_len" else hint
            raise invalid_argument(
                f"input '{key}' of signature '{signature_name}' holds {array[tuple(where)]} at {where}; "
                f"its values must lie in {span}{hint}")
