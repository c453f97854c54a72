"""Replays ``assets.extra/tf_serving_warmup_requests`` against a freshly loaded version.

The file is TF Serving's: a TFRecord of ``PredictionLog`` protos. Running them before the
version becomes AVAILABLE traces and allocates everything the first real requests would
otherwise pay for; a warmup request that fails makes the whole load fail, as in TF Serving.
"""
import os

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving import inference

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def warmup_path(version_dir):
    return os.path.join(version_dir, WARMUP_FILE)


def read_warmup_logs(version_dir):
    path = warmup_path(version_dir)
    if not os.path.exists(path):
        return []
    logs = []
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS + 1):
        logs.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{path} holds more than {MAX_WARMUP_RECORDS} warmup records")
    return logs


def run_warmup(servable, iterations=1):
    """Replay every warmup record ``iterations`` times; returns how many requests ran."""
    logs = read_warmup_logs(servable.path)
    count = 0
    for _ in range(iterations):
        for log in logs:
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                signature = servable.signature(request.model_spec.signature_name)
                servable.run(signature.name, signature.decode(request.inputs), list(request.output_filter))
            elif kind == "classify_log":
                request = log.classify_log.request
                inference.classify(servable, request.model_spec.signature_name, inference.serialize_input(request.input))
            elif kind == "regress_log":
                request = log.regress_log.request
                inference.regress(servable, request.model_spec.signature_name, inference.serialize_input(request.input))
            elif kind == "multi_inference_log":
                request = log.multi_inference_log.request
                inference.multi_inference(servable, request.tasks, inference.serialize_input(request.input))
            else:
                raise ValueError(f"unsupported warmup record type {kind}")
            count += 1
    return count


def write_warmup_requests(version_dir, prediction_logs):
    """Write PredictionLog protos as the version's warmup file (used by the export)."""
    path = warmup_path(version_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in prediction_logs:
            writer.write(log.SerializeToString())
    return path
