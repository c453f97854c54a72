"""Classify, Regress and MultiInference: the tf.Example APIs, on top of a signature's Predict.

The rules are TF Serving's (classifier.cc / regressor.cc, with the signature method-name check
off as in TF Serving 2.x, since TF2 SavedModels always say ``tensorflow/serving/predict``): the
signature has exactly one DT_STRING input that receives the serialized examples; Classify reads
the outputs ``classes`` and/or ``scores`` (one or two outputs), Regress reads ``outputs`` (the only
output). A signature that breaks a rule is refused with INVALID_ARGUMENT before it runs.
"""
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from serving.errors import invalid_argument

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def serialize_input(input_proto):
    """tensorflow.serving.Input -> ndarray of serialized tf.Example (context merged into each)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context
        examples = []
        for example in input_proto.example_list_with_context.examples:
            merged = type(example)()
            merged.CopyFrom(context)
            for name, feature in example.features.feature.items():  # the example's own features win
                merged.features.feature[name].CopyFrom(feature)
            examples.append(merged.SerializeToString())
    else:
        raise invalid_argument("Input is empty: give example_list or example_list_with_context")
    if not examples:
        raise invalid_argument("Input is empty: no examples")
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return array


def _example_input(signature):
    if len(signature.inputs) != 1:
        raise invalid_argument(f"Expected one input Tensor in signature '{signature.name}', found {len(signature.inputs)}")
    spec = next(iter(signature.inputs.values()))
    if spec.dtype != types_pb2.DT_STRING:
        raise invalid_argument(f"signature '{signature.name}' input '{spec.key}' is not DT_STRING (serialized tf.Example)")
    return spec.key


def check_classify(signature):
    key = _example_input(signature)
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors in signature '{signature.name}', found {len(signature.outputs)}")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise invalid_argument(
            f"Expected classification signature '{signature.name}' outputs to contain at least one of classes and scores")
    return key


def check_regress(signature):
    key = _example_input(signature)
    if len(signature.outputs) != 1:
        raise invalid_argument(f"Expected one output Tensor in signature '{signature.name}', found {len(signature.outputs)}")
    if "outputs" not in signature.outputs:
        raise invalid_argument(f"No regression outputs ('outputs') found in signature '{signature.name}'")
    return key


def _as_rows(array, n, what):
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] != n:
        raise invalid_argument(f"{what} has shape {list(array.shape)}, expected [{n}, k]")
    return array


def classify(servable, signature_name, examples):
    """Run a classification signature; returns (signature name, ClassificationResult)."""
    signature = servable.signature(signature_name)
    key = check_classify(signature)
    name, outputs = servable.run(signature.name, {key: examples})
    n = len(examples)
    classes = _as_rows(outputs["classes"], n, "classes") if "classes" in outputs else None
    scores = _as_rows(outputs["scores"], n, "scores") if "scores" in outputs else None
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid_argument("classes and scores differ in shape")
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for i in range(n):
        classifications = result.classifications.add()
        for j in range(width):
            label = classes[i, j] if classes is not None else b""
            classifications.classes.add(
                label=label.decode() if isinstance(label, bytes) else str(label),
                score=float(scores[i, j]) if scores is not None else 0.0)
    return name, result


def regress(servable, signature_name, examples):
    """Run a regression signature; returns (signature name, RegressionResult)."""
    signature = servable.signature(signature_name)
    key = check_regress(signature)
    name, outputs = servable.run(signature.name, {key: examples})
    values = np.asarray(outputs["outputs"]).reshape(len(examples), -1)
    if values.shape[1] != 1:
        raise invalid_argument(f"regression output has shape {list(outputs['outputs'].shape)}, expected [N] or [N, 1]")
    result = regression_pb2.RegressionResult()
    for value in values[:, 0]:
        result.regressions.add(value=float(value))
    return name, result


def multi_inference(servable, tasks, examples):
    """Run several classify/regress signatures on the same examples; returns InferenceResults."""
    if not tasks:
        raise invalid_argument("MultiInference request has no tasks")
    seen = set()
    response = inference_pb2.MultiInferenceResponse()
    for task in tasks:
        signature_name = task.model_spec.signature_name or "serving_default"
        if task.model_spec.name != servable.name:
            raise invalid_argument("All MultiInference tasks must use the same model name")
        if signature_name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            name, classification = classify(servable, signature_name, examples)
            result.classification_result.CopyFrom(classification)
        elif task.method_name == REGRESS_METHOD:
            name, regression = regress(servable, signature_name, examples)
            result.regression_result.CopyFrom(regression)
        else:
            raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
        result.model_spec.name = servable.name
        result.model_spec.version.value = servable.version
        result.model_spec.signature_name = name
    return response
