"""The ``served`` policy: an export's ``recommend_excluding`` called over gRPC through a model server
(docs/design.md §10), so an A/B arm measures the serving path a deployment uses, not only the model.

``served:<model name>`` calls that model on ``--server ADDRESS`` (a running ``python -m
serving.server`` or ``tensorflow_model_server``); ``served:<export dir>`` arms are served by a
server the A/B test starts itself (:class:`LocalServer`): one ``--model_config_file`` (TF
Serving's multi-model config) with one model per served arm, named after the arm, on 127.0.0.1 and
a free port, stopped at the end. The request is the one the ``savedmodel`` policy builds
(:class:`~tfrec_kuai.online.policies.ModelPolicy`), sent through the official
``tensorflow-serving-api`` stubs; the signature's inputs are read from the server's
GetModelMetadata, not assumed.
"""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from serving.model_config import pinned_versions, write_model_config
from tfrec_kuai.errors import InputError
from tfrec_kuai.online.policies import SIGNATURE, ModelPolicy, parse_spec, resolve_export, split_blend

TIMEOUT_S = 60.0
RETRIES = 2            # extra tries of a request that failed with a transient code
TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED")   # a server busy or restarting; a refusal stays refused
MAX_MESSAGE_BYTES = 64 << 20


def _rpc_error(where, error, hint=""):
    """One line for a gRPC failure: its status code and the server's (first line of) details."""
    code = error.code().name if hasattr(error, "code") and error.code() is not None else "UNKNOWN"
    details = (error.details() if hasattr(error, "details") else "") or ""
    details = details.strip().splitlines()[0] if details.strip() else ""
    return InputError(f"{where}: gRPC {code}" + (f": {details}" if details else "") + hint)


class ServedPolicy(ModelPolicy):
    """``recommend_excluding`` of ``model_name`` on the gRPC server at ``address``; one Predict per page
    for all the page's users. A request that fails with a transient code is tried again (up to
    :data:`RETRIES` times) and counted in ``failed_requests``; any other failure, or one that
    persists, stops the run with one line naming the gRPC code."""

    def __init__(self, spec, world, address, model_name, timeout=TIMEOUT_S):
        super().__init__(spec, world)
        _, self.blend = split_blend(parse_spec(spec)[1], "served")
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.grpc, self.tf = grpc, tf
        self.address, self.model_name, self.timeout = address, model_name, timeout
        self.where = f"{spec} on {address}"
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                                               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.failed_requests = 0
        self.answered_version = None
        inputs = self._signature_inputs()
        if "hist_video_id" not in inputs or len(inputs["hist_video_id"][1]) != 2:
            raise InputError(f"{self.where}: signature `{SIGNATURE}` has no [B, L] hist_video_id input")
        self._set_signature({k: dtype for k, (dtype, _) in inputs.items()}, inputs["hist_video_id"][1][1])

    def _spec(self, spec):
        spec.name = self.model_name
        spec.signature_name = SIGNATURE

    def _signature_inputs(self):
        """{input: (TensorFlow dtype, shape)} of the model's ``recommend_excluding`` from GetModelMetadata."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model_name
        try:
            response = self.stub.GetModelMetadata(request, timeout=self.timeout)
        except self.grpc.RpcError as error:
            raise _rpc_error(self.where, error) from None
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if SIGNATURE not in signatures.signature_def:
            raise InputError(f"{self.where}: model {self.model_name!r} has no `{SIGNATURE}` signature")
        infos = signatures.signature_def[SIGNATURE].inputs
        return {k: (self.tf.dtypes.as_dtype(v.dtype), [d.size for d in v.tensor_shape.dim]) for k, v in infos.items()}

    def call(self, inputs):
        from tensorflow_serving.apis import predict_pb2

        tf = self.tf
        request = predict_pb2.PredictRequest(output_filter=list(self.outputs))
        self._spec(request.model_spec)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=self.input_dtypes[name]))
        for attempt in range(RETRIES + 1):
            try:
                response = self.stub.Predict(request, timeout=self.timeout)
                # The version that answered (TF Serving sets the response's model_spec): a caller
                # following a hot swap reads it here.
                self.answered_version = response.model_spec.version.value if response.HasField("model_spec") \
                    else None
                break
            except self.grpc.RpcError as error:
                self.failed_requests += 1
                if error.code().name not in TRANSIENT or attempt == RETRIES:
                    hint = (f" ({len(inputs['user_id'])} users in one request: lower --chunk_users or "
                            "raise the server's --max_message_size_bytes)"
                            if error.code().name == "RESOURCE_EXHAUSTED" and "user_id" in inputs else "")
                    raise _rpc_error(self.where, error, hint) from None
                time.sleep(0.2 * (attempt + 1))
        return {name: tf.make_ndarray(response.outputs[name]) for name in self.outputs}

    def close(self):
        self.channel.close()


def served_exports(arms, server):
    """{arm name: version folder} of the ``served:<export dir>`` arms a local server must serve
    (none when ``server`` names one: then every ``served:`` argument is a model name on it)."""
    if server is not None:
        return {}
    exports = {}
    for name, spec in arms:
        kind, argument = parse_spec(spec)
        argument, _ = split_blend(argument, "served")
        if kind == "served":
            if not os.path.exists(argument):
                raise InputError(f"served:{argument}: no such folder (to call a model by name, give "
                                 "--server ADDRESS)")
            path = resolve_export(argument, "served")
            if not os.path.basename(path).isdigit():
                raise InputError(f"served:{argument}: the export's version folder must be numeric "
                                 f"(TF Serving's layout), got {path}")
            exports[name] = path
    return exports


def die_with_parent():
    """In a child before ``exec``: have the kernel send it SIGKILL when its parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing), so a killed caller leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG = 1


