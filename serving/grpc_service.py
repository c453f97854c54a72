"""TF Serving's gRPC services, ``PredictionService`` and ``ModelService``, on the official stubs.

Each method turns the request into NumPy, asks the manager for the servable the ModelSpec
names, runs it and builds the official response proto. Every ServingError becomes
``context.abort(code, message)``; anything unexpected becomes INTERNAL, so one bad request never
hurts the next.
"""
import functools
import logging

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.apis import classification_pb2, regression_pb2

from serving import inference, tensors
from serving.errors import ServingError, invalid_argument

log = logging.getLogger("serving.grpc")


def _spec(model_spec):
    """(name, version or None, label or None) from a ModelSpec."""
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    if not model_spec.name:
        raise invalid_argument("Missing ModelSpec name")
    return model_spec.name, version, label


def _fill_spec(out_spec, servable, signature_name):
    out_spec.name = servable.name
    out_spec.version.value = servable.version
    if signature_name is not None:
        out_spec.signature_name = signature_name


def _guarded(method):
    """Map ServingError (and surprises) onto gRPC status codes."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            context.abort(error.code, error.message)
        except Exception as error:  # keep serving; tell the client what broke
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

    return wrapper


def predict(manager, request):
    """PredictRequest -> PredictResponse (shared by gRPC and the warmup replay)."""
    name, version, label = _spec(request.model_spec)
    servable = manager.get_servable(name, version, label)
    inputs = {key: tensors.to_numpy(proto) for key, proto in request.inputs.items()}
    signature_name, outputs = servable.run(request.model_spec.signature_name, inputs, list(request.output_filter))
    response = predict_pb2.PredictResponse()
    _fill_spec(response.model_spec, servable, signature_name)
    for key, value in outputs.items():
        tensors.to_proto(value, response.outputs[key])
    return response


def model_status(manager, model_spec):
    """GetModelStatusResponse for a ModelSpec (all versions the manager has seen, or one)."""
    name, version, label = _spec(model_spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    for record in manager.status(name, version, label):
        status = response.model_version_status.add()
        status.version = record.version
        status.state = record.state
        status.status.error_code = 2 if record.error else 0  # UNKNOWN / OK (tensorflow.error.Code)
        status.status.error_message = record.error
    return response


def model_metadata(manager, request):
    name, version, label = _spec(request.model_spec)
    fields = list(request.metadata_field)
    if fields != ["signature_def"]:
        raise invalid_argument(
            f"Metadata field(s) {fields or '(none)'} not supported: request exactly ['signature_def']")
    servable = manager.get_servable(name, version, label)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in servable.signature_def_map.items():
        signature_map.signature_def[key].CopyFrom(signature_def)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _fill_spec(response.model_spec, servable, None)
    packed = any_pb2.Any()
    packed.Pack(signature_map)
    response.metadata["signature_def"].CopyFrom(packed)
    return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager):
        self.manager = manager

    @_guarded
    def Predict(self, request, context):
        return predict(self.manager, request)

    @_guarded
    def Classify(self, request, context):
        name, version, label = _spec(request.model_spec)
        servable = self.manager.get_servable(name, version, label)
        signature_name, result = inference.classify(
            servable, request.model_spec.signature_name, inference.serialize_input(request.input))
        response = classification_pb2.ClassificationResponse(result=result)
        _fill_spec(response.model_spec, servable, signature_name)
        return response

    @_guarded
    def Regress(self, request, context):
        name, version, label = _spec(request.model_spec)
        servable = self.manager.get_servable(name, version, label)
        signature_name, result = inference.regress(
            servable, request.model_spec.signature_name, inference.serialize_input(request.input))
        response = regression_pb2.RegressionResponse(result=result)
        _fill_spec(response.model_spec, servable, signature_name)
        return response

    @_guarded
    def MultiInference(self, request, context):
        if not request.tasks:
            raise invalid_argument("MultiInference request has no tasks")
        name, version, label = _spec(request.tasks[0].model_spec)
        servable = self.manager.get_servable(name, version, label)
        return inference.multi_inference(servable, request.tasks, inference.serialize_input(request.input))

    @_guarded
    def GetModelMetadata(self, request, context):
        return model_metadata(self.manager, request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager):
        self.manager = manager

    @_guarded
    def GetModelStatus(self, request, context):
        return model_status(self.manager, request.model_spec)

    @_guarded
    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        self.manager.set_config(request.config)
        self.manager.poll_once()
        response.status.error_code = 0
        return response
