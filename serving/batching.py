"""Dynamic batching: concurrent requests to one signature are concatenated and run as one call.

A model call has a fixed cost (Python dispatch, kernel launches, a matmul that is no wider for 1
row than for 16), so merging the requests that arrive within ``batch_timeout_micros`` of each
other into one call of up to ``max_batch_size`` rows raises throughput under concurrency. The
knobs are TF Serving's ``BatchingParameters`` (text format, ``--batching_parameters_file``); the
proto is not shipped in the ``tensorflow-serving-api`` wheel, so its schema is declared here with
TF Serving's field names and numbers.
"""
import collections
import logging
import threading
import time

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, text_format, wrappers_pb2
from google.protobuf import message_factory

from serving.errors import ServingError, invalid_argument

log = logging.getLogger("serving.batching")


def _batching_parameters_class():
    """BatchingParameters of tensorflow_serving/servables/tensorflow/session_bundle_config.proto."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tfrec_kuai_serving/batching_parameters.proto", package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto"], syntax="proto3")
    message = file_proto.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    fields = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, None),
        ("pad_variable_length_inputs", 7, None),
        ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value"),
    ]
    for name, number, type_name in fields:
        field = message.field.add(name=name, number=number, json_name=name)
        if name == "allowed_batch_sizes":
            field.type, field.label = F.TYPE_INT64, F.LABEL_REPEATED
        elif name == "pad_variable_length_inputs":
            field.type, field.label = F.TYPE_BOOL, F.LABEL_OPTIONAL
        else:
            field.type, field.label, field.type_name = F.TYPE_MESSAGE, F.LABEL_OPTIONAL, type_name
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


_KNOBS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
_shipped = {}


def shipped_knobs():
    """``{knob: value}`` of the shipped ``serving/configs/batching_parameters.txt``: the one place
    the defaults are written, with the measurements behind each value in its comments. Every knob
    a caller or a file leaves out takes its value from there."""
    if not _shipped:
        from serving.model_config import BATCHING_PARAMETERS
        with open(BATCHING_PARAMETERS) as f:
            params = text_format.Parse(f.read(), BatchingParameters())
        missing = [name for name in _KNOBS if not params.HasField(name)]
        if missing:
            raise ValueError(f"{BATCHING_PARAMETERS} must set every batching knob; it lacks {missing}")
        _shipped.update({name: getattr(params, name).value for name in _KNOBS})
    return dict(_shipped)


class BatchingOptions:
    """The effective batching knobs; each one not given is the shipped file's (:func:`shipped_knobs`)."""

    def __init__(self, max_batch_size=None, batch_timeout_micros=None, max_enqueued_batches=None,
                 num_batch_threads=None, allowed_batch_sizes=(), pad_variable_length_inputs=False):
        given = dict(max_batch_size=max_batch_size, batch_timeout_micros=batch_timeout_micros,
                     max_enqueued_batches=max_enqueued_batches, num_batch_threads=num_batch_threads)
        if any(value is None for value in given.values()):
            defaults = shipped_knobs()
            max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads = (
                defaults[name] if value is None else value for name, value in given.items())
        self.max_batch_size = int(max_batch_size)
        self.batch_timeout_micros = int(batch_timeout_micros)
        self.max_enqueued_batches = int(max_enqueued_batches)
        self.num_batch_threads = max(1, int(num_batch_threads))
        self.allowed_batch_sizes = tuple(int(s) for s in allowed_batch_sizes)
        self.pad_variable_length_inputs = bool(pad_variable_length_inputs)
        if self.allowed_batch_sizes:
            if list(self.allowed_batch_sizes) != sorted(self.allowed_batch_sizes) or \
                    self.allowed_batch_sizes[-1] != self.max_batch_size:
                raise ValueError("allowed_batch_sizes must increase and end with max_batch_size")

    @classmethod
    def from_text(cls, text):
        """Parse a text-format BatchingParameters proto."""
        params = text_format.Parse(text, BatchingParameters())
        kwargs = {}
        for name in _KNOBS:
            if params.HasField(name):
                kwargs[name] = getattr(params, name).value
        kwargs["allowed_batch_sizes"] = list(params.allowed_batch_sizes)
        kwargs["pad_variable_length_inputs"] = params.pad_variable_length_inputs
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path):
        with open(path) as f:
            return cls.from_text(f.read())

    def to_text(self):
        """The text-format BatchingParameters that ``from_text`` reads back (and stock TF Serving's
        ``--batching_parameters_file`` accepts)."""
        params = BatchingParameters()
        params.max_batch_size.value = self.max_batch_size
        params.batch_timeout_micros.value = self.batch_timeout_micros
        params.max_enqueued_batches.value = self.max_enqueued_batches
        params.num_batch_threads.value = self.num_batch_threads
        params.allowed_batch_sizes.extend(self.allowed_batch_sizes)
        params.pad_variable_length_inputs = self.pad_variable_length_inputs
        return text_format.MessageToString(params)

    def __repr__(self):
        return (f"BatchingOptions(max_batch_size={self.max_batch_size}, batch_timeout_micros="
                f"{self.batch_timeout_micros}, max_enqueued_batches={self.max_enqueued_batches}, "
                f"num_batch_threads={self.num_batch_threads}, allowed_batch_sizes={list(self.allowed_batch_sizes)})")


