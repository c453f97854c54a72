"""TF Serving's REST API on the standard library's threaded HTTP server.

Routes (as in TF Serving): ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]`` (status),
``GET .../metadata``, ``POST ...:predict|:classify|:regress``. Errors answer
``{"error": "<message>"}`` with the HTTP status TF Serving maps the gRPC code to — a path or
method no route has is ``Malformed request`` (400), as in TF Serving, and so is every error the
HTTP layer itself produces (a bad request line, an unknown method): JSON, never an HTML page.

Bodies: ``Content-Length`` (a negative or non-numeric one is 400) or ``Transfer-Encoding:
chunked``; a body larger than the maximum message size is refused with 413 before it is kept.
Reads are bounded: a connection waits at most ``read_timeout`` seconds for the next request, and
once a request has begun its header and body must arrive within ``read_timeout`` seconds in
total, or the server answers 408 and closes the connection, so a slow or stalled client holds
one thread for a bounded time.
"""
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving import grpc_service, inference, json_codec
from serving.errors import ServingError, invalid_argument

log = logging.getLogger("serving.rest")
_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:predict|:classify|:regress)?/?$")
_INT64_MAX = (1 << 63) - 1
DEFAULT_READ_TIMEOUT_S = 30.0


def malformed(method, path):
    """TF Serving's answer to a path or method no route has (InvalidArgument, HTTP 400)."""
    return invalid_argument(f"Malformed request: {method} {path}")


def _to_json(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class RestApi:
    """Dispatches parsed REST calls to the manager (kept apart from HTTP plumbing for clarity)."""

    def __init__(self, manager):
        self.manager = manager

    @staticmethod
    def _version(match):
        """The path's version number; 400 (TF Serving's words) when it does not fit an int64."""
        if match["version"] is None:
            return None
        version = int(match["version"])
        if version > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {match['version']} to numeric.")
        return version

    def _model_spec(self, match):
        spec = model_pb2.ModelSpec(name=match["name"])
        if match["version"] is not None:
            spec.version.value = self._version(match)
        if match["label"] is not None:
            spec.version_label = match["label"]
        return spec

    def get(self, path):
        match = _ROUTE.match(path)
        if not match or match["tail"] in (":predict", ":classify", ":regress"):
            raise malformed("GET", path)
        spec = self._model_spec(match)
        if match["tail"] == "/metadata":
            request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
            response = grpc_service.model_metadata(self.manager, request)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_map)
            return {"model_spec": _to_json(response.model_spec), "metadata": {"signature_def": _to_json(signature_map)}}
        status = _to_json(grpc_service.model_status(self.manager, spec))
        for entry in status.get("model_version_status", []):  # TF Serving spells the code name
            entry["status"]["error_code"] = "OK" if entry["status"].get("error_code") in (0, "OK") else "UNKNOWN"
        return status

    def post(self, path, body):
        match = _ROUTE.match(path)
        if not match or match["tail"] not in (":predict", ":classify", ":regress"):
            raise malformed("POST", path)
        try:
            payload = json_codec.loads(body) if body else None
        except (ValueError, UnicodeDecodeError) as error:
            raise invalid_argument(f"JSON Parse error: {error}") from None
        if not isinstance(payload, dict):
            raise invalid_argument("request body must be a JSON object")
        servable = self.manager.get_servable(match["name"], self._version(match), match["label"])
        signature_name = payload.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid_argument("'signature_name' must be a string")
        if match["tail"] == ":predict":
            signature = servable.signature(signature_name)
            inputs, fmt = json_codec.predict_inputs(payload, signature)
            output_filter = payload.get("output_filter", [])
            _, outputs = servable.run(signature.name, inputs, output_filter)
            return json_codec.predict_outputs(outputs, fmt)
        examples = inference.serialize_input(json_codec.examples_input(payload))
        if match["tail"] == ":classify":
            _, result = inference.classify(servable, signature_name, examples)
            return {"results": json_codec.nonfinite_as_text(
                [[[c.label, c.score] for c in r.classes] for r in result.classifications])}
        _, result = inference.regress(servable, signature_name, examples)
        return {"results": json_codec.nonfinite_as_text([r.value for r in result.regressions])}


