"""One loaded version of a model: its signatures, their input/output specs, and how to run them.

The SignatureDefs are read from ``saved_model.pb`` itself (what ``GetModelMetadata`` must return
byte for byte), and every request is checked against them *before* TensorFlow runs, so that a
wrong name, dtype, shape or batch size comes back as INVALID_ARGUMENT with a message that names
the input instead of an opaque graph error.
"""
import os
import threading

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.core.framework import types_pb2

from serving import input_checks, tensors
from serving.admission import FairGate
from serving.errors import ServingError, failed_precondition, from_tf_error, invalid_argument

DEFAULT_SIGNATURE = "serving_default"


class TensorSpec:
    """Name, dtype and shape (-1 = any, None = unknown rank) of one signature input or output."""

    __slots__ = ("key", "dtype", "shape")

    def __init__(self, key, tensor_info):
        self.key = key
        self.dtype = tensor_info.dtype
        shape = tensor_info.tensor_shape
        self.shape = None if shape.unknown_rank else tuple(d.size for d in shape.dim)

    @property
    def batched(self):
        """True when dimension 0 is free, i.e. the tensor can be concatenated with others."""
        return bool(self.shape) and self.shape[0] == -1

    def describe(self):
        shape = "?" if self.shape is None else "[" + ",".join("?" if d < 0 else str(d) for d in self.shape) + "]"
        return f"{self.key}: {tensors.dtype_name(self.dtype)} {shape}"


def signature_runner(function):
    """``(run, flat)``: ``run(feed dict) -> outputs`` for a loaded signature function, and whether it
    skips the function's Python argument binding.

    ``function(**feed)`` binds the keywords to the function's parameters and checks every tensor
    against its TensorSpec in Python: 0.6–1 ms per call on the 2-core hosts here, as much as a
    one-user ``retrieve`` itself (benchmarks/RESULTS.md). The server has already checked each
    request against the SignatureDef (``Signature.validate``), so ``run`` calls the concrete
    function on its inputs in ``function_type`` order through ``_call_flat``, the entry point
    ``__call__`` ends in. That is a private TensorFlow method (TensorFlow is pinned); where a
    version lacks it, ``run`` is the public call and ``flat`` is False. ``tests/test_serving.py``
    checks both give the same.
    """
    call_flat = getattr(function, "_call_flat", None)
    function_type = getattr(function, "function_type", None)
    if call_flat is None or function_type is None:
        return (lambda feed: function(**feed)), False
    keys = tuple(function_type.parameters)

    def run(feed):
        return call_flat([feed[key] for key in keys], function.captured_inputs)
    return run, True


