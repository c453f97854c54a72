"""Request logging as TF Serving configures it: a model's ``logging_config`` writes ``PredictionLog``s.

A ``ModelConfig`` may carry ``logging_config { log_collector_config { type filename_prefix }
sampling_config { sampling_rate } }`` (TF Serving's ``logging_config.proto``). For a sampled
share of a model's successful Predict, Classify and Regress calls the server then writes one
``tensorflow.serving.PredictionLog`` holding the request, the response and ``log_metadata``: the
model spec of the version that answered (name, version, resolved signature name), the sampling
config, the SavedModel tags and the time. Records are what the loop reads back to know which
version served which impression (``serving/prediction_log.py``).

The parts follow TF Serving's ``ServerRequestLogger`` / ``RequestLogger`` / ``LogCollector``:

* ``ServerRequestLogger`` maps each model name to the loggers of its config. A logging config
  identical to one already in use (byte for byte, serialized deterministically) keeps its logger
  across a config reload, so its file goes on; a changed or removed config closes its file, and
  two models with the same logging config share one logger and one file, as in TF Serving.
* ``RequestLogger`` samples: each successful call draws one uniform number and is logged when it
  falls below ``sampling_rate`` (TF Serving draws from a Mersenne Twister seeded by the OS; here
  ``random.Random(seed)``, the OS's entropy unless ``--request_log_seed`` fixes it, so a seeded
  server logs exactly the same *number* of the first N calls whatever their order).
* ``TFRecordCollector`` (``type: "tfrecord"``, the only type this server has) writes serialized
  ``PredictionLog``s to ``<filename_prefix>-<UTC start>-<pid>-<n>.tfrecord`` — the format of TF
  Serving's warmup file. A request thread only puts its request and response on a bounded queue;
  a background thread builds the record, writes it and flushes whenever the queue runs empty, so
  the serving path never waits for the disk. A full queue drops the record and counts it (the
  request is answered all the same); the counts are logged when the file closes.

Failed calls are not logged: a ``PredictionLog`` pairs a request with its response, and a failed
call has none. Warmup replays are not logged either (they do not go through the services).

Stock ``tensorflow_model_server`` parses ``logging_config`` but ships no log collector and no
request-logger creator, so it refuses any such config at startup (``No request-logger-creator
provided.``); this server implements the ``tfrecord`` type and refuses every other type at
config load.
"""
import datetime
import logging
import os
import queue
import random
import threading
import time

from tensorflow_serving.apis import logging_pb2, prediction_log_pb2

from serving.errors import ServingError, invalid_argument

log = logging.getLogger("serving.request_log")

SUPPORTED_TYPES = ("tfrecord",)
DEFAULT_QUEUE_RECORDS = 10_000  # records waiting for the disk before new ones are dropped
_LOG_FIELDS = {"predict": ("predict_log", prediction_log_pb2.PredictLog),
               "classify": ("classify_log", prediction_log_pb2.ClassifyLog),
               "regress": ("regress_log", prediction_log_pb2.RegressLog)}


def check_logging_config(model_name, logging_config):
    """INVALID_ARGUMENT naming the model and the field for a ``LoggingConfig`` this server cannot
    honour: a type other than ``tfrecord``, no ``filename_prefix``, a ``sampling_rate`` outside
    [0, 1] (TF Serving's valid range) or per-task sampling configs (not supported)."""
    where = f"model '{model_name}': logging_config"
    kind = logging_config.log_collector_config.type
    if kind not in SUPPORTED_TYPES:
        raise invalid_argument(f"{where}.log_collector_config.type {kind!r} is not supported "
                               f"(this server writes: {', '.join(SUPPORTED_TYPES)})")
    if not logging_config.log_collector_config.filename_prefix:
        raise invalid_argument(f"{where}.log_collector_config.filename_prefix is empty: give the path the log "
                               "files' names start with")
    rate = logging_config.sampling_config.sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise invalid_argument(f"{where}.sampling_config.sampling_rate {rate} is outside [0, 1]")
    if len(logging_config.sampling_config.per_task_sampling_configs):
        raise invalid_argument(f"{where}.sampling_config.per_task_sampling_configs is not supported; give one "
                               "sampling_rate")


