"""The gRPC C++ transport (``cc/grpc_transport.cc``) behind the same servicers as gRPC Python.

The C++ side does the RPC work — accepting, HTTP/2, TLS, the message size limits — without the
GIL and calls ``Dispatcher.__call__(method, request_bytes, responder)`` once per call. The
dispatcher parses the request with the official ``tensorflow-serving-api`` message class of that
method, runs the servicer method gRPC Python would run (``grpc_service.PredictionServicer`` /
``ModelServicer``) and returns ``(code, details, response_bytes)``; ``Predict`` instead answers
later through the responder, from the batch thread when the signature is batched, so no thread
sits waiting for a batch. Both transports answer every request, good or bad, with the same
code; only the per-call cost differs (benchmarks/RESULTS.md).
"""
import importlib
import os
import sys
import threading

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import message_factory

from serving.grpc_service import status_of


def _import_native(name):
    """Import ``serving.<name>`` with ``RTLD_DEEPBIND``: gRPC C++ and the system OpenSSL it links must
    bind to each other. TensorFlow loads ``libtensorflow_framework.so.2``, which exports BoringSSL's
    ``SSL_*`` / ``EVP_*`` symbols, into the global scope; without deep binding gRPC's TLS calls
    would land in BoringSSL with OpenSSL's structures and crash."""
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        return importlib.import_module(f"serving.{name}")
    finally:
        sys.setdlopenflags(flags)


try:
    _grpc_transport = _import_native("_grpc_transport")
except ImportError as _error:  # built only where gRPC C++ (libgrpc++-dev) was found
    _grpc_transport = None
    IMPORT_ERROR = _error
else:
    IMPORT_ERROR = None


def load_generator():
    """``serving._grpc_load``, the C++ closed-loop client of ``benchmarks/bench_serving.py``
    (``closed_loop(target, method, request_bytes, clients, warmup_seconds, seconds)``); built, like
    the transport, only where gRPC C++ is installed (ImportError otherwise)."""
    return _import_native("_grpc_load")


_OK = grpc.StatusCode.OK.value[0]


def available():
    return _grpc_transport is not None


class _Aborted(Exception):
    def __init__(self, code, details):
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """The part of ``grpc.ServicerContext`` the servicers use: ``abort`` ends the call with a status."""

    def abort(self, code, details):
        raise _Aborted(code, details)


class Dispatcher:
    """``(method, request bytes, responder) -> (code, details, response bytes)`` over gRPC servicers.

    ``servicers``: ``(service descriptor, servicer)`` pairs; every method of each service is routed
    to the servicer's method of that name with the service's request message class. Where the
    servicer also has ``<Method>Deferred(request, done)`` (``Predict``), that runs instead and the
    call returns None: the answer goes out through ``responder.respond(code, details, bytes)`` when
    ``done`` is called — from the batch thread for a batched signature.
    """

    def __init__(self, servicers):
        self.routes = {}
        for service, servicer in servicers:
            for method in service.methods:
                request_class = message_factory.GetMessageClass(method.input_type)
                self.routes[f"/{service.full_name}/{method.name}"] = (
                    request_class, getattr(servicer, method.name), getattr(servicer, f"{method.name}Deferred", None))

    def __call__(self, method, body, responder):
        route = self.routes.get(method)
        if route is None:
            return grpc.StatusCode.UNIMPLEMENTED.value[0], f"Method not found: {method}", b""
        request_class, handler, deferred = route
        try:
            request = request_class.FromString(body)
        except protobuf_message.DecodeError as error:
            return grpc.StatusCode.INTERNAL.value[0], f"cannot parse the {request_class.__name__}: {error}", b""
        if deferred is not None:
            def done(response, error):
                if error is not None:
                    code, details = status_of(error, method)
                    responder.respond(code.value[0], details, b"")
                else:
                    responder.respond(_OK, "", response.SerializeToString())
            deferred(request, done)
            return None
        try:
            response = handler(request, _Context())
        except _Aborted as aborted:
            return aborted.code.value[0], aborted.details, b""
        return _OK, "", response.SerializeToString()


class NativeGrpcServer:
    """The gRPC server on the C++ transport: ``start()`` returns the port, ``stop(grace)``."""

    def __init__(self, address, servicers, max_message_bytes, threads, ssl_config=None):
        if _grpc_transport is None:
            raise RuntimeError(f"the gRPC C++ transport is not built ({IMPORT_ERROR})")
        tls = {}
        if ssl_config is not None:
            tls = dict(tls=True, server_key=ssl_config.server_key, server_cert=ssl_config.server_cert,
                       custom_ca=ssl_config.custom_ca, client_verify=bool(ssl_config.client_verify))
        self._transport = _grpc_transport.Transport(address, int(max_message_bytes), Dispatcher(servicers),
                                                    int(threads), **tls)

    def start(self):
        """Bind and serve; the port (the chosen one for port 0). SystemExit when it cannot bind, as
        the gRPC Python path does."""
        try:
            return self._transport.start()
        except RuntimeError as error:
            raise SystemExit(str(error)) from None

    def stop(self, grace=1.0):
        """Stop, letting calls in flight finish for up to ``grace`` seconds. Returns a set event, as
        ``grpc.Server.stop`` returns one that is set once the calls are done (here: already)."""
        self._transport.shutdown(float(grace))
        stopped = threading.Event()
        stopped.set()
        return stopped
