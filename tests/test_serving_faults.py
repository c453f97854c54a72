"""The server under hostile requests and file-system faults (TF Serving's promises, held).

Every test runs a real server on 127.0.0.1 (the in-process ``ModelServer`` the other serving
tests use, both gRPC transports where the request path matters), talks to it with the official
``tensorflow-serving-api`` stubs, plain HTTP or a raw socket, and checks that a bad request gets
its status code and the next good one is served, and that a fault of the file system costs no
request that TF Serving would have answered.
"""
import json
import logging
import os
import resource
import shutil
import socket
import threading
import time

import grpc
import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.server import start_in_process
from tests.fixtures_serving import GRPC_TRANSPORTS, TOY_MODEL_NAME, free_port, require_transport
from tests.test_serving import IDS, X, good_predict, http, predict_request
from tests.test_serving_lifecycle import served_version, statuses, stubs, wait_for

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
LOADING = get_model_status_pb2.ModelVersionStatus.LOADING
END = get_model_status_pb2.ModelVersionStatus.END
FEED_MODEL = "feed"
L = 4  # the feed model's history length


def build_feed_saved_model(path):
    """A SavedModel whose inputs carry docs/design.md §6 names (as the exported signatures do), small
    enough to build in a second: ``serving_default`` reads a user's history, ``rank`` candidates'
    durations. Its outputs are plain sums, so a poisoned input would show in them."""

    class Feed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user_id"),
                                      tf.TensorSpec([None, L], tf.int64, name="hist_video_id"),
                                      tf.TensorSpec([None, L], tf.float32, name="hist_play_s"),
                                      tf.TensorSpec([None, L], tf.float32, name="hist_age_s"),
                                      tf.TensorSpec([None], tf.int64, name="hist_len")])
        def recommend(self, user_id, hist_video_id, hist_play_s, hist_age_s, hist_len):
            mask = tf.sequence_mask(tf.cast(hist_len, tf.int32), L, dtype=tf.float32)
            return {"score": tf.reduce_sum(hist_play_s * mask, 1) + 0.0 * tf.reduce_sum(hist_age_s, 1),
                    "ids": hist_video_id + user_id[:, None]}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user_id"),
                                      tf.TensorSpec([None, None], tf.int64, name="video_id"),
                                      tf.TensorSpec([None, None], tf.float32, name="duration_s")])
        def rank(self, user_id, video_id, duration_s):
            return {"score": duration_s * 2.0 + 0.0 * tf.cast(video_id + user_id[:, None], tf.float32)}

    module = Feed()
    tf.saved_model.save(module, path, signatures={"serving_default": module.recommend, "rank": module.rank})
    return path


def feed_inputs(**override):
    inputs = {"user_id": np.array([7], np.int64),
              "hist_video_id": np.array([[3, 9, -1, -1]], np.int64),
              "hist_play_s": np.array([[1.5, 2.5, 0.0, 0.0]], np.float32),
              "hist_age_s": np.array([[60.0, 600.0, 0.0, 0.0]], np.float32),
              "hist_len": np.array([2], np.int64)}
    inputs.update(override)
    return inputs


def rank_inputs(**override):
    inputs = {"user_id": np.array([7], np.int64), "video_id": np.array([[5, 6]], np.int64),
              "duration_s": np.array([[10.0, 30.0]], np.float32)}
    inputs.update(override)
    return inputs


@pytest.fixture(scope="module")
def feed_config(toy_base, tmp_path_factory):
    """A config serving the toy model and the §6-named feed model."""
    root = tmp_path_factory.mktemp("feed")
    base = root / FEED_MODEL
    base.mkdir()
    build_feed_saved_model(str(base / "1"))
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=TOY_MODEL_NAME, base_path=toy_base, model_platform="tensorflow")
    config.model_config_list.config.add(name=FEED_MODEL, base_path=str(base), model_platform="tensorflow")
    path = root / "models.config"
    path.write_text(text_format.MessageToString(config))
    return str(path)


@pytest.fixture(scope="module", params=GRPC_TRANSPORTS)
def server(request, feed_config):
    """Both models, one server per gRPC transport, REST with a 1 s read timeout."""
    server = start_in_process(port=0, rest_api_port=-1, model_config_file=feed_config,
                              file_system_poll_wait_seconds=0, max_message_size_bytes=1 << 20,
                              rest_read_timeout_s=1.0, grpc_transport=require_transport(request.param))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(server):
    return stubs(server)[0]