class Signature:
    """A SignatureDef plus the callable that runs it."""

    def __init__(self, name, signature_def, function):
        self.name = name
        self.signature_def = signature_def
        self.function = function
        self.run_feed, self.runs_flat = signature_runner(function)
        self.method_name = signature_def.method_name
        self.inputs = {k: TensorSpec(k, v) for k, v in signature_def.inputs.items()}
        self.outputs = {k: TensorSpec(k, v) for k, v in signature_def.outputs.items()}
        # Only signatures whose every input and output has a free batch dimension can be batched.
        self.batchable = bool(self.inputs) and all(s.batched for s in self.inputs.values()) and all(
            s.batched for s in self.outputs.values())
        self.value_rules = input_checks.value_rules(self.inputs)

    def check_names(self, names):
        """INVALID_ARGUMENT for an input name the signature lacks (checked first: nothing of such a
        request is decoded) or an input it needs and the request lacks."""
        unknown = sorted(set(names) - set(self.inputs))
        if unknown:
            raise invalid_argument(
                f"input tensor alias not found in signature: {', '.join(unknown)}. Inputs expected to be in the "
                f"set {{{', '.join(sorted(self.inputs))}}}.")
        missing = sorted(set(self.inputs) - set(names))
        if missing:
            raise invalid_argument(
                f"Request inputs do not match required inputs for signature '{self.name}': missing "
                f"{', '.join(missing)}")

    def _check_dtype(self, key, dtype_enum):
        spec = self.inputs[key]
        if dtype_enum != spec.dtype:
            raise invalid_argument(
                f"input '{key}' of signature '{self.name}' expects {tensors.dtype_name(spec.dtype)} but "
                f"{tensors.dtype_name(dtype_enum)} was provided")

    def _check_shape(self, key, shape):
        spec = self.inputs[key]
        if spec.shape is not None and (len(shape) != len(spec.shape) or any(
                want >= 0 and want != got for want, got in zip(spec.shape, shape))):
            raise invalid_argument(
                f"input '{key}' of signature '{self.name}' has shape {list(shape)}, expected "
                f"{spec.describe().split(' ', 2)[2]}")

    def decode(self, protos, fill_limit_bytes=None):
        """TensorProtos (name -> proto) -> NumPy inputs, refusing what does not fit *before* the
        values are decoded: unknown names first, then each tensor's dtype and declared shape
        against the signature, and no tensor may fill more than ``fill_limit_bytes`` from fewer
        values than its shape needs (``tensors.to_numpy``)."""
        self.check_names(protos)
        inputs = {}
        for key, proto in protos.items():
            self._check_dtype(key, proto.dtype)
            self._check_shape(key, tensors.declared_shape(proto))
            inputs[key] = tensors.to_numpy(proto, fill_limit_bytes, f"input '{key}'")
        return inputs

    def validate(self, inputs, output_filter=()):
        """Raise INVALID_ARGUMENT unless ``inputs`` (name -> ndarray) fits this signature: names,
        dtypes, shapes, one non-empty batch size, the output filter, and the values
        (``serving.input_checks``: finite floats, §6 ranges)."""
        self.check_names(inputs)
        batch_sizes = {}
        for key, array in inputs.items():
            spec = self.inputs[key]
            want_string = spec.dtype == types_pb2.DT_STRING
            is_string = array.dtype.kind in "OSU"
            if want_string != is_string or (not want_string and tensors.dtype_enum_of(array) != spec.dtype):
                self._check_dtype(key, types_pb2.DT_STRING if is_string else tensors.dtype_enum_of(array))
            self._check_shape(key, array.shape)
            if spec.batched:
                batch_sizes[key] = array.shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise invalid_argument(
                "inputs' batch sizes (dimension 0) differ: "
                + ", ".join(f"{k}={v}" for k, v in sorted(batch_sizes.items())))
        if batch_sizes and not next(iter(batch_sizes.values())):
            raise invalid_argument(
                f"empty batch: the inputs of signature '{self.name}' have 0 rows (dimension 0); send at least one")
        if len(set(output_filter)) != len(output_filter):
            twice = sorted({k for k in output_filter if list(output_filter).count(k) > 1})
            raise invalid_argument(f"duplicate output tensor alias in output_filter: {', '.join(twice)}")
        unknown_outputs = sorted(set(output_filter) - set(self.outputs))
        if unknown_outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {', '.join(unknown_outputs)}. Outputs expected to be "
                f"in the set {{{', '.join(sorted(self.outputs))}}}.")
        input_checks.check_values(self.name, inputs, self.value_rules)

    def call(self, inputs):
        """Run the signature on validated NumPy inputs; returns name -> ndarray."""
        feed = {}
        for key, array in inputs.items():
            spec = self.inputs[key]
            if spec.dtype == types_pb2.DT_STRING:
                feed[key] = tf.constant(np.asarray(array, dtype=object), dtype=tf.string)
            else:
                feed[key] = tf.constant(array)
        try:
            result = self.run_feed(feed)
        except tf.errors.OpError as error:
            raise from_tf_error(error) from None
        except (TypeError, ValueError) as error:
            raise invalid_argument(f"signature '{self.name}' rejected the inputs: {error}") from None
        return {key: value.numpy() for key, value in result.items()}


