"""Versions coming and going while the server runs, dynamic batching, config reloads and TLS.

Each test starts its own server on free loopback ports over a base path it controls, then
changes the folder (or the config) the way a deployment would.
"""
import logging
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving.server import start_in_process
from tests.fixtures_serving import GRPC_TRANSPORTS, TOY_MODEL_NAME, publish_version, require_transport
from tests.test_serving import predict_request

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
X1 = np.array([[1.0, 2.0, 3.0]], np.float32)


def stubs(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)


def served_version(stub, **spec):
    response = stub.Predict(predict_request(x=X1, ids=np.array([0]), **spec), timeout=10)
    return int(tf.make_ndarray(response.outputs["version"])[0])


def statuses(model_stub, name=TOY_MODEL_NAME):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return {s.version: (s.state, s.status.error_message) for s in model_stub.GetModelStatus(request).model_version_status}


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["false", "true"])
def test_hot_swap_under_concurrent_load_then_broken_version(base, toy_versions, batching):
    # With batching the old version's batcher is closed during the swap: requests already holding
    # the old version must still be answered (they run unbatched).
    # One load attempt per version (retries: tests/test_serving_faults.py), so a broken one is END at once.
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                              file_system_poll_wait_seconds=0.1, enable_batching=batching, max_num_load_retries=0)
    try:
        stub, model_stub = stubs(server)
        errors, seen, timeline, stop = [], [], [], threading.Event()

        def client():
            while not stop.is_set():
                try:
                    started = time.monotonic()
                    version = served_version(stub)
                    seen.append(version)
                    timeline.append((started, time.monotonic(), version))
                except grpc.RpcError as error:
                    errors.append(f"{error.code()}: {error.details()}")

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        publish_version(toy_versions[2], base, 2)
        assert wait_for(lambda: seen and seen[-1] == 2), "version 2 never served"
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
        assert errors == []
        assert seen[0] == 1 and seen[-1] == 2
        # A request that starts after version 2 first answered never gets version 1 (no flip-flop).
        first_two = min(end for _, end, version in timeline if version == 2)
        assert all(version == 2 for start, _, version in timeline if start > first_two)
        assert wait_for(lambda: statuses(model_stub).get(1, (None,))[0] == END)
        assert statuses(model_stub)[2] == (AVAILABLE, "")

        # A version whose folder is broken is reported; version 2 keeps serving.
        broken = os.path.join(base, ".tmp-3")
        os.makedirs(broken)
        with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
            f.write(b"this is not a SavedModel")
        os.rename(broken, os.path.join(base, "3"))
        assert wait_for(lambda: 3 in statuses(model_stub))
        state, message = statuses(model_stub)[3]
        assert state == END and message
        assert served_version(stub) == 2

        # A version whose warmup fails never becomes AVAILABLE either.
        publish_version(toy_versions["bad_warmup"], base, 4)
        assert wait_for(lambda: 4 in statuses(model_stub) and statuses(model_stub)[4][0] == END)
        assert "warmup failed" in statuses(model_stub)[4][1]
        assert served_version(stub) == 2
        assert statuses(model_stub)[2] == (AVAILABLE, "")
    finally:
        server.stop()


def test_available_only_once_warm(base, toy_versions):
    # Many warmup iterations make the load of version 2 take a while; meanwhile it is LOADING
    # and version 1 answers.
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                              file_system_poll_wait_seconds=0.05, num_request_iterations_for_warmup=400)
    try:
        stub, model_stub = stubs(server)
        publish_version(toy_versions[2], base, 2)
        assert wait_for(lambda: 2 in statuses(model_stub), timeout=10)
        state = statuses(model_stub)[2][0]
        assert state == get_model_status_pb2.ModelVersionStatus.LOADING
        assert served_version(stub) == 1
        assert wait_for(lambda: statuses(model_stub)[2][0] == AVAILABLE, timeout=60)
        assert server.manager.status(TOY_MODEL_NAME, 2)[0].warmup_requests == 800
        assert served_version(stub) == 2
    finally:
        server.stop()