def good_feed(stub):
    response = stub.Predict(predict_request(model=FEED_MODEL, **feed_inputs()), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["score"]), [4.0])


def refused(stub, request, code=grpc.StatusCode.INVALID_ARGUMENT):
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


# ---- 1. memory from a tiny request -------------------------------------------------------------

def _declared(dtype, dims, values=()):
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    if dtype == types_pb2.DT_INT64:
        proto.int64_val.extend(values)
    else:
        proto.float_val.extend(values)
    return proto


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_declared_shape_bigger_than_its_content_is_refused_before_allocating(stub):
    """A ~100-byte request declaring 5e7 values (400 MB) is INVALID_ARGUMENT, never INTERNAL, and
    the server's peak memory does not grow by what the shape declares."""
    before = _peak_rss_mb()
    cases = {  # input name, proto, a fragment of the answer
        "unknown name, checked first": ("extra", _declared(types_pb2.DT_INT64, [50_000_000], [1]), "extra"),
        "wrong rank for the signature": ("ids", _declared(types_pb2.DT_INT64, [50_000_000, 1], [1]), "shape"),
        "one value filling [5e7]": ("ids", _declared(types_pb2.DT_INT64, [50_000_000], [1]), "message limit"),
        "no value filling [5e7, 3]": ("x", _declared(types_pb2.DT_FLOAT, [50_000_000, 3]), "message limit"),
    }
    for name, (key, proto, fragment) in cases.items():
        request = predict_request(x=X, ids=IDS)
        request.inputs[key].CopyFrom(proto)
        assert len(request.SerializeToString()) < 200
        assert fragment in refused(stub, request), name
        good_predict(stub)
    assert _peak_rss_mb() - before < 150, "a declared shape was allocated"
    # TensorFlow's convention still holds where it costs little: one value fills a small shape.
    request = predict_request(x=X, ids=IDS)
    request.inputs["ids"].CopyFrom(_declared(types_pb2.DT_INT64, [2], [1]))
    np.testing.assert_allclose(tf.make_ndarray(stub.Predict(request, timeout=10).outputs["y"]), [15.0, 4.0])


# ---- 5. numbers that poison a feed -------------------------------------------------------------

POISON = {  # case: (signature, inputs, the input the answer must name)
    "NaN in hist_play_s": ("", feed_inputs(hist_play_s=np.array([[1.0, np.nan, 0, 0]], np.float32)), "hist_play_s"),
    "+inf in hist_age_s": ("", feed_inputs(hist_age_s=np.array([[np.inf, 0, 0, 0]], np.float32)), "hist_age_s"),
    "negative play time": ("", feed_inputs(hist_play_s=np.array([[-5.0, 0, 0, 0]], np.float32)), "hist_play_s"),
    "hist_len > L": ("", feed_inputs(hist_len=np.array([L + 1], np.int64)), "hist_len"),
    "hist_len 2**32+5": ("", feed_inputs(hist_len=np.array([2 ** 32 + 5], np.int64)), "hist_len"),
    "negative hist_len": ("", feed_inputs(hist_len=np.array([-1], np.int64)), "hist_len"),
    "history id below -1": ("", feed_inputs(hist_video_id=np.array([[3, -2, -1, -1]], np.int64)), "hist_video_id"),
    "negative user id": ("", feed_inputs(user_id=np.array([-7], np.int64)), "user_id"),
    "duration_s 1e30": ("rank", rank_inputs(duration_s=np.array([[10.0, 1e30]], np.float32)), "duration_s"),
    "candidate id below -1": ("rank", rank_inputs(video_id=np.array([[5, -3]], np.int64)), "video_id"),
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_poisoned_features_are_invalid_argument_naming_the_input(stub, case):
    signature, inputs, name = POISON[case]
    details = refused(stub, predict_request(signature, model=FEED_MODEL, **inputs))
    assert f"'{name}'" in details
    good_feed(stub)


def test_padding_unknown_ids_and_the_ends_of_each_range_are_served(stub):
    """-1 is padding / unknown (§6), an id no vocabulary knows is out-of-vocabulary, not an error;
    hist_len 0 and L are the ends of its range."""
    for override in ({"hist_len": np.array([0], np.int64)}, {"hist_len": np.array([L], np.int64)},
                     {"hist_video_id": np.array([[10 ** 15, -1, -1, -1]], np.int64)}):
        response = stub.Predict(predict_request(model=FEED_MODEL, **feed_inputs(**override)), timeout=10)
        assert np.isfinite(tf.make_ndarray(response.outputs["score"])).all()
    response = stub.Predict(predict_request("rank", model=FEED_MODEL,
                                            **rank_inputs(video_id=np.array([[-1, 6]], np.int64))), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["score"]), [[20.0, 60.0]])