class _Task:
    __slots__ = ("inputs", "size", "key", "enqueued", "done")

    def __init__(self, inputs, done):
        self.inputs = inputs
        self.size = next(iter(inputs.values())).shape[0]
        # Requests merge only when every input agrees on dtype and the non-batch dimensions.
        self.key = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))
        self.enqueued = time.monotonic()
        self.done = done


class Batcher:
    """Queues requests for one signature; ``num_batch_threads`` workers each run merged batches."""

    def __init__(self, run, options, name="batcher"):
        self._run = run
        self.options = options
        self.name = name
        self._queue = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._histogram = collections.Counter()  # batch size -> number of calls
        self._threads = [threading.Thread(target=self._worker, name=f"{name}#{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit_async(self, inputs, done):
        """Queue ``inputs`` (already validated) to run as part of a batch; ``done(outputs, error)``
        is called once with its rows or a ServingError, from the batch thread — so no thread has to
        wait for the batch (the C++ gRPC transport answers the call from there). A request refused
        at the door (too large, queue full) raises here instead."""
        task = _Task(inputs, done)
        if task.size > self.options.max_batch_size:
            raise invalid_argument(
                f"Task size {task.size} is larger than maximum input batch size {self.options.max_batch_size}")
        with self._cond:
            closed = self._closed
            if not closed:
                limit = self.options.max_enqueued_batches * self.options.max_batch_size
                if self._queued_rows + task.size > limit:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                       "The batch scheduling queue to which this task was submitted is full")
                self._queue.append(task)
                self._queued_rows += task.size
                self._cond.notify()
        if closed:  # an old version being unloaded: serve the straggler directly
            done(self._run(inputs), None)

    def submit(self, inputs):
        """``submit_async``, blocking until the request's rows are back (or raising its error)."""
        finished, result = threading.Event(), []

        def done(outputs, error):
            result.append((outputs, error))
            finished.set()
        self.submit_async(inputs, done)
        finished.wait()
        outputs, error = result[0]
        if error is not None:
            raise error
        return outputs

    def _take_batch(self):
        """Wait for a first task, then gather compatible tasks until full or the timeout passes."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, rows = [first], first.size
            deadline = first.enqueued + self.options.batch_timeout_micros / 1e6
            while rows < self.options.max_batch_size:
                for task in list(self._queue):
                    if task.key == first.key and rows + task.size <= self.options.max_batch_size:
                        self._queue.remove(task)
                        batch.append(task)
                        rows += task.size
                remaining = deadline - time.monotonic()
                if rows >= self.options.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._queued_rows -= rows
            return batch

    def _padded_size(self, rows):
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def _worker(self):
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            error = None
            try:
                outputs = self._execute(batch)
            except ServingError as failure:
                error = failure
            except Exception as failure:  # never let one bad batch kill the worker thread
                error = ServingError(grpc.StatusCode.INTERNAL, f"batch failed: {failure}")
            for i, task in enumerate(batch):
                try:
                    task.done(None if error else outputs[i], error)
                except Exception:  # one caller's completion must not cost the others theirs
                    log.exception("%s: completing a request failed", self.name)

    def _execute(self, batch):
        """Run the merged batch; each task's rows of the outputs, in batch order."""
        rows = sum(task.size for task in batch)
        padded = self._padded_size(rows)
        if len(batch) == 1 and padded == rows:
            merged = batch[0].inputs
        else:
            merged = {}
            for key in batch[0].inputs:
                parts = [task.inputs[key] for task in batch]
                if padded > rows:  # pad by repeating the first row; the extra rows are dropped
                    parts.append(np.repeat(parts[0][:1], padded - rows, axis=0))
                merged[key] = np.concatenate(parts, axis=0)
        outputs = self._run(merged)
        bad = [k for k, v in outputs.items() if v.ndim == 0 or v.shape[0] != padded]
        if bad:
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"batched outputs {bad} do not have the batch's {padded} rows in dimension 0")
        self._histogram[rows] += 1
        per_task, offset = [], 0
        for task in batch:
            per_task.append({k: v[offset:offset + task.size] for k, v in outputs.items()})
            offset += task.size
        return per_task

    def stats(self):
        """{'calls': n, 'requests_rows': n, 'max_batch': n, 'histogram': {size: calls}}."""
        histogram = dict(self._histogram)
        return {"calls": sum(histogram.values()), "rows": sum(s * c for s, c in histogram.items()),
                "max_batch": max(histogram) if histogram else 0, "histogram": histogram}

    def close(self):
        """Stop taking requests; logs how large the batches were (whether batching did anything
        under this batcher's load)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        stats = self.stats()
        if stats["calls"]:
            log.info("batching %s: %d requests' rows in %d calls (mean %.2f rows), sizes %s", self.name,
                     stats["rows"], stats["calls"], stats["rows"] / stats["calls"],
                     dict(sorted(stats["histogram"].items())))
