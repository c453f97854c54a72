"""The server's config files beside an export: TF Serving's ModelServerConfig and BatchingParameters.

``tfrec-kuai export`` writes them next to the models it exports, and the A/B test writes one for
the arms it serves itself, so that ``tensorflow_model_server --model_config_file=...`` or
``python -m serving.server --model_config_file=...`` serves the folder as it is. They are the
server's files: the model package never writes them.
"""
from __future__ import annotations

import os
import shutil

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# The shipped batching parameters, with the measurements behind each value in its comments.
BATCHING_PARAMETERS = os.path.join(CONFIGS, "batching_parameters.txt")


def model_server_config(models):
    """A ``ModelServerConfig`` of ``models`` = ``{name: (base path, version or None)}``: a version
    serves exactly that version, ``None`` the latest one (TF Serving's default policy)."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, (base_path, version) in models.items():
        entry = config.model_config_list.config.add(name=name, base_path=os.path.abspath(base_path),
                                                    model_platform="tensorflow")
        if version is None:
            entry.model_version_policy.latest.num_versions = 1
        else:
            entry.model_version_policy.specific.versions.append(int(version))
    return config


def pinned_versions(version_dirs):
    """``{name: version folder}`` → the ``models`` of :func:`model_server_config` serving exactly
    each folder: its parent as the base path, its number as the one version."""
    return {name: (os.path.dirname(os.path.abspath(path)), int(os.path.basename(os.path.normpath(path))))
            for name, path in version_dirs.items()}


def write_model_config(path, models, request_logging=None):
    """``model_server_config(models)`` (with ``add_request_logging(…, request_logging)``) as a
    text file at ``path``; returns ``path``."""
    config = add_request_logging(model_server_config(models), request_logging or {})
    with open(path, "w") as f:
        f.write(text_format.MessageToString(config))
    return path


def write_serving_configs(export_base, model_name, batching=True):
    """``models.config`` serving the latest version of ``<export_base>/<model_name>`` and (with
    ``batching``) the shipped ``batching_parameters.txt``, both in ``export_base``; their paths."""
    base = os.path.abspath(export_base)
    models = write_model_config(os.path.join(base, "models.config"),
                                {model_name: (os.path.join(base, model_name), None)})
    batching_path = os.path.join(base, "batching_parameters.txt")
    if batching:
        shutil.copyfile(BATCHING_PARAMETERS, batching_path)
    return models, batching_path


def add_request_logging(config, request_logging):
    """``config`` with a ``logging_config`` on each model of ``request_logging`` = ``{name:
    (filename_prefix, sampling_rate)}``: the server writes that share of the model's successful
    requests as ``PredictionLog`` TFRecords named ``<filename_prefix>-…`` (``serving/request_logger.py``;
    read back with ``serving.prediction_log.read_table``)."""
    for entry in config.model_config_list.config:
        if entry.name in request_logging:
            prefix, rate = request_logging[entry.name]
            entry.logging_config.log_collector_config.type = "tfrecord"
            entry.logging_config.log_collector_config.filename_prefix = os.path.abspath(prefix)
            entry.logging_config.sampling_config.sampling_rate = float(rate)
    unknown = sorted(set(request_logging) - {entry.name for entry in config.model_config_list.config})
    if unknown:
        raise ValueError(f"request logging for models the config lacks: {unknown}")
    return config
