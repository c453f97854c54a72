"""Request logging: a model config's ``logging_config`` writes ``PredictionLog``s of served calls.

Real servers on 127.0.0.1 serving the toy model (tests/fixtures_serving.py, each version
multiplies by its number), official ``tensorflow-serving-api`` stubs, the log files read back
with ``serving.prediction_log``.
"""
import os
import random
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from tests.fixtures_serving import GRPC_TRANSPORTS, TOY_MODEL_NAME, publish_version, require_transport

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve(tmp_path, toy_versions, logging, transport="python", poll=0, seed=None, models=(TOY_MODEL_NAME,),
           batching=False):
    """A server over a fresh base path holding version 1, for ``models`` (all on that base path),
    with ``logging`` = {model: (prefix, rate)} written by ``serving.model_config``."""
    from serving.model_config import write_model_config
    from serving.server import start_in_process
    base = tmp_path / "base"
    base.mkdir()
    publish_version(toy_versions[1], str(base), 1)
    config = write_model_config(str(tmp_path / "models.config"), {m: (str(base), None) for m in models}, logging)
    flags = dict(port=0, model_config_file=config, file_system_poll_wait_seconds=poll,
                 grpc_transport=require_transport(transport))
    if seed is not None:
        flags["request_log_seed"] = seed
    if batching:
        flags["enable_batching"] = "true"
    server = start_in_process(**flags)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    return server, str(base), channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict_request(ids, model=TOY_MODEL_NAME, signature=""):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    x = np.arange(len(ids) * 3, dtype=np.float32).reshape(len(ids), 3) / 7
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    request.inputs["ids"].CopyFrom(tf.make_tensor_proto(np.asarray(ids, np.int64)))
    return request


def _example_input(proto, values):
    for a in values:
        proto.input.example_list.examples.add().features.feature["a"].float_list.value.append(a)
    return proto


@pytest.mark.parametrize("transport", GRPC_TRANSPORTS)
def test_every_successful_request_is_logged_with_its_version_and_tensors(tmp_path, toy_versions, transport):
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, regression_pb2
    from serving.prediction_log import read_records, read_table
    prefix = str(tmp_path / "logs" / "toy")
    server, _, channel, stub = _serve(tmp_path, toy_versions, {TOY_MODEL_NAME: (prefix, 1.0)}, transport)
    sent = []
    try:
        for n in range(12):
            request = _predict_request([100 * n + k for k in range(1 + n % 3)])
            sent.append((request, stub.Predict(request, timeout=10)))
        classify = _example_input(classification_pb2.ClassificationRequest(), [0.5, -1.0])
        classify.model_spec.name, classify.model_spec.signature_name = TOY_MODEL_NAME, "classify"
        classified = stub.Classify(classify, timeout=10)
        regress = _example_input(regression_pb2.RegressionRequest(), [2.0])
        regress.model_spec.name, regress.model_spec.signature_name = TOY_MODEL_NAME, "regress"
        regressed = stub.Regress(regress, timeout=10)
        files = server.manager.request_logger.files(TOY_MODEL_NAME)
    finally:
        channel.close()
        server.stop()  # flushes and closes the log
    assert len(files) == 1 and os.path.basename(files[0]).startswith("toy-") and files[0].endswith(".tfrecord")
    records = list(read_records(prefix))
    assert len(records) == 12 + 2  # every call, in the order answered (sequential here), warmup excluded
    for (request, response), record in zip(sent, records):
        assert record.WhichOneof("log_type") == "predict_log"
        assert record.predict_log.request == request and record.predict_log.response == response
        spec = record.log_metadata.model_spec
        assert (spec.name, spec.version.value, spec.signature_name) == (TOY_MODEL_NAME, 1, "serving_default")
        assert record.log_metadata.sampling_config.sampling_rate == 1.0
        assert abs(record.log_metadata.timestamp_secs - time.time()) < 600
    assert records[12].classify_log.response == classified and records[13].regress_log.response == regressed
    assert records[12].log_metadata.model_spec.signature_name == "classify"

    rows = read_table(prefix)
    predict_rows = [r for r in rows if r["kind"] == "predict"]
    assert len(predict_rows) == sum(1 + n % 3 for n in range(12))  # one row per request row
    ids = np.concatenate([tf.make_ndarray(r.inputs["ids"]) for r, _ in sent])
    np.testing.assert_array_equal([r["input.ids"] for r in predict_rows], ids)
    for row in predict_rows:
        assert row["version"] == 1 and row["output.version"] == 1.0 and row["input.x"].shape == (3,)
        np.testing.assert_allclose(row["output.y"], row["input.x"] @ [1, 2, 3] + row["input.ids"], rtol=1e-6)
    classify_rows = [r for r in rows if r["kind"] == "classify"]
    assert [r["output.classes"] for r in classify_rows] == [["pos", "neg"]] * 2
    np.testing.assert_allclose(classify_rows[0]["output.scores"], [1 / (1 + np.exp(-0.5)), 1 - 1 / (1 + np.exp(-0.5))],
                               rtol=1e-5)
    assert [r["output.value"] for r in rows if r["kind"] == "regress"] == [2.0]
    assert [(r["record"], r["row"]) for r in read_table(prefix, signature="classify")] == [(12, 0), (12, 1)]