def _read_signature_defs(path):
    """The SignatureDef map of the 'serve' MetaGraph in ``path``/saved_model.pb (or .pbtxt)."""
    pb = os.path.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    if os.path.exists(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        from google.protobuf import text_format
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph.signature_def
    raise ValueError(f"no MetaGraph tagged 'serve' in {path}")


class Servable:
    """A loaded SavedModel version. Thread-safe: signatures are called concurrently."""

    def __init__(self, name, version, path, batching_options=None, run_gate=None):
        """``run_gate``: a ``serving.admission.FairGate`` every unbatched run of this servable holds
        while the model runs (shared by the manager's servables: they share the cores); None: no
        limit."""
        self.name = name
        self.version = int(version)
        self.path = path
        signature_defs = _read_signature_defs(path)
        self._loaded = tf.saved_model.load(path, tags=["serve"])
        functions = self._loaded.signatures
        self.signatures = {
            key: Signature(key, signature_defs[key], functions[key]) for key in signature_defs if key in functions
        }
        self.signature_def_map = {key: signature_defs[key] for key in self.signatures}
        self._batchers = {}
        self._run_gate = run_gate if run_gate is not None else FairGate(0)
        self._lock = threading.Lock()
        if batching_options is not None:
            from serving.batching import Batcher
            for key, signature in self.signatures.items():
                if signature.batchable:
                    self._batchers[key] = Batcher(signature.call, batching_options, name=f"{name}/{version}/{key}")

    def signature(self, name):
        name = name or DEFAULT_SIGNATURE
        try:
            return self.signatures[name]
        except KeyError:
            raise failed_precondition(
                f"Serving signature key \"{name}\" not found in model '{self.name}' version {self.version}; "
                f"it has {{{', '.join(sorted(self.signatures))}}}.") from None

    def run(self, signature_name, inputs, output_filter=()):
        """Validate and run one request, through the dynamic batcher when the signature has one.

        Returns (resolved signature name, outputs) with outputs filtered by ``output_filter``.
        """
        signature, batcher = self._checked(signature_name, inputs, output_filter)
        outputs = batcher.submit(inputs) if batcher is not None else self._call_unbatched(signature, inputs)
        return signature.name, _filtered(outputs, output_filter)

    def run_async(self, signature_name, inputs, output_filter, done):
        """``run``, answering through ``done(signature name, outputs, error)``.

        A batched signature calls ``done`` from its batch thread once the batch has run, so no
        thread waits for the batch; any other runs before this returns. A request that does not
        fit the signature (or that the batcher refuses) raises ServingError here, as ``run`` does.
        """
        signature, batcher = self._checked(signature_name, inputs, output_filter)
        if batcher is None:
            done(signature.name, _filtered(self._call_unbatched(signature, inputs), output_filter), None)
            return

        def finish(outputs, error):
            done(signature.name, None if error is not None else _filtered(outputs, output_filter), error)
        batcher.submit_async(inputs, finish)

    def _call_unbatched(self, signature, inputs):
        """The model run of one request on this thread, inside the run gate (fair and bounded)."""
        with self._run_gate:
            return signature.call(inputs)

    def _checked(self, signature_name, inputs, output_filter):
        """(signature, its batcher or None) for a request, after checking the request fits it."""
        signature = self.signature(signature_name)
        signature.validate(inputs, output_filter)
        return signature, self._batchers.get(signature.name)

    def batch_stats(self):
        """Per-signature batch-size histograms (how well dynamic batching is working)."""
        return {key: batcher.stats() for key, batcher in self._batchers.items()}

    def close(self):
        """Stop the batchers after they drain (each logs its batch sizes); requests arriving later
        run unbatched."""
        for batcher in self._batchers.values():
            batcher.close()


def _filtered(outputs, output_filter):
    return {k: outputs[k] for k in output_filter} if output_filter else outputs


def version_is_ready(path):
    """A version directory is complete once its saved_model.pb(.txt) is there."""
    return os.path.exists(os.path.join(path, "saved_model.pb")) or os.path.exists(
        os.path.join(path, "saved_model.pbtxt"))


__all__ = ["Servable", "Signature", "TensorSpec", "ServingError", "DEFAULT_SIGNATURE", "version_is_ready"]