def test_empty_batch_and_duplicate_output_filter(stub):
    empty = {k: v[:0] for k, v in feed_inputs().items()}
    assert "empty batch" in refused(stub, predict_request(model=FEED_MODEL, **empty))
    request = predict_request(x=X, ids=IDS)
    request.output_filter.extend(["y", "y"])
    assert "duplicate" in refused(stub, request)
    good_predict(stub)


def test_unknown_signature_is_failed_precondition(stub):
    assert "nosuch" in refused(stub, predict_request("nosuch", x=X, ids=IDS), grpc.StatusCode.FAILED_PRECONDITION)
    good_predict(stub)


_ROW = {"hist_video_id": [3, 9, -1, -1], "hist_play_s": [1.5, 2.5, 0, 0], "hist_age_s": [60, 600, 0, 0],
        "hist_len": 2}
REST_POISON = {  # case: (path, body, a fragment of the error)
    "int64 2**63": (f"/v1/models/{FEED_MODEL}:predict", {"instances": [{**_ROW, "user_id": 2 ** 63}]}, "does not fit"),
    "int64 1e20": (f"/v1/models/{FEED_MODEL}:predict", {"instances": [{**_ROW, "user_id": 1e20}]}, "does not fit"),
    "int64 -2**63-1": (f"/v1/models/{FEED_MODEL}:predict", {"instances": [{**_ROW, "user_id": -2 ** 63 - 1}]},
                       ""),
    "true for an int": (f"/v1/models/{FEED_MODEL}:predict", {"instances": [{**_ROW, "user_id": True}]}, "true"),
    "hist_len > L": (f"/v1/models/{FEED_MODEL}:predict", {"instances": [{**_ROW, "user_id": 1, "hist_len": 9}]},
                     "hist_len"),
    "duplicate output_filter": ("/v1/models/toy:predict",
                                {"instances": [{"x": [1, 2, 3], "ids": 1}], "output_filter": ["y", "y"]}, "duplicate"),
}


@pytest.mark.parametrize("case", sorted(REST_POISON))
def test_rest_numbers_that_do_not_fit_are_400(server, case):
    path, body, fragment = REST_POISON[case]
    status, answer = http(server, "POST", path, body)
    assert status == 400 and fragment in answer["error"], answer
    status, _ = http(server, "POST", "/v1/models/toy:predict", {"instances": [{"x": [1, 2, 3], "ids": 1}]})
    assert status == 200


def test_rest_nan_token_in_a_feature_is_400(server):
    body = ('{"instances": [{"user_id": 1, "hist_video_id": [3, 9, -1, -1], "hist_play_s": [NaN, 2.5, 0, 0], '
            '"hist_age_s": [60, 600, 0, 0], "hist_len": 2}]}').encode()
    status, answer = http(server, "POST", f"/v1/models/{FEED_MODEL}:predict", raw=body)
    assert status == 400 and "hist_play_s" in answer["error"]


# ---- 7. REST status codes as TF Serving's ------------------------------------------------------