def test_a_failed_request_is_not_logged(tmp_path, toy_versions):
    import tensorflow as tf
    from serving.prediction_log import read_table
    prefix = str(tmp_path / "logs" / "toy")
    server, _, channel, stub = _serve(tmp_path, toy_versions, {TOY_MODEL_NAME: (prefix, 1.0)})
    bad = []
    wrong_dtype = _predict_request([1])
    wrong_dtype.inputs["ids"].CopyFrom(tf.make_tensor_proto([1.5], dtype=tf.float32))
    bad.append((wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT))
    bad.append((_predict_request([1], signature="nosuch"), grpc.StatusCode.FAILED_PRECONDITION))
    wrong_version = _predict_request([1])
    wrong_version.model_spec.version.value = 9
    bad.append((wrong_version, grpc.StatusCode.NOT_FOUND))
    empty = _predict_request([])
    bad.append((empty, grpc.StatusCode.INVALID_ARGUMENT))
    try:
        for n, (request, code) in enumerate(bad):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(request, timeout=10)
            assert refused.value.code() == code
            stub.Predict(_predict_request([n]), timeout=10)  # a good one after each bad one
    finally:
        channel.close()
        server.stop()
    assert [row["input.ids"] for row in read_table(prefix)] == list(range(len(bad)))


def test_sampling_rate_zero_logs_nothing_and_half_logs_about_half(tmp_path, toy_versions):
    from serving.prediction_log import log_files, read_table
    zero, half = str(tmp_path / "logs" / "zero"), str(tmp_path / "logs" / "half")
    seed, calls = 7, 200
    server, _, channel, stub = _serve(tmp_path, toy_versions, {"never": (zero, 0.0), "half": (half, 0.5)},
                                      seed=seed, models=("never", "half"))
    try:
        for n in range(calls):
            for model in ("never", "half"):
                stub.Predict(_predict_request([n], model=model), timeout=10)
    finally:
        channel.close()
        server.stop()
    assert len(log_files(zero)) == 1 and read_table(zero) == []
    logged = [row["input.ids"] for row in read_table(half)]
    # Each logger draws once per successful call from random.Random(seed): the count is fixed by the seed.
    sampler = random.Random(seed)
    expected = sum(sampler.random() < 0.5 for _ in range(calls))
    assert len(logged) == expected and 60 <= len(logged) <= 140
    assert logged == sorted(set(logged)) and set(logged) <= set(range(calls))


