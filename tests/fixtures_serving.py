"""Session fixtures for the serving tests: a small *real* SavedModel and servers that serve it.

The toy model is a ``tf.Module`` with several named signatures — Predict-style ones (one batched
with two inputs, one with a free inner dimension, one whose output is not batched) and two that
take serialized ``tf.Example`` for Classify and Regress — plus TF Serving warmup records. Each
version multiplies by its version number, so a response tells which version answered.
"""
import os
import shutil
import socket

import pytest

import tfrec_kuai  # noqa: F401
from tests.native_required import missing_native

TOY_MODEL_NAME = "toy"


def build_toy_saved_model(path, version, warmup="good"):
    """Write a toy SavedModel for ``version`` at ``path`` (warmup: 'good' | 'bad' | None)."""
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2
    from serving.warmup import write_warmup_requests

    class Toy(tf.Module):
        def __init__(self):
            super().__init__()
            self.version = tf.Variable(float(version))
            self.w = tf.Variable([[1.0], [2.0], [3.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None], tf.int64)])
        def predict(self, x, ids):
            y = tf.squeeze(tf.matmul(x, self.w), 1) * self.version + tf.cast(ids, tf.float32)
            return {"y": y, "version": tf.fill(tf.shape(ids), self.version),
                    "id_bytes": tf.strings.as_string(ids)}

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
        def scale(self, x):
            return {"scaled": x * self.version}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def total(self, x):
            return {"total": tf.reduce_sum(x)}

        def _parse(self, serialized):
            spec = {"a": tf.io.FixedLenFeature([], tf.float32), "b": tf.io.FixedLenFeature([], tf.int64, default_value=0)}
            return tf.io.parse_example(serialized, spec)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def classify(self, inputs):
            f = self._parse(inputs)
            p = tf.sigmoid(f["a"])
            n = tf.shape(inputs)[0]
            return {"classes": tf.tile(tf.constant([["pos", "neg"]]), [n, 1]), "scores": tf.stack([p, 1 - p], 1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def regress(self, inputs):
            f = self._parse(inputs)
            return {"outputs": f["a"] * self.version + tf.cast(f["b"], tf.float32)}

    module = Toy()
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.predict, "scale": module.scale, "total": module.total,
        "classify": module.classify, "regress": module.regress})
    if warmup:
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = TOY_MODEL_NAME
        predict.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0, 3.0]], dtype=tf.float32))
        ids = [1] if warmup == "good" else [1.5]  # a float for an int64 input: the warmup fails
        predict.inputs["ids"].CopyFrom(tf.make_tensor_proto(ids, dtype=tf.int64 if warmup == "good" else tf.float32))
        classify = classification_pb2.ClassificationRequest()
        classify.model_spec.name = TOY_MODEL_NAME
        classify.model_spec.signature_name = "classify"
        classify.input.example_list.examples.add().features.feature["a"].float_list.value.append(0.5)
        write_warmup_requests(path, [
            prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=predict)),
            prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=classify))])
    return path


def publish_version(template, base, version):
    """Copy a built version into ``base/<version>`` atomically (write aside, then rename)."""
    staging = os.path.join(base, f".tmp-{version}")
    shutil.copytree(template, staging)
    os.rename(staging, os.path.join(base, str(version)))
    return os.path.join(base, str(version))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def toy_versions(tmp_path_factory):
    """Template SavedModels: {1: dir, 2: dir, 'bad_warmup': dir}."""
    root = tmp_path_factory.mktemp("toy_templates")
    return {
        1: build_toy_saved_model(str(root / "v1"), 1),
        2: build_toy_saved_model(str(root / "v2"), 2),
        "bad_warmup": build_toy_saved_model(str(root / "bad"), 5, warmup="bad"),
    }


@pytest.fixture(scope="session")
def toy_base(toy_versions, tmp_path_factory):
    """A TF Serving base path holding version 1 of the toy model."""
    base = str(tmp_path_factory.mktemp("toy_base") / TOY_MODEL_NAME)
    os.makedirs(base)
    publish_version(toy_versions[1], base, 1)
    return base


GRPC_TRANSPORTS = ("native", "python")


