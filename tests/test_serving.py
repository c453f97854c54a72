"""The server against a real SavedModel, over real loopback gRPC (official stubs) and HTTP.

Every API of TF Serving the server claims, every bad request of docs/errors.md with its status code,
and after each bad request a good one still answers.
"""
import base64
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, predict_pb2, regression_pb2)

from tests.fixtures_serving import TOY_MODEL_NAME

X = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], dtype=np.float32)
IDS = np.array([1, 2], dtype=np.int64)


def predict_request(signature="", model=TOY_MODEL_NAME, version=None, label=None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def good_predict(stub):
    response = stub.Predict(predict_request(x=X, ids=IDS), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [15.0, 5.0])
    return response


def http(server, method, path, body=None, raw=None):
    """(status, parsed JSON) of a plain HTTP call."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def examples_input(request_input, rows):
    for a, b in rows:
        example = request_input.example_list.examples.add()
        example.features.feature["a"].float_list.value.append(a)
        example.features.feature["b"].int64_list.value.append(b)


# ---- gRPC: every signature, every API ------------------------------------------------------

def test_predict_default_signature_values_and_spec(toy_stubs):
    stub, _ = toy_stubs
    response = good_predict(stub)
    assert response.model_spec.name == TOY_MODEL_NAME
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    assert list(tf.make_ndarray(response.outputs["id_bytes"])) == [b"1", b"2"]


def test_predict_every_named_signature(toy_stubs):
    stub, _ = toy_stubs
    scaled = stub.Predict(predict_request("scale", x=np.ones((2, 5), np.float32)))
    np.testing.assert_allclose(tf.make_ndarray(scaled.outputs["scaled"]), np.ones((2, 5)))
    total = stub.Predict(predict_request("total", x=X))
    assert float(tf.make_ndarray(total.outputs["total"])) == pytest.approx(7.0)
    serialized = tf.train.Example()
    serialized.features.feature["a"].float_list.value.append(0.0)
    classify = stub.Predict(predict_request("classify", inputs=np.array([serialized.SerializeToString()], dtype=object)))
    np.testing.assert_allclose(tf.make_ndarray(classify.outputs["scores"]), [[0.5, 0.5]])
    regress = stub.Predict(predict_request("regress", inputs=np.array([serialized.SerializeToString()], dtype=object)))
    np.testing.assert_allclose(tf.make_ndarray(regress.outputs["outputs"]), [0.0])


def test_predict_output_filter(toy_stubs):
    stub, _ = toy_stubs
    request = predict_request(x=X, ids=IDS)
    request.output_filter.append("version")
    response = stub.Predict(request)
    assert set(response.outputs) == {"version"}


def test_classify_regress_multi_inference_on_examples(toy_stubs):
    stub, _ = toy_stubs
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = TOY_MODEL_NAME
    request.model_spec.signature_name = "classify"
    examples_input(request.input, [(0.0, 1), (2.0, 3)])
    result = stub.Classify(request).result
    assert [c.label for c in result.classifications[1].classes] == ["pos", "neg"]
    assert result.classifications[0].classes[0].score == pytest.approx(0.5)
    assert result.classifications[1].classes[0].score == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = TOY_MODEL_NAME
    request.model_spec.signature_name = "regress"
    context = request.input.example_list_with_context
    context.context.features.feature["b"].int64_list.value.append(10)  # shared by every example
    context.examples.add().features.feature["a"].float_list.value.append(1.5)
    response = stub.Regress(request)
    assert [r.value for r in response.result.regressions] == [pytest.approx(11.5)]
    assert response.model_spec.signature_name == "regress"

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", "tensorflow/serving/classify"), ("regress", "tensorflow/serving/regress")):
        task = request.tasks.add()
        task.model_spec.name = TOY_MODEL_NAME
        task.model_spec.signature_name = signature
        task.method_name = method
    examples_input(request.input, [(1.0, 2)])
    results = stub.MultiInference(request).results
    assert results[0].classification_result.classifications[0].classes[0].label == "pos"
    assert results[1].regression_result.regressions[0].value == pytest.approx(3.0)


def test_classify_on_a_predict_only_signature_is_refused(toy_stubs):
    stub, _ = toy_stubs
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = TOY_MODEL_NAME  # serving_default has two inputs: not a classifier
    examples_input(request.input, [(0.0, 1)])
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    good_predict(stub)


def test_metadata_lists_every_signature(toy_stubs):
    stub, _ = toy_stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = TOY_MODEL_NAME
    response = stub.GetModelMetadata(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    defs = signature_map.signature_def
    assert {"serving_default", "scale", "total", "classify", "regress"} <= set(defs)
    assert set(defs["serving_default"].inputs) == {"x", "ids"}
    assert set(defs["serving_default"].outputs) == {"y", "version", "id_bytes"}
    assert response.model_spec.version.value == 1


def test_model_status_available_after_warmup(toy_stubs, toy_server):
    _, model_stub = toy_stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = TOY_MODEL_NAME
    statuses = model_stub.GetModelStatus(request).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in statuses] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    # The two warmup records of the version ran before it became AVAILABLE.
    assert toy_server.manager.status(TOY_MODEL_NAME)[0].warmup_requests == 2


# ---- gRPC: bad requests ----------------------------------------------------------------------

BAD_REQUESTS = {
    "unknown model": (lambda: predict_request(model="nope", x=X, ids=IDS), grpc.StatusCode.NOT_FOUND, "nope"),
    "unknown version": (lambda: predict_request(version=7, x=X, ids=IDS), grpc.StatusCode.NOT_FOUND, "7"),
    "unknown label": (lambda: predict_request(label="canary", x=X, ids=IDS), grpc.StatusCode.NOT_FOUND, "canary"),
    "unknown signature": (lambda: predict_request("nosuch", x=X, ids=IDS), grpc.StatusCode.FAILED_PRECONDITION,
                          "nosuch"),  # TF Serving's code
    "unknown input": (lambda: predict_request(x=X, ids=IDS, extra=IDS), grpc.StatusCode.INVALID_ARGUMENT, "extra"),
    "missing input": (lambda: predict_request(x=X), grpc.StatusCode.INVALID_ARGUMENT, "ids"),
    "wrong dtype": (lambda: predict_request(x=X.astype(np.float64), ids=IDS), grpc.StatusCode.INVALID_ARGUMENT,
                    "DT_DOUBLE"),
    "wrong shape": (lambda: predict_request(x=np.ones((2, 4), np.float32), ids=IDS),
                    grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    "wrong rank": (lambda: predict_request(x=np.ones(3, np.float32), ids=IDS), grpc.StatusCode.INVALID_ARGUMENT,
                   "shape"),
    "batch sizes differ": (lambda: predict_request(x=X, ids=np.array([1, 2, 3])), grpc.StatusCode.INVALID_ARGUMENT,
                           "batch sizes"),
    "oversized": (lambda: predict_request(x=np.ones((200_000, 3), np.float32), ids=np.ones(200_000, np.int64)),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_predict_requests_then_good_one(toy_stubs, case):
    stub, _ = toy_stubs
    make, code, fragment = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(make(), timeout=10)
    assert info.value.code() == code, info.value.details()
    assert fragment in info.value.details()
    good_predict(stub)


def test_malformed_tensor_proto_and_status_of_unknown_model(toy_stubs):
    stub, model_stub = toy_stubs
    request = predict_request(x=X, ids=IDS)
    request.inputs["x"].tensor_content = b"\x00" * 5  # 5 bytes cannot hold a [2, 3] float tensor
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        model_stub.GetModelStatus(status)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    good_predict(stub)


def test_unknown_method_and_unparsable_request_then_good_one(toy_server, toy_stubs):
    """What the transport itself answers (gRPC Python's codes on both transports): a method no
    service has is UNIMPLEMENTED, bytes that are no PredictRequest are INTERNAL."""
    channel = grpc.insecure_channel(f"127.0.0.1:{toy_server.port}")
    try:
        unknown = channel.unary_unary("/tensorflow.serving.PredictionService/Nope")
        with pytest.raises(grpc.RpcError) as info:
            unknown(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as info:
            predict(b"\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        raw = predict(predict_request(x=X, ids=IDS).SerializeToString(), timeout=10)
        np.testing.assert_allclose(tf.make_ndarray(predict_pb2.PredictResponse.FromString(raw).outputs["y"]), [15.0, 5.0])
    finally:
        channel.close()
    good_predict(toy_stubs[0])


def test_auto_transport_is_native_where_built():
    """``--grpc_transport=auto`` (the default) takes the C++ transport wherever it was built, and
    it is built wherever gRPC C++ is installed (``make install`` installs it on Debian)."""
    import shutil
    import subprocess
    from serving import native_grpc
    from serving.server import _choose_transport
    if shutil.which("pkg-config") and subprocess.call(["pkg-config", "--exists", "grpc++"]) == 0:
        assert native_grpc.available(), native_grpc.IMPORT_ERROR
    assert _choose_transport("auto") == ("native" if native_grpc.available() else "python")
    assert _choose_transport("python") == "python"


TENSOR_CASES = [np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(6, dtype=np.int64).reshape(2, 3).T,
                np.array(3.5), np.zeros((0, 4), np.int32), np.array([True, False]), np.arange(4, dtype=np.float16),
                np.arange(3, dtype=">f4"), np.array([[b"a", b"bc"]], dtype=object)]


@pytest.mark.parametrize("array", TENSOR_CASES, ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
def test_tensor_codec_matches_tensorflow(array):
    """The server's NumPy codec against TensorFlow's own: what it writes TF reads back, and what
    TF writes (typed ``*_val`` fields or ``tensor_content``) it reads back."""
    from serving import tensors
    ours = tensors.to_proto(array)
    np.testing.assert_array_equal(tf.make_ndarray(ours), array)
    assert list(tf.make_ndarray(ours).shape) == list(array.shape)
    native = array.astype(array.dtype.newbyteorder("="))  # TF copies big-endian bytes as they are
    for proto in (tf.make_tensor_proto(native), ours):
        decoded = tensors.to_numpy(proto)
        assert decoded.shape == array.shape and decoded.dtype.kind == array.dtype.kind
        np.testing.assert_array_equal(decoded, array)


# ---- REST ---------------------------------------------------------------------------------

def test_rest_predict_row_and_columnar(toy_server):
    status, body = http(toy_server, "POST", "/v1/models/toy:predict",
                        {"instances": [{"x": [1, 2, 3], "ids": 1}, {"x": [0, 0, 1], "ids": 2}]})
    assert status == 200
    assert [p["y"] for p in body["predictions"]] == [15.0, 5.0]
    assert body["predictions"][0]["id_bytes"] == {"b64": base64.b64encode(b"1").decode()}
    status, body = http(toy_server, "POST", "/v1/models/toy/versions/1:predict",
                        {"signature_name": "scale", "inputs": [[1.0, 2.0]]})
    assert (status, body) == (200, {"outputs": [[1.0, 2.0]]})
    status, body = http(toy_server, "POST", "/v1/models/toy:predict", {"signature_name": "total", "inputs": {"x": X.tolist()}})
    assert status == 200 and body["outputs"] == pytest.approx(7.0)
    example = tf.train.Example()
    example.features.feature["a"].float_list.value.append(0.0)
    status, body = http(toy_server, "POST", "/v1/models/toy:predict", {
        "signature_name": "regress", "instances": [{"b64": base64.b64encode(example.SerializeToString()).decode()}]})
    assert (status, body) == (200, {"predictions": [0.0]})


def test_signatures_run_on_flat_inputs_as_the_public_call_does(toy_versions):
    """The server runs a signature on its flat inputs (no Python argument binding): under the
    pinned TensorFlow that is the path taken, and on every toy signature — two inputs in another
    order than the request's, strings, scalars — it gives what ``function(**feed)`` gives."""
    from serving.servable import Servable
    servable = Servable(TOY_MODEL_NAME, 1, toy_versions[1])
    example = tf.train.Example()
    example.features.feature["a"].float_list.value.append(2.0)
    examples = np.array([example.SerializeToString()] * 2, dtype=object)
    requests = {
        "serving_default": {"ids": np.array([5, 7]), "x": np.array([[1, 2, 3], [0, 1, 0]], np.float32)},
        "scale": {"x": np.array([[0.5, -1.0]], np.float32)},
        "total": {"x": np.ones([4, 3], np.float32)},
        "classify": {"inputs": examples},
        "regress": {"inputs": examples},
    }
    assert set(requests) == set(servable.signatures)
    for name, inputs in requests.items():
        signature = servable.signatures[name]
        assert signature.runs_flat, name
        served = signature.call(inputs)
        public = signature.function(**{k: tf.constant(v, dtype=tf.string if v.dtype == object else None)
                                       for k, v in inputs.items()})
        assert set(served) == set(public), name
        for key, value in public.items():
            np.testing.assert_array_equal(served[key], value.numpy(), err_msg=f"{name}/{key}")
    np.testing.assert_allclose(servable.signatures["serving_default"].call(requests["serving_default"])["y"], [19.0, 9.0])


def test_rest_writes_float32_outputs_as_float32(toy_server):
    """A float32 output is written as the shortest text that reads back as the same float32 (0.1,
    not 0.10000000149011612); NaN and infinities, which JSON has no numbers for, as text, and the
    finite values beside them still as float32 text."""
    status, body = http(toy_server, "POST", "/v1/models/toy/versions/1:predict",
                        {"signature_name": "scale", "inputs": [[0.1, 0.2, 1.0, 3e-5]]})
    assert (status, body) == (200, {"outputs": [[0.1, 0.2, 1.0, 3e-5]]})
    status, body = http(toy_server, "POST", "/v1/models/toy/versions/1:predict",
                        {"signature_name": "scale", "instances": [[0.1, float("nan"), float("inf"), -float("inf")]]})
    assert (status, body) == (200, {"predictions": [[0.1, "NaN", "Infinity", "-Infinity"]]})


def test_rest_classify_regress_metadata_status(toy_server):
    status, body = http(toy_server, "POST", "/v1/models/toy:classify",
                        {"signature_name": "classify", "examples": [{"a": 0.0}, {"a": 2.0, "b": 1}]})
    assert status == 200
    assert body["results"][0] == [["pos", pytest.approx(0.5)], ["neg", pytest.approx(0.5)]]
    status, body = http(toy_server, "POST", "/v1/models/toy:regress",
                        {"signature_name": "regress", "context": {"b": 3}, "examples": [{"a": 1.0}, {"a": 2.0}]})
    assert (status, body) == (200, {"results": [pytest.approx(4.0), pytest.approx(5.0)]})
    status, body = http(toy_server, "GET", "/v1/models/toy/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    assert set(body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]) == {"x", "ids"}
    status, body = http(toy_server, "GET", "/v1/models/toy")
    assert (status, body) == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})


REST_BAD = {
    "unknown model": ("/v1/models/nope:predict", {"instances": [{"x": [1, 2, 3], "ids": 1}]}, 404),
    "unknown version": ("/v1/models/toy/versions/9:predict", {"instances": [{"x": [1, 2, 3], "ids": 1}]}, 404),
    "unknown label": ("/v1/models/toy/labels/canary:predict", {"instances": [{"x": [1, 2, 3], "ids": 1}]}, 404),
    "unknown signature": ("/v1/models/toy:predict", {"signature_name": "nosuch", "instances": [[1]]}, 400),
    "unknown input": ("/v1/models/toy:predict", {"instances": [{"x": [1, 2, 3], "ids": 1, "z": 1}]}, 400),
    "wrong dtype": ("/v1/models/toy:predict", {"instances": [{"x": [1, 2, 3], "ids": 1.5}]}, 400),
    "strings for floats": ("/v1/models/toy:predict", {"instances": [{"x": ["a", "b", "c"], "ids": 1}]}, 400),
    "wrong shape": ("/v1/models/toy:predict", {"instances": [{"x": [1, 2], "ids": 1}]}, 400),
    "batch sizes differ": ("/v1/models/toy:predict", {"inputs": {"x": [[1, 2, 3]], "ids": [1, 2]}}, 400),
    "both formats": ("/v1/models/toy:predict", {"instances": [], "inputs": {}}, 400),
    "bad path": ("/v1/models/toy:explode", {}, 400),  # TF Serving: "Malformed request", InvalidArgument
}


@pytest.mark.parametrize("case", sorted(REST_BAD))
def test_rest_bad_requests_then_good_one(toy_server, case):
    path, body, code = REST_BAD[case]
    status, answer = http(toy_server, "POST", path, body)
    assert status == code, answer
    assert set(answer) == {"error"} and answer["error"]
    status, _ = http(toy_server, "POST", "/v1/models/toy:predict", {"instances": [{"x": [1, 2, 3], "ids": 1}]})
    assert status == 200


def test_rest_invalid_json_and_oversized_body(toy_server):
    status, answer = http(toy_server, "POST", "/v1/models/toy:predict", raw=b"{not json")
    assert status == 400 and "JSON" in answer["error"]
    big = json.dumps({"inputs": {"x": [[1.0, 2.0, 3.0]] * 100_000, "ids": [1] * 100_000}}).encode()
    assert len(big) > 1 << 20
    status, answer = http(toy_server, "POST", "/v1/models/toy:predict", raw=big)
    assert status == 413 and "maximum message size" in answer["error"]
    status, _ = http(toy_server, "POST", "/v1/models/toy:predict", {"instances": [{"x": [1, 2, 3], "ids": 1}]})
    assert status == 200


def test_client_builds_a_request_from_flags(toy_server, capsys):
    from serving import client
    grpc_target = ["--server", f"127.0.0.1:{toy_server.port}", "--model_name", TOY_MODEL_NAME]
    assert client.main(grpc_target + ["--feature", "x=1,2,3", "--feature", "ids=5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["y"] == [19.0] and out["version"] == [1.0]
    rest_target = ["--rest", f"http://127.0.0.1:{toy_server.rest_port}", "--model_name", TOY_MODEL_NAME]
    assert client.main(rest_target + ["--signature", "scale", "--feature", "x=2,4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"output": [[2.0, 4.0]]}
    assert client.main(grpc_target + ["--status"]) == 0
    assert "AVAILABLE" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an input neither in an example nor in a flag
        client.main(grpc_target + ["--feature", "x=1,2,3"])