def test_each_record_names_the_version_that_answered_across_a_swap(tmp_path, toy_versions):
    """Version 2 appears in the base path while four clients send requests: every record names
    the version that answered it, and both versions are in the log. With batching on the C++
    transport, so the records are written from the batch threads that answer."""
    from serving.prediction_log import read_table
    prefix = str(tmp_path / "logs" / "toy")
    server, base, channel, stub = _serve(tmp_path, toy_versions, {TOY_MODEL_NAME: (prefix, 1.0)}, "native", poll=0.2,
                                         batching=True)
    answered, errors, stop = {}, [], threading.Event()
    lock = threading.Lock()

    def client(k):
        n = 0
        while not stop.is_set():
            call_id = k * 1_000_000 + n
            n += 1
            try:
                response = stub.Predict(_predict_request([call_id]), timeout=10)
            except grpc.RpcError as error:
                errors.append(error)
                continue
            with lock:
                answered[call_id] = response.model_spec.version.value

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        publish_version(toy_versions[2], base, 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(v == 2 for v in list(answered.values())) < 50:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        channel.close()
        server.stop()
    assert not errors
    rows = read_table(prefix)
    assert {v for v in answered.values()} == {1, 2}
    assert {int(row["input.ids"]): row["version"] for row in rows} == answered  # every call, its version
    for row in rows:
        assert row["output.version"] == row["version"]  # the toy model's own answer agrees


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    """The writer stalled (its write lock held, as a slow disk would): submissions beyond the
    queue return at once and are counted as dropped; what was queued is written at close."""
    from tensorflow_serving.apis import logging_pb2, predict_pb2
    from serving.prediction_log import read_records
    from serving.request_logger import TFRecordCollector
    collector = TFRecordCollector(str(tmp_path / "q"), queue_records=2)
    accepted = []
    with collector.write_lock:
        started = time.monotonic()
        for n in range(20):
            metadata = logging_pb2.LogMetadata(timestamp_secs=n)
            if collector.submit(("predict", predict_pb2.PredictRequest(), predict_pb2.PredictResponse(), metadata)):
                accepted.append(n)
        assert time.monotonic() - started < 1.0
        # the queue's two and at most one the writer took before it stalled
        assert 2 <= len(accepted) <= 3 and collector.dropped == 20 - len(accepted)
    collector.close()
    assert collector.written == len(accepted)
    assert [r.log_metadata.timestamp_secs for r in read_records(collector.path)] == accepted


def test_a_log_still_being_written_reads_up_to_its_last_complete_record(tmp_path):
    from tensorflow_serving.apis import logging_pb2, predict_pb2
    from serving.prediction_log import read_records
    from serving.request_logger import TFRecordCollector
    collector = TFRecordCollector(str(tmp_path / "t"))
    for n in range(3):
        collector.submit(("predict", predict_pb2.PredictRequest(), predict_pb2.PredictResponse(),
                          logging_pb2.LogMetadata(timestamp_secs=n)))
    collector.close()
    with open(collector.path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00half a record")  # a length, then fewer bytes than it says
    assert [r.log_metadata.timestamp_secs for r in read_records(collector.path)] == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="no request log files .*nosuch-\\*.tfrecord"):
        list(read_records(str(tmp_path / "nosuch")))


def test_models_with_the_same_logging_config_share_one_file_as_in_tf_serving(tmp_path):
    from serving.model_config import add_request_logging, model_server_config
    from serving.request_logger import ServerRequestLogger
    prefix = str(tmp_path / "shared")
    config = add_request_logging(model_server_config({"a": (str(tmp_path), None), "b": (str(tmp_path), None),
                                                      "c": (str(tmp_path), None)}),
                                 {"a": (prefix, 0.5), "b": (prefix, 0.5), "c": (prefix, 1.0)})
    loggers = ServerRequestLogger()
    try:
        loggers.update(config)
        assert loggers.files("a") == loggers.files("b") != loggers.files("c")
        assert len(loggers.stats()) == 2
    finally:
        loggers.close()
    with pytest.raises(ValueError, match="models the config lacks: \\['d'\\]"):
        add_request_logging(model_server_config({"a": (str(tmp_path), None)}), {"d": (prefix, 1.0)})


BAD_LOGGING = {
    "type": ('type: "kafka" filename_prefix: "/tmp/x"', 1.0,
             "logging_config.log_collector_config.type 'kafka' is not supported (this server writes: tfrecord)"),
    "prefix": ('type: "tfrecord"', 1.0, "logging_config.log_collector_config.filename_prefix is empty"),
    "rate": ('type: "tfrecord" filename_prefix: "/tmp/x"', 1.5, "sampling_config.sampling_rate 1.5 is outside [0, 1]"),
}


def _bad_config(tmp_path, base, collector, rate):
    path = tmp_path / "bad.config"
    path.write_text(f'model_config_list {{ config {{ name: "toy" base_path: "{base}" model_platform: "tensorflow" '
                    f'logging_config {{ log_collector_config {{ {collector} }} sampling_config {{ sampling_rate: {rate} }} '
                    '} } }')
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_LOGGING))
def test_a_bad_logging_config_is_refused_at_startup(tmp_path, toy_base, case):
    from serving.server import start_in_process
    collector, rate, message = BAD_LOGGING[case]
    with pytest.raises(SystemExit) as stopped:
        start_in_process(port=0, model_config_file=_bad_config(tmp_path, toy_base, collector, rate),
                         grpc_transport="python")
    text = str(stopped.value)
    assert text.startswith("cannot start: model 'toy': ") and message in text and "\n" not in text


