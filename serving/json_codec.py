"""TF Serving's REST JSON formats <-> NumPy.

Predict takes the *row* format (``"instances"``: one entry per example, a dict of named inputs
or, for a single-input signature, the bare value) or the *columnar* format (``"inputs"``: a dict
of batched tensors or one bare tensor), and answers ``"predictions"`` or ``"outputs"`` to match.
Binary strings travel as ``{"b64": "..."}``; string outputs whose alias ends in ``_bytes`` are
sent back that way. Classify/Regress take ``"examples"`` (+ optional ``"context"``) as JSON
objects, turned into tf.Example here.

Responses are written by orjson straight from the NumPy outputs: a float32 comes out as the
shortest text that reads back as the same float32 (``0.2``, not the float64 expansion
``0.20000000298023224``), which is what TF Serving aims for too (6 or 9 digits in its
``json_tensor.cc``), and a ``rank`` answer of 11 × 200 floats is written ≈ 10× faster than
``json.dumps`` of ``tolist()`` (benchmarks/RESULTS.md).
"""
import base64
import json
import math

import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from serving import tensors
from serving.errors import invalid_argument


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _strings(value):
    """Nested JSON strings / {"b64"} objects -> nested bytes."""
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except Exception:
            raise invalid_argument("invalid base64 in {\"b64\": ...} value") from None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_strings(v) for v in value]
    raise invalid_argument(f"expected a string or {{\"b64\": ...}}, got {type(value).__name__}")


def to_array(value, spec, what):
    """JSON value -> ndarray of the signature input's dtype; INVALID_ARGUMENT when it does not fit."""
    if spec.dtype == types_pb2.DT_STRING:
        nested = _strings(value)
        try:
            probe = np.array(nested, dtype=object)
        except ValueError:
            raise invalid_argument(f"{what}: ragged nested lists") from None
        # np.array of equal-length bytes may build a deeper object array; that is fine.
        return probe
    np_type = tensors.numpy_dtype(spec.dtype)
    try:
        raw = np.asarray(value)
    except ValueError:
        raise invalid_argument(f"{what}: ragged nested lists") from None
    want = np.dtype(np_type).kind
    if raw.dtype.kind not in "biuf":
        raise invalid_argument(f"{what}: expected {tensors.dtype_name(spec.dtype)} numbers, got JSON {raw.dtype.kind!r} values")
    if (raw.dtype.kind == "b") != (want == "b") and raw.size:
        raise invalid_argument(f"{what}: expected {tensors.dtype_name(spec.dtype)}, got JSON "
                               f"{'true/false' if raw.dtype.kind == 'b' else 'numbers'}")
    if want in "iu" and raw.size:
        if raw.dtype.kind == "f" and (not np.all(np.isfinite(raw)) or not np.all(raw == np.floor(raw))):
            raise invalid_argument(f"{what}: expected integers ({tensors.dtype_name(spec.dtype)}), got non-integral numbers")
        _check_fits(raw, np_type, spec, what)
    return raw.astype(np_type)


def _check_fits(raw, np_type, spec, what):
    """INVALID_ARGUMENT for an integer outside ``np_type``'s range (``astype`` would wrap 2**63 to
    INT64_MIN). Floats are compared with the exact powers of two that bound the range."""
    info = np.iinfo(np_type)
    if raw.dtype.kind == "f":
        low, high = float(info.min), float(info.max + 1)  # exact in float64 for every width
        fits = raw.min() >= low and raw.max() < high
    else:
        fits = int(raw.min()) >= info.min and int(raw.max()) <= info.max
    if not fits:
        raise invalid_argument(f"{what}: a value does not fit {tensors.dtype_name(spec.dtype)} "
                               f"([{info.min}, {info.max}])")