def test_version_policies_and_labels(tmp_path, base, toy_versions):
    publish_version(toy_versions[2], base, 2)
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=TOY_MODEL_NAME, base_path=base, model_platform="tensorflow")
    model.model_version_policy.all.SetInParent()
    model.version_labels["stable"] = 1
    model.version_labels["canary"] = 2
    config_file = tmp_path / "models.config"
    config_file.write_text(text_format.MessageToString(config))
    server = start_in_process(port=0, model_config_file=str(config_file), file_system_poll_wait_seconds=0)
    try:
        stub, model_stub = stubs(server)
        assert {v: s[0] for v, s in statuses(model_stub).items()} == {1: AVAILABLE, 2: AVAILABLE}
        assert served_version(stub) == 2  # no version asked: the latest
        assert served_version(stub, version=1) == 1
        assert served_version(stub, label="stable") == 1
        assert served_version(stub, label="canary") == 2

        # Reload the config: only version 1 (specific policy), labels gone.
        model.ClearField("version_labels")
        model.model_version_policy.specific.versions.append(1)
        request = model_management_pb2.ReloadConfigRequest(config=config)
        assert model_stub.HandleReloadConfigRequest(request).status.error_code == 0
        assert statuses(model_stub)[2][0] == END
        assert served_version(stub) == 1
        with pytest.raises(grpc.RpcError) as info:
            served_version(stub, version=2)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            served_version(stub, label="canary")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_dynamic_batching_merges_concurrent_requests(tmp_path, base, caplog):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 20000 }\n"
                      "num_batch_threads { value: 1 }\n")
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base, enable_batching="true",
                              batching_parameters_file=str(params), file_system_poll_wait_seconds=0)
    try:
        stub, _ = stubs(server)
        results, errors = {}, []

        def client(i):
            try:
                for j in range(5):
                    ids = np.array([i * 100 + j], np.int64)
                    response = stub.Predict(predict_request(x=X1 * i, ids=ids), timeout=10)
                    results[(i, j)] = float(tf.make_ndarray(response.outputs["y"])[0])
            except grpc.RpcError as error:
                errors.append(error)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        # Every request got *its own* rows back out of the merged batch.
        assert results == {(i, j): pytest.approx(14.0 * i + i * 100 + j) for i in range(8) for j in range(5)}
        stats = server.manager.get_servable(TOY_MODEL_NAME).batch_stats()["serving_default"]
        assert stats["rows"] >= 40 and stats["max_batch"] > 1 and stats["calls"] < stats["rows"]

        # A request above max_batch_size is refused, the next one served.
        big = np.ones((17, 3), np.float32)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request(x=big, ids=np.arange(17)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert served_version(stub) == 1
        # Different inner shapes are never merged into one batch, and each still answers right.
        scaled = stub.Predict(predict_request("scale", x=np.ones((1, 7), np.float32)))
        assert tf.make_ndarray(scaled.outputs["scaled"]).shape == (1, 7)
        # A signature without a batch dimension in its outputs runs unbatched.
        assert float(tf.make_ndarray(stub.Predict(predict_request("total", x=X1)).outputs["total"])) == 6.0
        # Unloading the version logs how large its batches were.
        stats = server.manager.get_servable(TOY_MODEL_NAME).batch_stats()["serving_default"]
        with caplog.at_level(logging.INFO, logger="serving.batching"):
            server.stop()
            server = None
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith(
            f"batching {TOY_MODEL_NAME}/1/serving_default:")]
        assert len(logged) == 1 and f"{stats['rows']} requests' rows in {stats['calls']} calls" in logged[0]
    finally:
        if server is not None:
            server.stop()