class _BadBody(Exception):
    """A request body that cannot be read: ``status`` and message for the answer."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse the connection
    server_version = "tfrec-kuai-serving"
    error_content_type = "application/json"
    api = None
    max_body = 0
    timeout = DEFAULT_READ_TIMEOUT_S  # socket timeout of every read (socketserver applies it)
    _timed_out = False

    def log_message(self, fmt, *args):  # requests are not logged line by line
        log.debug(fmt, *args)

    def setup(self):
        super().setup()
        # Small responses must leave at once: without TCP_NODELAY, Nagle's algorithm holds the body
        # back until the client's delayed ACK of the headers (~40 ms per request on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self):
        """One request, its reading bounded: wait (up to the socket timeout) for its first byte,
        then the watchdog gives header and body ``timeout`` seconds in total."""
        try:
            self.connection.settimeout(self.timeout)
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except OSError:  # idle past the timeout, or reset
            self.close_connection = True
            return
        # From here the watchdog bounds the request (and answers 408); each read may wait longer.
        self.connection.settimeout(self.timeout + 5.0)
        self.server.watchdog.arm(self, self.timeout)
        try:
            super().handle_one_request()
        finally:
            self.server.watchdog.disarm(self)

    def parse_request(self):
        """The request line and headers; a header cut off by the read timeout is answered 408
        (the cut leaves an end of stream that would otherwise read as the end of the headers)."""
        if not super().parse_request():
            return False
        if self._timed_out:
            self.send_error(408)
            return False
        return True

    def read_timed_out(self):
        """Called by the watchdog: stop the reads of this request (they see end of stream)."""
        self._timed_out = True
        try:
            self.connection.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def send_error(self, code, message=None, explain=None):
        """Errors of the HTTP layer (bad request line, unknown method, header too long) as TF
        Serving's JSON ``{"error": ...}``; a request cut off by the read timeout is 408."""
        if self._timed_out:
            code, message = 408, f"request not received within {self.timeout:g} s"
        elif code == 501:  # the standard library's "Unsupported method": no route has it
            code, message = 400, f"Malformed request: {self.command} {self._path()}"
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        if self.command == "HEAD" or code < 200 or code in (204, 304):
            super().send_error(code, message, explain)
            return
        try:
            self._send(code, {"error": text}, close=True)
        except OSError:
            pass

    def _send(self, status, obj, close=False):
        data = json_codec.dumps(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        # Headers and body in one write (end_headers would flush the headers on their own).
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(data)
        self.wfile.write(b"".join(self._headers_buffer))
        self._headers_buffer = []

    def _handle(self, call):
        try:
            self._send(200, call())
        except ServingError as error:
            self._send(error.http_status, {"error": error.message})
        except Exception as error:
            log.exception("REST request failed")
            self._send(500, {"error": f"{type(error).__name__}: {error}"})

    def _path(self):
        return self.path.split("?", 1)[0]

    def do_GET(self):
        self.server.watchdog.disarm(self)
        self._handle(lambda: self.api.get(self._path()))

    def _malformed(self):
        """PUT, DELETE, PATCH, OPTIONS: no route has them (TF Serving: 400 Malformed request)."""
        self.server.watchdog.disarm(self)
        self.close_connection = True  # a body it may carry is not read

        def refuse():
            raise malformed(self.command, self._path())
        self._handle(refuse)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _malformed

    def do_POST(self):
        try:
            body = self._read_body()
        except _BadBody as error:
            bad = _BadBody(408, f"request body not received within {self.timeout:g} s") if self._timed_out else error
            self.close_connection = True
            try:
                self._send(bad.status, {"error": bad.message}, close=True)
            except OSError:
                pass
            return
        self.server.watchdog.disarm(self)
        self._handle(lambda: self.api.post(self._path(), body))

    def _read_body(self):
        """The request body (Content-Length or chunked), within the size limit; _BadBody otherwise."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit():
            raise _BadBody(400, f"Content-Length must be a non-negative integer, got {text!r}")
        length = int(text)
        if length > self.max_body:
            # Refuse without keeping the body: drain it in chunks (bounded memory) so the client
            # can read the answer, then close the connection.
            left = min(length, 16 * self.max_body)
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
            raise _BadBody(413, f"Request body of {length} bytes exceeds the maximum message size of "
                                f"{self.max_body} bytes (RESOURCE_EXHAUSTED)")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadBody(400, f"request body ended after {len(body)} of {length} bytes")
        return body

    def _read_chunked(self):
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadBody(400, "malformed chunked body: bad chunk size line") from None
            if size < 0 or not line.endswith(b"\n"):
                raise _BadBody(400, "malformed chunked body: bad chunk size line")
            if size == 0:
                break
            if len(body) + size > self.max_body:
                raise _BadBody(413, f"Request body exceeds the maximum message size of {self.max_body} bytes "
                                    "(RESOURCE_EXHAUSTED)")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadBody(400, "malformed chunked body: a chunk ended early")
            body += chunk
        for _ in range(64):  # trailers, up to the blank line
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n"):
                return bytes(body)
            if not line:
                break
        raise _BadBody(400, "malformed chunked body: no end after the last chunk")


class _Watchdog:
    """One thread that ends the reads of requests past their deadline (``_Handler.read_timed_out``).

    A socket timeout alone bounds each read, not a request: a client sending one byte a second
    would hold its thread for as long as it liked."""

    def __init__(self):
        self._lock = threading.Lock()
        self._deadlines = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rest-read-watchdog", daemon=True)
        self._thread.start()

    def arm(self, handler, seconds):
        with self._lock:
            self._deadlines[handler] = time.monotonic() + seconds

    def disarm(self, handler):
        with self._lock:
            self._deadlines.pop(handler, None)

    def _run(self):
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [h for h, deadline in self._deadlines.items() if deadline <= now]
                for handler in late:
                    del self._deadlines[handler]
            for handler in late:
                handler.read_timed_out()

    def stop(self):
        self._stop.set()


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of new keep-alive clients would be refused.
    request_queue_size = 1024
    watchdog = None


class RestServer:
    """The HTTP front end; ``port`` 0 picks a free one (read it back from ``.port``)."""

    def __init__(self, manager, host, port, max_body_bytes, read_timeout_s=DEFAULT_READ_TIMEOUT_S):
        handler = type("Handler", (_Handler,), {"api": RestApi(manager), "max_body": max_body_bytes,
                                                 "timeout": float(read_timeout_s)})
        self._server = _Server((host, port), handler)
        self._server.watchdog = _Watchdog()
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._server.watchdog.stop()


