"""The exported recommender behind the server: both variants, every signature, every API.

One server process is started from the command line exactly as a user would
(``python -m serving.server --model_config_file=...``): it must load the op library to run the
fused export, replay both exports' warmup requests, and answer the official stubs, plain HTTP and
``python -m serving.client``.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_status_pb2, inference_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from tfrec_kuai.data import examples
from tfrec_kuai.export import saved_model as E
from tfrec_kuai.schema import BINARY_LABELS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def kuai_server(kuai_exports, tmp_path_factory):
    """``python -m serving.server`` serving kuai (fused) and kuai_portable; yields (grpc port, rest port)."""
    base = kuai_exports["base"]
    config = tmp_path_factory.mktemp("kuai_config") / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{os.path.join(base, name)}" model_platform: "tensorflow" }}\n'
        for name in ("kuai", "kuai_portable")) + "}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--port=0", "--rest_api_port=-1", f"--model_config_file={config}",
         "--file_system_poll_wait_seconds=0", "--enable_batching"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports, lines = {}, []
    deadline = time.monotonic() + 240
    while len(ports) < 2 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        for kind in ("gRPC", "REST"):
            if line.startswith(f"{kind} listening on"):
                ports[kind] = int(line.rsplit(":", 1)[1])
    if len(ports) < 2:
        process.kill()
        pytest.fail("server did not start:\n" + "".join(lines[-40:]))
    try:
        yield ports["gRPC"], ports["REST"]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def kuai_stub(kuai_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{kuai_server[0]}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def eval_rows(tiny_examples_dir):
    serialized = examples.read_serialized_examples(tiny_examples_dir, "eval", 3)
    history_length = json.load(open(os.path.join(tiny_examples_dir, "metadata.json")))["history_length"]
    return serialized, E.parse_examples(serialized, history_length), examples.read_corpus(tiny_examples_dir)


def _predict(stub, model, signature, inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return {k: tf.make_ndarray(v) for k, v in stub.Predict(request, timeout=60).outputs.items()}


def test_both_variants_available_after_warmup(kuai_stub):
    _, model_stub = kuai_stub
    for name in ("kuai", "kuai_portable"):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        statuses = model_stub.GetModelStatus(request).model_version_status
        assert [(s.version, s.state) for s in statuses] == [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_every_signature_over_grpc_fused_matches_portable(kuai_stub, eval_rows):
    stub, _ = kuai_stub
    serialized, features, corpus = eval_rows
    candidates = {k: v[:200] for k, v in corpus.items()}
    requests = {"recommend": E.user_inputs(features), "": E.user_inputs(features),
                "retrieve": E.user_inputs(features), "rank": E.rank_inputs(features, candidates)}
    for signature, inputs in requests.items():
        fused = _predict(stub, "kuai", signature, inputs)
        portable = _predict(stub, "kuai_portable", signature, inputs)
        assert fused.keys() == portable.keys()
        for key in fused:
            np.testing.assert_allclose(fused[key], portable[key], rtol=1e-4, atol=1e-5, err_msg=f"{signature}/{key}")
    rank = _predict(stub, "kuai", "rank", requests["rank"])
    assert rank["score"].shape == (3, len(candidates["video_id"]))
    assert set(rank) == set(E.RANK_OUTPUTS)


def test_classify_regress_multi_inference_on_examples(kuai_stub, eval_rows):
    stub, _ = kuai_stub
    serialized, features, _ = eval_rows
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "kuai"
    classify.model_spec.signature_name = "examples"
    for record in serialized:
        classify.input.example_list.examples.add().ParseFromString(record)
    result = stub.Classify(classify, timeout=60).result
    assert len(result.classifications) == 3
    assert [c.label for c in result.classifications[0].classes] == list(BINARY_LABELS)
    assert all(0.0 <= c.score <= 1.0 for r in result.classifications for c in r.classes)

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "kuai_portable"
    regress.model_spec.signature_name = "examples_score"
    regress.input.CopyFrom(classify.input)
    scores = [r.value for r in stub.Regress(regress, timeout=60).result.regressions]
    # The Regress score of an example = rank's score of its own video for its own user.
    own = {k: features[k][:, None] for k in E.CANDIDATE_FEATURES}
    ranked = _predict(stub, "kuai_portable", "rank", dict(E.user_inputs(features), **own))
    np.testing.assert_allclose(scores, ranked["score"][:, 0], rtol=1e-4, atol=1e-5)

    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("examples", "tensorflow/serving/classify"),
                              ("examples_score", "tensorflow/serving/regress")):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = "kuai"
        task.model_spec.signature_name = signature
    multi.input.CopyFrom(classify.input)
    results = stub.MultiInference(multi, timeout=60).results
    assert len(results[0].classification_result.classifications) == 3
    assert len(results[1].regression_result.regressions) == 3


def test_bad_requests_to_the_recommender_then_good(kuai_stub, eval_rows):
    stub, _ = kuai_stub
    _, features, _ = eval_rows
    inputs = E.user_inputs(features)
    bad = dict(inputs, hist_video_id=inputs["hist_video_id"][:, :5])  # history of the wrong length
    with pytest.raises(grpc.RpcError) as info:
        _predict(stub, "kuai", "recommend", bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hist_video_id" in info.value.details()
    bad = dict(inputs, user_id=inputs["user_id"].astype(np.float32))
    with pytest.raises(grpc.RpcError) as info:
        _predict(stub, "kuai", "recommend", bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _predict(stub, "kuai", "recommend", inputs)["video_id"].shape[0] == 3


def test_poisoned_features_are_refused_by_both_variants_then_good(kuai_stub, eval_rows):
    """The §6 value rules (serving/input_checks.py) on the real signatures, fused and portable:
    NaN play time, +inf age, hist_len > L, a duration of 1e30, an id below -1 and an empty batch
    are INVALID_ARGUMENT naming the input, where they would have scored NaN or won the ranking."""
    stub, _ = kuai_stub
    _, features, corpus = eval_rows
    inputs = E.user_inputs(features)
    length = inputs["hist_play_s"].shape[1]
    play = inputs["hist_play_s"].copy()
    play[0, 0] = np.nan
    age = inputs["hist_age_s"].copy()
    age[1, 0] = np.inf
    candidates = {k: v[:20] for k, v in corpus.items()}
    ranked = E.rank_inputs(features, candidates)
    duration = ranked["duration_s"].copy()
    duration[0, 3] = 1e30
    cases = [("recommend", dict(inputs, hist_play_s=play), "hist_play_s"),
             ("retrieve", dict(inputs, hist_age_s=age), "hist_age_s"),
             ("recommend", dict(inputs, hist_len=np.full_like(inputs["hist_len"], length + 1)), "hist_len"),
             ("recommend", dict(inputs, hist_len=np.full_like(inputs["hist_len"], 2 ** 32 + 5)), "hist_len"),
             ("rank", dict(ranked, duration_s=duration), "duration_s"),
             ("rank", dict(ranked, video_id=np.full_like(ranked["video_id"], -2)), "video_id"),
             ("recommend", {k: v[:0] for k, v in inputs.items()}, "empty batch")]
    for model in ("kuai", "kuai_portable"):
        for signature, bad, name in cases:
            with pytest.raises(grpc.RpcError) as info:
                _predict(stub, model, signature, bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (model, signature, info.value.details())
            assert name in info.value.details()
        assert np.isfinite(_predict(stub, model, "rank", ranked)["score"]).all()


def test_rest_predict_on_the_recommender(kuai_server, eval_rows):
    _, features, _ = eval_rows
    instances = [{k: np.asarray(v[i]).tolist() for k, v in E.user_inputs(features).items()} for i in range(2)]
    request = urllib.request.Request(f"http://127.0.0.1:{kuai_server[1]}/v1/models/kuai:predict",
                                     data=json.dumps({"signature_name": "recommend", "instances": instances}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        predictions = json.loads(response.read())["predictions"]
    assert len(predictions) == 2 and len(predictions[0]["video_id"]) == 10
    assert predictions[0]["score"] == sorted(predictions[0]["score"], reverse=True)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_client_command(kuai_server, tiny_examples_dir, transport, capsys):
    from serving import client
    target = ["--server", f"127.0.0.1:{kuai_server[0]}"] if transport == "grpc" else [
        "--rest", f"http://127.0.0.1:{kuai_server[1]}"]
    assert client.main(target + ["--examples", tiny_examples_dir, "--signature", "recommend"]) == 0
    out = capsys.readouterr().out
    assert "video_id" in out and "p_skip" in out and out.count("\n") > 10
    assert client.main(target + ["--examples", tiny_examples_dir, "--signature", "rank", "--num_candidates", "5"]) == 0
    assert "score" in capsys.readouterr().out
    assert client.main(target + ["--examples", tiny_examples_dir, "--method", "classify", "--count", "2"]) == 0
    assert "skip" in capsys.readouterr().out
    assert client.main(target + ["--metadata"]) == 0
    assert "hist_feedback" in capsys.readouterr().out