def predict_inputs(body, signature):
    """Parse a :predict body -> (inputs dict, 'row' | 'columnar')."""
    if not isinstance(body, dict):
        raise invalid_argument("request body must be a JSON object")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise invalid_argument("JSON object must have exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid_argument("'instances' must be a non-empty list")
        named = all(isinstance(i, dict) and not _is_b64(i) for i in instances)
        if named:
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise invalid_argument("every instance must have the same named inputs")
            return {k: to_array([i[k] for i in instances], signature.inputs[k], f"input '{k}'")
                    if k in signature.inputs else _unknown(k, signature) for k in keys}, "row"
        return _single(instances, signature), "row"
    inputs = body["inputs"]
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {k: to_array(v, signature.inputs[k], f"input '{k}'") if k in signature.inputs else _unknown(k, signature)
                for k, v in inputs.items()}, "columnar"
    return _single(inputs, signature), "columnar"


def _unknown(key, signature):
    raise invalid_argument(
        f"input tensor alias not found in signature: {key}. Inputs expected to be in the set "
        f"{{{', '.join(sorted(signature.inputs))}}}.")


def _single(value, signature):
    if len(signature.inputs) != 1:
        raise invalid_argument(
            f"signature '{signature.name}' has {len(signature.inputs)} inputs; name them "
            f"({', '.join(sorted(signature.inputs))})")
    key, spec = next(iter(signature.inputs.items()))
    return {key: to_array(value, spec, f"input '{key}'")}


def loads(body):
    """A request body: orjson (≈ 5× faster than ``json`` on a ``rank`` request), or the standard
    library for what orjson refuses and TF Serving accepts (NaN / Infinity tokens, integers beyond
    64 bits) — so its error message is the one a bad body gets."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def dumps(obj):
    """A response body as JSON bytes; NumPy arrays and scalars in ``obj`` are written directly."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _jsonable(key, array):
    """An output for :func:`dumps`: numbers stay NumPy (C-contiguous, or a NumPy scalar for rank 0),
    strings become lists (``{"b64": ...}`` for ``*_bytes`` aliases), non-finite floats text."""
    array = np.asarray(array)
    if array.dtype.kind in "OS":
        if key.endswith("_bytes"):
            convert = lambda b: {"b64": base64.b64encode(b).decode()}  # noqa: E731
        else:
            convert = lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)  # noqa: E731
        return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else array.tolist()
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        return nonfinite_as_text(_shortest_floats(array))
    if array.dtype.kind in "biuf":
        return np.ascontiguousarray(array) if array.ndim else array[()]
    return array.tolist()


def _shortest_floats(array):
    """Nested lists of Python floats, each the shortest text that reads back as the same value of
    the array's own dtype (float32 0.1 → 0.1, not 0.10000000149011612), as orjson writes the
    all-finite arrays. Only outputs with a NaN or infinity come here, so per-element is fine."""
    values = np.array([float(str(v)) for v in array.reshape(-1)], dtype=np.float64)
    return values.reshape(array.shape).tolist()


def nonfinite_as_text(value):
    """Nested lists of floats with NaN / ±inf as the strings "NaN", "Infinity", "-Infinity"
    (JSON has no such numbers)."""
    if isinstance(value, list):
        return [nonfinite_as_text(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def predict_outputs(outputs, fmt):
    """Outputs dict -> the response object for the request's format."""
    if fmt == "columnar":
        if len(outputs) == 1:
            key, value = next(iter(outputs.items()))
            return {"outputs": _jsonable(key, value)}
        return {"outputs": {k: _jsonable(k, v) for k, v in outputs.items()}}
    sizes = {k: (np.asarray(v).shape[:1] or (None,))[0] for k, v in outputs.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise invalid_argument(
            f"outputs do not share a batch dimension ({sizes}); use the columnar 'inputs' format")
    columns = {k: _jsonable(k, v) for k, v in outputs.items()}
    n = next(iter(sizes.values()))
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(n)]}


def _feature(value, what):
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, bool) or isinstance(v, int) for v in values):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v) for v in values]))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[float(v) for v in values]))
    if all(isinstance(v, str) or _is_b64(v) for v in values):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[_strings(v) for v in values]))
    raise invalid_argument(f"feature {what}: values must be all numbers or all strings")


def example_from_json(obj, what="example"):
    if not isinstance(obj, dict):
        raise invalid_argument(f"{what} must be a JSON object of feature name -> value(s)")
    example = example_pb2.Example()
    for name, value in obj.items():
        example.features.feature[name].CopyFrom(_feature(value, f"'{name}' of {what}"))
    return example


def examples_input(body):
    """A :classify/:regress body -> tensorflow.serving.Input proto."""
    from tensorflow_serving.apis import input_pb2
    if not isinstance(body, dict) or not isinstance(body.get("examples"), list) or not body["examples"]:
        raise invalid_argument("JSON object must have a non-empty 'examples' list")
    proto = input_pb2.Input()
    examples = [example_from_json(e, f"examples[{i}]") for i, e in enumerate(body["examples"])]
    if "context" in body:
        proto.example_list_with_context.context.CopyFrom(example_from_json(body["context"], "context"))
        proto.example_list_with_context.examples.extend(examples)
    else:
        proto.example_list.examples.extend(examples)
    return proto