def _raw_http(server, data, timeout=5.0):
    """Send raw bytes, return (status, parsed JSON body) of the answer (None, None: closed)."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
            if length and len(body) >= length[0]:
                break
    if not received:
        return None, None
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body else None


REST_CODES = {  # case: (method, path, TF Serving's status)
    "malformed path": ("POST", "/v1/models/toy:explode", 400),
    "no model name": ("GET", "/v1/models", 400),
    "negative version": ("GET", "/v1/models/toy/versions/-1", 400),
    "version beyond int64": ("POST", "/v1/models/toy/versions/99999999999999999999:predict", 400),
    "PUT": ("PUT", "/v1/models/toy:predict", 400),
    "DELETE": ("DELETE", "/v1/models/toy", 400),
    "an unknown method": ("BREW", "/v1/models/toy", 400),
    "unknown version": ("GET", "/v1/models/toy/versions/9", 404),
}


@pytest.mark.parametrize("case", sorted(REST_CODES))
def test_rest_status_codes_match_tf_serving_with_a_json_error(server, case):
    method, path, code = REST_CODES[case]
    body = b'{"instances": [{"x": [1, 2, 3], "ids": 1}]}'
    status, answer = _raw_http(server, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                               .encode() + body)
    assert status == code and set(answer) == {"error"} and answer["error"], answer
    assert http(server, "POST", "/v1/models/toy:predict", {"instances": [{"x": [1, 2, 3], "ids": 1}]})[0] == 200


@pytest.mark.parametrize("length", ["-1", "abc", "1e3"])
def test_rest_malformed_content_length_is_400(server, length):
    status, answer = _raw_http(server, f"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}"
                                       "\r\n\r\n{}".encode())
    assert status == 400 and "Content-Length" in answer["error"]


def test_rest_chunked_body_is_accepted(server):
    body = b'{"instances": [{"x": [1, 2, 3], "ids": 1}]}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
    status, answer = _raw_http(server, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert status == 200 and answer["predictions"][0]["y"] == 15.0
    status, answer = _raw_http(server, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert status == 400 and "chunk" in answer["error"]


# ---- 6. REST read timeouts ---------------------------------------------------------------------

def test_slow_clients_are_cut_off_while_normal_requests_succeed(server):
    """A half-sent header and a body trickled one byte at a time each hold their connection for
    about the read timeout (1 s here), then get 408 and are closed; a client sending normal
    requests meanwhile gets every answer."""
    errors, answered, stop = [], [], threading.Event()

    def normal_client():
        while not stop.is_set():
            status, _ = http(server, "POST", "/v1/models/toy:predict", {"instances": [{"x": [1, 2, 3], "ids": 1}]})
            (answered if status == 200 else errors).append(status)

    def half_header():
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Le")
            started = time.monotonic()
            data = sock.recv(65536)
            while data and not data.endswith(b"}"):
                data += sock.recv(65536)
            return time.monotonic() - started, data

    def trickled_body():
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            started = time.monotonic()
            try:
                for _ in range(40):  # 40 bytes at 0.1 s: 4 s if the server waited for them
                    sock.sendall(b" ")
                    time.sleep(0.1)
            except OSError:
                pass  # the server closed the connection
            data = b""
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            return time.monotonic() - started, data

    normal = threading.Thread(target=normal_client)
    normal.start()
    try:
        results = {}
        threads = [threading.Thread(target=lambda f=f: results.__setitem__(f.__name__, f()))
                   for f in (half_header, trickled_body)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
    finally:
        stop.set()
        normal.join(10)
    held, data = results["half_header"]
    assert held < 3.0 and b" 408 " in data.split(b"\r\n", 1)[0], (held, data[:200])
    held, data = results["trickled_body"]
    assert b" 408 " in data.split(b"\r\n", 1)[0], data[:200]
    assert errors == [] and len(answered) > 5


# ---- 2, 3, 4, 8: the file system and the config -------------------------------------------------

class LoadLoop:
    """Predicts in a thread until stopped; counts the answers and keeps every error."""

    def __init__(self, stub):
        self.stub, self.errors, self.versions = stub, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.versions.append(served_version(self.stub))
            except grpc.RpcError as error:
                self.errors.append(f"{error.code()}: {error.details()}")
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(10)


def test_a_vanished_base_path_keeps_the_loaded_versions_serving(base, caplog):
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                              file_system_poll_wait_seconds=0.05)
    try:
        stub, model_stub = stubs(server)
        with caplog.at_level(logging.INFO, logger="serving.manager"), LoadLoop(stub) as load:
            aside = base + ".away"
            os.rename(base, aside)
            time.sleep(1.0)  # 20 polls without a base path
            os.rename(aside, base)
            time.sleep(0.3)
        assert load.errors == [] and len(load.versions) > 20 and set(load.versions) == {1}
        assert statuses(model_stub) == {1: (AVAILABLE, "")}
        logged = [r.getMessage() for r in caplog.records]
        assert sum("cannot list base path" in m and "versions [1] keep serving" in m for m in logged) == 1
        assert any("readable again" in m for m in logged)
    finally:
        server.stop()


def test_a_version_copied_non_atomically_is_retried_until_it_loads(base, toy_versions, caplog):
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                              file_system_poll_wait_seconds=0.05, max_num_load_retries=20,
                              load_retry_interval_micros=200_000)
    try:
        stub, model_stub = stubs(server)
        with caplog.at_level(logging.INFO, logger="serving.manager"), LoadLoop(stub) as load:
            target = os.path.join(base, "2")
            os.makedirs(target)
            shutil.copy(os.path.join(toy_versions[2], "saved_model.pb"), target)  # the graph first ...
            assert wait_for(lambda: 2 in statuses(model_stub) and "attempt" in statuses(model_stub)[2][1], 30)
            state, message = statuses(model_stub)[2]
            assert state == LOADING and "retrying" in message
            for name in ("variables", "assets", "assets.extra"):  # ... the rest later
                source = os.path.join(toy_versions[2], name)
                if os.path.isdir(source):
                    shutil.copytree(source, os.path.join(target, name))
            assert wait_for(lambda: statuses(model_stub)[2] == (AVAILABLE, ""), 30)
            assert wait_for(lambda: load.versions and load.versions[-1] == 2, 10)
        assert load.errors == []
        assert any("load attempt 1 of 21 failed" in r.getMessage() for r in caplog.records)
        assert any("version 2 AVAILABLE" in r.getMessage() and "failed attempts" in r.getMessage()
                   for r in caplog.records)
    finally:
        server.stop()


def _corrupt_version(base, version):
    path = os.path.join(base, str(version))
    os.makedirs(path)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    return path


@pytest.mark.parametrize("retries", [0, 3])
def test_ready_means_ready_with_a_corrupt_newest_version(base, retries):
    """Restarting over a corrupt newest version: the older one answers as soon as the server is
    up (no NOT_FOUND window), and the status says what happened to each version."""
    _corrupt_version(base, 2)
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                              file_system_poll_wait_seconds=0.05, max_num_load_retries=retries,
                              load_retry_interval_micros=100_000)
    try:
        stub, model_stub = stubs(server)
        assert served_version(stub) == 1
        state, message = statuses(model_stub)[2]
        assert (state == END) if retries == 0 else (state in (LOADING, END))
        assert message
        assert wait_for(lambda: statuses(model_stub)[2][0] == END, 30)
        assert f"failed {retries + 1} load attempts" in statuses(model_stub)[2][1] or retries == 0
        assert statuses(model_stub)[1] == (AVAILABLE, "")
        assert served_version(stub) == 1
    finally:
        server.stop()


def test_a_wrong_base_path_says_so_and_names_the_version_folder_rule(tmp_path, caplog):
    for base, fragment in ((tmp_path / "missing", "cannot list base path"),
                           (tmp_path / "flat", "no versions found under base path")):
        if base.name == "flat":
            base.mkdir()
            (base / "saved_model.pb").write_bytes(b"")  # a model put directly in the base path
        with caplog.at_level(logging.WARNING, logger="serving.manager"):
            server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=str(base),
                                      file_system_poll_wait_seconds=0)
        try:
            stub, _ = stubs(server)
            with pytest.raises(grpc.RpcError) as info:
                served_version(stub)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert fragment in info.value.details() and "folder named by a number" in info.value.details()
            assert any(fragment in r.getMessage() and str(base) in r.getMessage() for r in caplog.records)
        finally:
            server.stop()


def _config(base, labels=None):
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=TOY_MODEL_NAME, base_path=base, model_platform="tensorflow")
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return config


def test_a_reload_that_cannot_be_served_is_refused_and_the_current_config_keeps_serving(base, tmp_path):
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                              file_system_poll_wait_seconds=0)
    try:
        stub, model_stub = stubs(server)
        with LoadLoop(stub) as load:
            missing = model_management_pb2.ReloadConfigRequest(config=_config(str(tmp_path / "nowhere")))
            with pytest.raises(grpc.RpcError) as info:
                model_stub.HandleReloadConfigRequest(missing, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Could not find base path" in info.value.details()
            label = model_management_pb2.ReloadConfigRequest(config=_config(base, {"canary": 2}))
            with pytest.raises(grpc.RpcError) as info:
                model_stub.HandleReloadConfigRequest(label, timeout=30)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "canary" in info.value.details() and "not currently available" in info.value.details()
            time.sleep(0.2)
        assert load.errors == [] and load.versions
        assert server.manager.config().model_config_list.config[0].base_path == base
        assert not server.manager.config().model_config_list.config[0].version_labels
        assert statuses(model_stub) == {1: (AVAILABLE, "")}
        ok = model_management_pb2.ReloadConfigRequest(config=_config(base, {"stable": 1}))
        assert model_stub.HandleReloadConfigRequest(ok, timeout=30).status.error_code == 0
        assert served_version(stub, label="stable") == 1
    finally:
        server.stop()


def test_a_label_on_an_unavailable_version_is_refused_at_startup(base, tmp_path):
    path = tmp_path / "models.config"
    path.write_text(text_format.MessageToString(_config(base, {"canary": 2})))
    with pytest.raises(SystemExit) as info:
        start_in_process(port=0, model_config_file=str(path), file_system_poll_wait_seconds=0)
    assert "canary" in str(info.value) and "version 2" in str(info.value)


def test_a_config_file_that_is_missing_or_broken_stops_the_server_with_one_line(tmp_path):
    broken = tmp_path / "broken.config"
    broken.write_text("model_config_list { config { name: 'toy' base_path: ")
    duplicate = tmp_path / "duplicate.config"
    duplicate.write_text("model_config_list { config { name: 'toy' base_path: '/x' } config { name: 'toy' "
                         "base_path: '/y' } }")
    for flags, fragment in (({"model_config_file": str(tmp_path / "missing.config")}, "No such file"),
                            ({"model_config_file": str(broken)}, "not a valid text-format file"),
                            ({"model_config_file": str(duplicate)}, "duplicate model names"),
                            ({"model_base_path": str(tmp_path), "enable_batching": "true",
                              "batching_parameters_file": str(broken)}, "--batching_parameters_file=")):
        with pytest.raises(SystemExit) as info:
            start_in_process(port=0, file_system_poll_wait_seconds=0, **flags)
        assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_the_command_says_when_nothing_is_servable_before_it_listens(tmp_path):
    """``python -m serving.server`` over a base path without numeric version folders prints, before
    it listens, that nothing is servable, naming the base path and the folder rule; a SIGTERM
    right after it listens stops it with status 0 (the handler is in place before it says so, and
    the main thread wakes to run it whichever thread the kernel delivered it to). TensorFlow's
    start-up notices are kept off its stderr, as in every command of the project."""
    import signal
    import subprocess
    import sys
    from tests.test_logs_only import quiet_env
    base = tmp_path / "kuai"
    base.mkdir()
    (base / "saved_model.pb").write_bytes(b"")
    process = subprocess.Popen([sys.executable, "-m", "serving.server", "--port=0", f"--model_base_path={base}",
                                "--file_system_poll_wait_seconds=0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                               env=quiet_env())
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("gRPC listening"):
                break
        assert any(line.startswith("model kuai: NOTHING servable yet") and str(base) in line
                   and "folder named by a number" in line for line in lines), lines
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-2000:]
    assert "oneDNN" not in stderr and "cuInit" not in stderr, stderr[-2000:]


def test_the_client_reports_a_refused_request_and_an_unreachable_server_in_one_line(server):
    from serving import client
    features = ["--feature", "user_id=7", "--feature", "hist_video_id=3,9,-1,-1", "--feature", "hist_play_s=1,2,0,0",
                "--feature", "hist_age_s=60,600,0,0", "--model_name", FEED_MODEL]
    assert client.main(["--server", f"127.0.0.1:{server.port}", "--feature", "hist_len=2", "--json"] + features) == 0
    for target, code in ((["--server", f"127.0.0.1:{server.port}"], "gRPC INVALID_ARGUMENT"),
                         (["--rest", f"http://127.0.0.1:{server.rest_port}"], "HTTP 400")):
        with pytest.raises(SystemExit) as info:
            client.main(target + ["--feature", f"hist_len={L + 1}"] + features)
        assert str(info.value).startswith(code) and "hist_len" in str(info.value)
    for target, fragment in ((["--server", f"127.0.0.1:{free_port()}"], "gRPC UNAVAILABLE"),
                             (["--rest", f"http://127.0.0.1:{free_port()}"], "cannot reach")):
        with pytest.raises(SystemExit) as info:
            client.main(target + ["--status"])
        assert str(info.value).startswith(fragment) and "\n" not in str(info.value)