@pytest.fixture
def base(tmp_path, toy_versions):
    """A fresh base path of the toy model holding version 1 (a test adds, breaks or removes versions)."""
    path = tmp_path / TOY_MODEL_NAME
    path.mkdir()
    publish_version(toy_versions[1], str(path), 1)
    return str(path)


def require_transport(transport):
    """Fail (or skip where native parts may be missing) when ``transport`` is not built here."""
    from serving import native_grpc
    if transport == "native" and not native_grpc.available():
        missing_native(f"the gRPC C++ transport ({native_grpc.IMPORT_ERROR})")
    return transport


@pytest.fixture(scope="session", params=GRPC_TRANSPORTS)
def toy_server(request, toy_base):
    """An in-process server (gRPC + REST on free loopback ports) serving the toy model, no batching,
    once on each gRPC transport: every gRPC test runs against both."""
    from serving.server import start_in_process
    server = start_in_process(port=0, rest_api_port=-1, model_name=TOY_MODEL_NAME, model_base_path=toy_base,
                              file_system_poll_wait_seconds=0, max_message_size_bytes=1 << 20,
                              grpc_transport=require_transport(request.param))
    assert server.grpc_transport == request.param
    yield server
    server.stop()


@pytest.fixture(scope="session")
def toy_stubs(toy_server):
    """(PredictionServiceStub, ModelServiceStub) from the official tensorflow_serving.apis."""
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
    channel = grpc.insecure_channel(f"127.0.0.1:{toy_server.port}",
                                    options=[("grpc.max_send_message_length", 8 << 20)])
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


# ---- export fixtures (tfrec-kuai export on models built from the tiny examples) ----------------

def _model_dirs_from_fixtures(request):
    """Trained tiny model folders from the model area's fixtures, when that area provides them."""
    for ranking_name, retrieval_name in (("tiny_ranking_model_dir", "tiny_retrieval_model_dir"),
                                         ("ranking_model_dir", "retrieval_model_dir")):
        try:
            return request.getfixturevalue(ranking_name), request.getfixturevalue(retrieval_name)
        except pytest.FixtureLookupError:
            continue
    return None


@pytest.fixture(scope="session")
def export_model_dirs(request, tiny_examples_dir, tmp_path_factory):
    """(ranking_dir, retrieval_dir): the model area's trained tiny models, or else models built
    (not trained) and saved by ``tfrec_kuai.train.training`` — the same folder layout and load path."""
    found = _model_dirs_from_fixtures(request)
    if found is not None:
        return found
    from tfrec_kuai.data import examples
    from tfrec_kuai.train import training
    from tfrec_kuai.config import load_config
    history_length = examples.load_metadata(tiny_examples_dir)["history_length"]
    vocabularies = training.read_vocabularies(tiny_examples_dir)
    root = tmp_path_factory.mktemp("export_models")
    dirs = []
    for stage in ("ranking", "retrieval"):
        config = load_config(stage=stage).override("model", history_length=history_length, stage=stage)
        model = training.build_model(config, vocabularies)
        training.save_model_dir(model, config, str(root / stage))
        dirs.append(str(root / stage))
    return tuple(dirs)


@pytest.fixture(scope="session")
def kuai_exports(export_model_dirs, tiny_examples_dir, tmp_path_factory):
    """``tfrec-kuai export`` run twice into one base: fused as ``kuai``, portable as ``kuai_portable``.

    Returns {"base": dir, "fused": version dir, "portable": version dir}.
    """
    from tfrec_kuai import cli
    ranking_dir, retrieval_dir = export_model_dirs
    base = str(tmp_path_factory.mktemp("kuai_export"))
    common = ["export", "--ranking_dir", ranking_dir, "--retrieval_dir", retrieval_dir,
              "--examples", tiny_examples_dir, "--export_base", base, "--top_n", "10", "--retrieve_k", "50"]
    assert cli.main(common) == 0
    assert cli.main(common + ["--portable", "--model_name", "kuai_portable"]) == 0
    return {"base": base, "fused": os.path.join(base, "kuai", "1"), "portable": os.path.join(base, "kuai_portable", "1")}