def test_a_log_that_cannot_be_opened_is_refused_at_startup(tmp_path, toy_base):
    from serving.server import start_in_process
    (tmp_path / "a_file").write_text("")
    config = _bad_config(tmp_path, toy_base, f'type: "tfrecord" filename_prefix: "{tmp_path}/a_file/toy"', 1.0)
    with pytest.raises(SystemExit) as stopped:
        start_in_process(port=0, model_config_file=config, grpc_transport="python")
    text = str(stopped.value)
    assert text.startswith(f"cannot start: model 'toy': cannot open the request log {tmp_path}/a_file/toy-")
    assert "\n" not in text


@pytest.mark.slow
def test_the_command_refuses_an_unsupported_collector_type_with_one_line(tmp_path, toy_base):
    collector, rate, message = BAD_LOGGING["type"]
    from tests.test_logs_only import quiet_env
    run = subprocess.run([sys.executable, "-m", "serving.server", "--port=0",
                          f"--model_config_file={_bad_config(tmp_path, toy_base, collector, rate)}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=quiet_env())
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"cannot start: model 'toy': {message}"


def test_a_reload_keeps_an_unchanged_log_opens_a_changed_one_and_refuses_a_bad_one(tmp_path, toy_versions):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2
    from serving.prediction_log import log_files, read_table
    prefix = str(tmp_path / "logs" / "toy")
    server, _, channel, stub = _serve(tmp_path, toy_versions, {TOY_MODEL_NAME: (prefix, 1.0)})
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    with open(tmp_path / "models.config") as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())

    def reload(changed):
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(changed)
        return models.HandleReloadConfigRequest(request, timeout=30)

    try:
        stub.Predict(_predict_request([0]), timeout=10)
        reload(config)  # the same logging_config: the same file goes on
        stub.Predict(_predict_request([1]), timeout=10)
        assert len(log_files(prefix)) == 1
        bad = type(config)()
        bad.CopyFrom(config)
        bad.model_config_list.config[0].logging_config.log_collector_config.type = "kafka"
        with pytest.raises(grpc.RpcError) as refused:
            reload(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'kafka'" in refused.value.details()
        stub.Predict(_predict_request([2]), timeout=10)  # still served and logged as before
        changed = type(config)()
        changed.CopyFrom(config)
        changed.model_config_list.config[0].logging_config.sampling_config.sampling_rate = 0.0
        reload(changed)  # a changed config: the old file is closed, a new one opened
        stub.Predict(_predict_request([3]), timeout=10)
    finally:
        channel.close()
        server.stop()
    first, second = log_files(prefix)
    assert [row["input.ids"] for row in read_table(first)] == [0, 1, 2] and read_table(second) == []


def test_the_exported_recommender_s_log_reads_back_as_users_and_their_feeds(kuai_exports, tiny_examples_dir,
                                                                             tmp_path):
    """The ``recommend`` signature of a real export, logged and read back: one row per user with its
    ``user_id`` and ``hist_len`` and the ``top_n`` videos it was served, under the version that served."""
    import json
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from tfrec_kuai.data import examples
    from tfrec_kuai.export import saved_model as E
    from serving.model_config import write_model_config
    from serving.prediction_log import read_table
    from serving.server import start_in_process
    prefix = str(tmp_path / "logs" / "kuai")
    config = write_model_config(str(tmp_path / "models.config"),
                                {"kuai": (os.path.join(kuai_exports["base"], "kuai_portable"), None)},
                                {"kuai": (prefix, 1.0)})
    history_length = json.load(open(os.path.join(tiny_examples_dir, "metadata.json")))["history_length"]
    features = E.parse_examples(examples.read_serialized_examples(tiny_examples_dir, "eval", 4), history_length)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "kuai", "recommend"
    for key, value in E.user_inputs(features).items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    server = start_in_process(port=0, model_config_file=config, file_system_poll_wait_seconds=0,
                              grpc_transport="python")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    finally:
        channel.close()
        server.stop()
    served = tf.make_ndarray(response.outputs["video_id"])
    rows = read_table(prefix, signature="recommend")
    assert len(rows) == len(features["user_id"]) == served.shape[0]
    for i, row in enumerate(rows):
        assert (row["model"], row["version"], row["row"]) == ("kuai", 1, i)
        assert row["input.user_id"] == features["user_id"][i] and row["input.hist_len"] == features["hist_len"][i]
        np.testing.assert_array_equal(row["output.video_id"], served[i])
        assert row["output.video_id"].shape == (10,)  # the fixture exports top_n 10