class LocalServer:
    """``python -m serving.server`` as a subprocess on 127.0.0.1 serving ``models`` ({name:
    version folder}); ``start()`` returns once every model is AVAILABLE, ``stop()`` ends it.
    Its config lives in a temporary folder, so a run that fails leaves nothing behind.

    ``base_paths`` ({name: base path}) serves the latest version under each base path instead,
    polled every ``poll_wait_s`` seconds, so a version renamed in later is hot-swapped in (the
    daily loop's Pusher); ``request_logging`` ({name: (filename_prefix, sampling rate)}) adds
    each model's ``logging_config`` (``serving.model_config.add_request_logging``). The server
    is killed when the process that started it dies (Linux ``PR_SET_PDEATHSIG``), so a
    ``kill -9`` of a long run never leaves it serving on its own; the signal follows the thread
    that called ``start()``, so start it from a thread that lives as long as the server should."""

    def __init__(self, models=None, ready_timeout=300.0, base_paths=None, request_logging=None, poll_wait_s=0,
                 role="the A/B test's model server"):
        self.models = dict(models or {})
        self.base_paths = dict(base_paths or {})
        self.request_logging = dict(request_logging or {})
        self.poll_wait_s = poll_wait_s
        self.role = role
        self.ready_timeout = ready_timeout
        self.process = None
        self.address = None
        self.folder = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *_):
        self.stop()

    def start(self):
        self.folder = tempfile.mkdtemp(prefix="abtest_server_")
        models = pinned_versions(self.models)
        models.update({name: (path, None) for name, path in self.base_paths.items()})
        config = write_model_config(os.path.join(self.folder, "models.config"), models, self.request_logging)
        self.stderr = open(os.path.join(self.folder, "stderr.txt"), "w+")
        command = [sys.executable, "-m", "serving.server", "--host=127.0.0.1", "--port=0",
                   f"--model_config_file={config}", f"--file_system_poll_wait_seconds={self.poll_wait_s:g}",
                   f"--max_message_size_bytes={MAX_MESSAGE_BYTES}", "--log_level=WARNING"]
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                            preexec_fn=die_with_parent)
            self.address = self._wait_for_port()
            self._wait_available()
        except BaseException:
            self.stop()
            raise
        return self

    def _failure(self, what):
        self.stderr.flush()
        self.stderr.seek(0)
        lines = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
        return InputError(f"{self.role} {what}" + (f": {lines[-1]}" if lines else ""))

    def _wait_for_port(self):
        """The port from the server's ``gRPC listening on HOST:PORT`` line (``--port=0``: the
        kernel picks a free one, so no other process can take it between choosing and binding)."""
        lines = queue.Queue()

        def read():
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)
        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + self.ready_timeout
        while time.time() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                raise self._failure(f"exited with status {self.process.wait()} before it listened")
            if line.startswith("gRPC listening on "):
                return line.split()[-1]
        raise self._failure(f"did not listen within {self.ready_timeout:.0f} s")

    def _wait_available(self):
        """Until every model's versions are AVAILABLE (``serving/readiness.py``)."""
        from serving.readiness import NotReady, wait_until_available

        try:
            wait_until_available(self.address, list(self.models) + list(self.base_paths), self.process,
                                 self.ready_timeout)
        except NotReady as error:
            raise self._failure(f"did not serve: {error}") from None

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        if self.folder is not None:
            self.stderr.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