def _self_signed(tmp_path):
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("transport", GRPC_TRANSPORTS)
def test_tls(tmp_path, base, transport):
    from serving.ssl_config import SSLConfig
    key_pem, cert_pem = _self_signed(tmp_path)
    ssl_file = tmp_path / "ssl.config"
    ssl_file.write_text(text_format.MessageToString(SSLConfig(server_key=key_pem, server_cert=cert_pem)))
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                              file_system_poll_wait_seconds=0, ssl_config_file=str(ssl_file),
                              grpc_transport=require_transport(transport))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem.encode())
        channel = grpc.secure_channel(f"127.0.0.1:{server.port}", credentials,
                                      options=[("grpc.ssl_target_name_override", "localhost")])
        assert served_version(prediction_service_pb2_grpc.PredictionServiceStub(channel)) == 1
        plain = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        with pytest.raises(grpc.RpcError):
            served_version(plain)
    finally:
        server.stop()


def test_missing_base_path_then_version_appears(tmp_path, toy_versions):
    base = str(tmp_path / "later" / TOY_MODEL_NAME)
    server = start_in_process(port=0, model_name=TOY_MODEL_NAME, model_base_path=base,
                              file_system_poll_wait_seconds=0.1)
    try:
        stub, _ = stubs(server)
        with pytest.raises(grpc.RpcError) as info:
            served_version(stub)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        os.makedirs(base)
        os.makedirs(os.path.join(base, "1"))  # an empty folder (export in progress) is not loaded
        time.sleep(0.3)
        shutil.rmtree(os.path.join(base, "1"))
        publish_version(toy_versions[1], base, 1)
        assert wait_for(lambda: _answers(stub))
    finally:
        server.stop()


def _answers(stub):
    try:
        return served_version(stub) == 1
    except grpc.RpcError:
        return False


def test_example_configs_parse():
    from serving.batching import BatchingOptions
    from serving.model_config import CONFIGS as REPO_CONFIGS
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(open(os.path.join(REPO_CONFIGS, "models.config")).read(), config)
    names = [c.name for c in config.model_config_list.config]
    assert names == ["kuai", "kuai_portable"]
    assert dict(config.model_config_list.config[1].version_labels) == {"stable": 1, "canary": 2}
    options = BatchingOptions.from_file(os.path.join(REPO_CONFIGS, "batching_parameters.txt"))
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads) == (32, 1000, 1)


def test_batching_options_text_round_trip():
    """``to_text`` (what the export and the benchmark write) reads back to the same options."""
    from serving.batching import BatchingOptions
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=250, max_enqueued_batches=7,
                              num_batch_threads=3, allowed_batch_sizes=(2, 8), pad_variable_length_inputs=True)
    again = BatchingOptions.from_text(options.to_text())
    assert repr(again) == repr(options) and again.pad_variable_length_inputs


def test_batcher_answers_each_request_once_even_when_one_completion_fails():
    """``submit_async`` calls each request's ``done`` once from the batch thread; a completion that
    raises costs no other request its answer, and the batcher keeps running."""
    from serving.batching import Batcher, BatchingOptions
    calls, answers = [], {}
    everyone = threading.Event()

    def run(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    def done_for(i):
        def done(outputs, error):
            answers.setdefault(i, []).append((outputs, error))
            if len(answers) == 4:
                everyone.set()
            if i == 1:
                raise RuntimeError("this caller's completion is broken")
        return done

    batcher = Batcher(run, BatchingOptions(max_batch_size=4, batch_timeout_micros=300_000, num_batch_threads=1))
    try:
        for i in range(4):
            batcher.submit_async({"x": np.array([i])}, done_for(i))
        assert everyone.wait(30)
        assert calls == [4]  # one merged call
        for i in range(4):
            [(outputs, error)] = answers[i]
            assert error is None and outputs["y"].tolist() == [2 * i]
        with pytest.raises(Exception) as info:  # refused at the door: raised, not passed to done
            batcher.submit_async({"x": np.zeros(5)}, done_for(9))
        assert "larger than maximum" in str(info.value) and 9 not in answers
        assert batcher.submit({"x": np.array([7])})["y"].tolist() == [14]
    finally:
        batcher.close()
