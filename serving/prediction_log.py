"""Reads the server's request logs back: ``PredictionLog`` TFRecords into a table, one row per request row.

A model whose config carries ``logging_config`` has its sampled requests written by
``serving.request_logger`` to ``<filename_prefix>-<UTC start>-<pid>-<n>.tfrecord``. This module
turns them into rows a report can group: which model version answered each request row, when,
and what went in and came out. It reads any TFRecord of ``PredictionLog``s (TF Serving's warmup
files too), so it has no knowledge of the server's internals.

One Predict request of batch B gives B rows. Each row holds ``model``, ``version``,
``signature``, ``time`` (seconds since the epoch, ``log_metadata.timestamp_secs``), ``kind``
(``predict`` / ``classify`` / ``regress``), ``record`` (the record's position over all files
read, in file-name order — the order the server wrote them within one file) and ``row`` (the row
within its request); then ``input.<name>`` and ``output.<name>`` per tensor as NumPy: a tensor
whose first dimension is the batch gives the row's slice (``recommend``: ``input.user_id`` and
``input.hist_len`` scalars, ``output.video_id`` the row's ``top_n`` ids), any other the whole
tensor. Classify and Regress give one row per example: ``input.example`` (a ``tf.train.Example``),
``output.classes`` / ``output.scores`` or ``output.value``.
"""
import glob
import logging
import os

import numpy as np

log = logging.getLogger("serving.prediction_log")


def log_files(filename_prefix):
    """The log files the server wrote for ``filename_prefix`` (the ``log_collector_config``'s),
    sorted by name: by start time, then process and file number."""
    return sorted(glob.glob(glob.escape(os.path.abspath(filename_prefix)) + "-*.tfrecord"))


def _paths(source):
    """``source``: a file, a filename prefix, or a list of files."""
    if isinstance(source, (list, tuple)):
        return list(source)
    if os.path.isfile(source):
        return [source]
    paths = log_files(source)
    if not paths:
        raise FileNotFoundError(f"no request log files {os.path.abspath(source)}-*.tfrecord (is it the "
                                "log_collector_config's filename_prefix?)")
    return paths


def read_records(source):
    """Every ``PredictionLog`` of ``source`` (a file, a prefix or a list of files), in order.

    A file the server is still writing may end in a half-written record; reading stops there
    with a warning (the record is complete once the server has flushed it) instead of failing."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2
    for path in _paths(source):
        iterator = iter(tf.data.TFRecordDataset(path))
        while True:
            try:
                raw = next(iterator)
            except StopIteration:
                break
            except tf.errors.DataLossError as error:
                log.warning("%s ends in an incomplete record (still being written?): %s", path, error.message)
                break
            yield prediction_log_pb2.PredictionLog.FromString(raw.numpy())


def _rows_of(tensors, batch):
    """name -> one entry per row: the row's slice where dimension 0 is the batch, else the tensor."""
    return {name: (array if array.ndim and array.shape[0] == batch else [array] * batch)
            for name, array in tensors.items()}


def _examples(input_proto):
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return list(input_proto.example_list.examples)
    if kind == "example_list_with_context":
        return list(input_proto.example_list_with_context.examples)
    return []


def record_rows(record, index=0):
    """The table rows of one ``PredictionLog`` (see the module's docstring)."""
    from serving.tensors import to_numpy
    metadata = record.log_metadata
    spec = metadata.model_spec
    base = {"model": spec.name, "version": spec.version.value if spec.HasField("version") else None,
            "signature": spec.signature_name, "time": metadata.timestamp_secs, "record": index}
    kind = record.WhichOneof("log_type")
    rows = []
    if kind == "predict_log":
        inputs = {k: to_numpy(v) for k, v in record.predict_log.request.inputs.items()}
        outputs = {k: to_numpy(v) for k, v in record.predict_log.response.outputs.items()}
        batched = [a.shape[0] for a in inputs.values() if a.ndim]
        batch = batched[0] if batched else 1
        columns = {f"input.{k}": v for k, v in _rows_of(inputs, batch).items()}
        columns.update({f"output.{k}": v for k, v in _rows_of(outputs, batch).items()})
        for i in range(batch):
            rows.append({**base, "kind": "predict", "row": i, **{k: v[i] for k, v in columns.items()}})
    elif kind == "classify_log":
        examples = _examples(record.classify_log.request.input)
        for i, result in enumerate(record.classify_log.response.result.classifications):
            rows.append({**base, "kind": "classify", "row": i,
                         "input.example": examples[i] if i < len(examples) else None,
                         "output.classes": [c.label for c in result.classes],
                         "output.scores": np.array([c.score for c in result.classes], np.float32)})
    elif kind == "regress_log":
        examples = _examples(record.regress_log.request.input)
        for i, result in enumerate(record.regress_log.response.result.regressions):
            rows.append({**base, "kind": "regress", "row": i,
                         "input.example": examples[i] if i < len(examples) else None,
                         "output.value": np.float32(result.value)})
    return rows


def read_table(source, model=None, signature=None):
    """The rows of every record of ``source`` (a file, the ``filename_prefix`` or a list of
    files), keeping only ``model`` / ``signature`` when given."""
    rows = []
    for index, record in enumerate(read_records(source)):
        spec = record.log_metadata.model_spec
        if (model is not None and spec.name != model) or (signature is not None and spec.signature_name != signature):
            continue
        rows.extend(record_rows(record, index))
    return rows
