"""TF Serving's gRPC services, ``PredictionService`` and ``ModelService``, on the official stubs.

Each method turns the request into NumPy, asks the manager for the servable the ModelSpec
names, runs it and builds the official response proto; a successful Predict, Classify or Regress
is handed to the model's request loggers (``serving.request_logger``: its ``logging_config``). Every ServingError becomes
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


def status_of(error, where):
    """(grpc.StatusCode, message) a failed call answers with: a ServingError's own code, INTERNAL
    (logged, with the exception's type) for anything unexpected — the server keeps serving."""
    if isinstance(error, ServingError):
        return error.code, error.message
    log.error("%s failed", where, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"


def _guarded(method):
    """Map ServingError (and surprises) onto gRPC status codes."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as error:
            context.abort(*status_of(error, method.__name__))

    return wrapper


def _predict_inputs(manager, request, fill_limit_bytes=None):
    """(servable, NumPy inputs) a PredictRequest names. The signature is looked up first, so a
    request it does not fit (an unknown input, a shape it cannot take, a tensor declaring more
    values than it carries) is refused before its tensors are decoded (``Signature.decode``)."""
    name, version, label = _spec(request.model_spec)
    servable = manager.get_servable(name, version, label)
    signature = servable.signature(request.model_spec.signature_name)
    return servable, signature.decode(request.inputs, fill_limit_bytes)


def _predict_response(servable, signature_name, outputs):
    response = predict_pb2.PredictResponse()
    _fill_spec(response.model_spec, servable, signature_name)
    for key, value in outputs.items():
        tensors.to_proto(value, response.outputs[key])
    return response


def predict(manager, request, fill_limit_bytes=None):
    """PredictRequest -> PredictResponse (gRPC Python: the caller's thread waits for a batched
    signature's batch). ``fill_limit_bytes``: see ``Signature.decode``."""
    servable, inputs = _predict_inputs(manager, request, fill_limit_bytes)
    signature_name, outputs = servable.run(request.model_spec.signature_name, inputs, list(request.output_filter))
    response = _predict_response(servable, signature_name, outputs)
    manager.request_logger.log("predict", request, response, servable, signature_name)
    return response


def predict_deferred(manager, request, done, fill_limit_bytes=None):
    """``predict`` answering through ``done(response, error)``: for a batched signature, from the
    batch thread as soon as the batch has run (the C++ transport sends it from there, and no
    thread waits per request); otherwise before returning. Every failure, before the batch or in
    it, reaches ``done`` as ``error``; ``done`` is called exactly once."""
    answered = []

    def answer(response, error):
        answered.append(True)
        done(response, error)

    def finish(signature_name, outputs, error):
        response = None
        if error is None:
            try:
                response = _predict_response(servable, signature_name, outputs)
            except Exception as failure:
                error = failure
            else:
                manager.request_logger.log("predict", request, response, servable, signature_name)
        answer(response, error)

    try:
        servable, inputs = _predict_inputs(manager, request, fill_limit_bytes)
        servable.run_async(request.model_spec.signature_name, inputs, list(request.output_filter), finish)
    except Exception as error:
        if answered:  # ``done`` itself failed: not a second answer
            raise
        answer(None, error)


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
    """PredictionService on either transport. ``max_message_bytes``: no request tensor may decode
    to more than this (the largest request the transport accepts) from fewer values than its
    shape declares."""

    def __init__(self, manager, max_message_bytes=None):
        self.manager = manager
        self.fill_limit_bytes = max_message_bytes

    @_guarded
    def Predict(self, request, context):
        return predict(self.manager, request, self.fill_limit_bytes)

    def PredictDeferred(self, request, done):
        """Predict for a transport that can answer later (``native_grpc``): ``done(response, error)``."""
        predict_deferred(self.manager, request, done, self.fill_limit_bytes)

    @_guarded
    def Classify(self, request, context):
        name, version, label = _spec(request.model_spec)
        servable = self.manager.get_servable(name, version, label)
        signature_name, result = inference.classify(
            servable, request.model_spec.signature_name, inference.serialize_input(request.input))
        response = classification_pb2.ClassificationResponse(result=result)
        _fill_spec(response.model_spec, servable, signature_name)
        self.manager.request_logger.log("classify", request, response, servable, signature_name)
        return response

    @_guarded
    def Regress(self, request, context):
        name, version, label = _spec(request.model_spec)
        servable = self.manager.get_servable(name, version, label)
        signature_name, result = inference.regress(
            servable, request.model_spec.signature_name, inference.serialize_input(request.input))
        response = regression_pb2.RegressionResponse(result=result)
        _fill_spec(response.model_spec, servable, signature_name)
        self.manager.request_logger.log("regress", request, response, servable, signature_name)
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
        """Adopt the config, or refuse it with its reason (the current config keeps serving)."""
        try:
            self.manager.reload_config(request.config)
        except ServingError as error:
            log.error("ReloadConfig failed: %s", error.message)
            raise
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response