class TFRecordCollector:
    """One TFRecord file of serialized ``PredictionLog``s, written by its own thread.

    ``submit`` never blocks: it queues the record's parts, or drops and counts them when
    ``queue_records`` are already waiting. ``close`` writes what is queued, flushes and closes.
    """

    _files_opened = 0
    _files_lock = threading.Lock()

    def __init__(self, filename_prefix, queue_records=DEFAULT_QUEUE_RECORDS):
        import tensorflow as tf
        prefix = os.path.abspath(filename_prefix)
        with TFRecordCollector._files_lock:
            index = TFRecordCollector._files_opened
            TFRecordCollector._files_opened += 1
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.path = f"{prefix}-{started}-{os.getpid()}-{index:05d}.tfrecord"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._writer = tf.io.TFRecordWriter(self.path)
        except (OSError, tf.errors.OpError) as error:
            raise invalid_argument(f"cannot open the request log {self.path}: "
                                   f"{getattr(error, 'strerror', None) or getattr(error, 'message', error)}") from None
        self._queue = queue.Queue(maxsize=max(1, int(queue_records)))
        self.write_lock = threading.Lock()  # held while a record is written (a test can hold it to stall the disk)
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._count_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def submit(self, item):
        """Queue ``item`` = (kind, request, response, metadata); False when it was dropped."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            with self._count_lock:
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 1000 == 0:
                log.warning("request log %s: queue full (%d records waiting), %d record(s) dropped so far",
                            self.path, self._queue.maxsize, dropped)
            return False

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                break
            self._write(item)
            if self._queue.empty():
                self._flush()
        self._flush()

    def _write(self, item):
        kind, request, response, metadata = item
        try:
            record = prediction_log_pb2.PredictionLog()
            record.log_metadata.CopyFrom(metadata)
            field, message = _LOG_FIELDS[kind]
            getattr(record, field).CopyFrom(message(request=request, response=response))
            with self.write_lock:
                self._writer.write(record.SerializeToString())
            self.written += 1
        except Exception as error:  # a full disk must not take the server down
            self.failed += 1
            if self.failed == 1:
                log.error("request log %s: cannot write a record (%s); further failures are counted", self.path, error)

    def _flush(self):
        try:
            with self.write_lock:
                self._writer.flush()
        except Exception as error:
            log.error("request log %s: flush failed: %s", self.path, error)

    def close(self):
        """Write what is queued, flush and close (idempotent); logs the counts."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)  # after every queued record; blocks only while the queue is full
        self._thread.join()
        self._writer.close()
        log.info("request log %s closed: %d records written, %d dropped (queue full), %d failed",
                 self.path, self.written, self.dropped, self.failed)

    def stats(self):
        return {"path": self.path, "written": self.written, "dropped": self.dropped, "failed": self.failed,
                "queued": self._queue.qsize()}


class RequestLogger:
    """One ``LoggingConfig``: its sampler and its collector."""

    def __init__(self, logging_config, seed=None, queue_records=DEFAULT_QUEUE_RECORDS):
        self.config = logging_config
        self.rate = logging_config.sampling_config.sampling_rate
        self._random = random.Random(seed)  # seed None: the OS's entropy, as TF Serving's sampler
        self.collector = TFRecordCollector(logging_config.log_collector_config.filename_prefix, queue_records)

    def maybe_log(self, kind, request, response, name, version, signature_name):
        if self._random.random() >= self.rate:  # one draw per successful call (thread-safe in CPython)
            return False
        metadata = logging_pb2.LogMetadata(timestamp_secs=int(time.time()))
        metadata.model_spec.name = name
        metadata.model_spec.version.value = int(version)
        if signature_name:
            metadata.model_spec.signature_name = signature_name
        metadata.sampling_config.CopyFrom(self.config.sampling_config)
        metadata.saved_model_tags.append("serve")
        return self.collector.submit((kind, request, response, metadata))

    def close(self):
        self.collector.close()


class ServerRequestLogger:
    """Every model's request loggers; ``update(config)`` follows the ModelServerConfig, ``log``
    is called by the services after each successful call."""

    def __init__(self, seed=None, queue_records=DEFAULT_QUEUE_RECORDS):
        self.seed = seed
        self.queue_records = queue_records
        self._lock = threading.Lock()
        self._by_config = {}  # serialized LoggingConfig -> RequestLogger
        self._by_model = {}  # model name -> [RequestLogger]; replaced, never mutated

    @staticmethod
    def check(config):
        """INVALID_ARGUMENT for the first logging config of a ModelServerConfig this server cannot honour."""
        for model in config.model_config_list.config:
            if model.HasField("logging_config"):
                check_logging_config(model.name, model.logging_config)

    def update(self, config):
        """Adopt the logging configs of ``config``: unchanged ones keep their logger (and file), new ones
        open theirs, the others are closed after the swap. A file that cannot be opened is
        INVALID_ARGUMENT and changes nothing."""
        self.check(config)
        with self._lock:
            by_config, by_model, opened = {}, {}, []
            try:
                for model in config.model_config_list.config:
                    if not model.HasField("logging_config"):
                        continue
                    key = model.logging_config.SerializeToString(deterministic=True)
                    logger = by_config.get(key) or self._by_config.get(key)
                    if logger is None:
                        try:
                            logger = RequestLogger(model.logging_config, self.seed, self.queue_records)
                        except ServingError as error:
                            raise invalid_argument(f"model '{model.name}': {error.message}") from None
                        opened.append(logger)
                        log.info("model %s: logging %g of its requests to %s", model.name, logger.rate,
                                 logger.collector.path)
                    by_config[key] = logger
                    by_model.setdefault(model.name, []).append(logger)
            except Exception:
                for logger in opened:
                    logger.close()
                raise
            retired = [logger for key, logger in self._by_config.items() if key not in by_config]
            self._by_config, self._by_model = by_config, by_model
        for logger in retired:
            logger.close()

    def log(self, kind, request, response, servable, signature_name):
        """Log one successful call (``kind``: predict, classify or regress) of ``servable`` if its
        model logs and the sampler picks it. Never raises: logging must not fail a request."""
        loggers = self._by_model.get(servable.name)
        if not loggers:
            return
        for logger in loggers:
            try:
                logger.maybe_log(kind, request, response, servable.name, servable.version, signature_name)
            except Exception:
                log.exception("request log of model %s failed", servable.name)

    def files(self, model_name=None):
        """The paths being written (for one model, or all)."""
        with self._lock:
            loggers = self._by_model.get(model_name, []) if model_name else list(self._by_config.values())
            return [logger.collector.path for logger in loggers]

    def stats(self):
        with self._lock:
            return [logger.collector.stats() for logger in self._by_config.values()]

    def close(self):
        with self._lock:
            loggers = list(self._by_config.values())
            self._by_config, self._by_model = {}, {}
        for logger in loggers:
            logger.close()
