"""TF Serving's REST API on the standard library's threaded HTTP server.

Routes (as in TF Serving): ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]`` (status),
``GET .../metadata``, ``POST ...:predict|:classify|:regress``. Errors answer
``{"error": "<message>"}`` with the HTTP status TF Serving maps the gRPC code to; a body larger
than the maximum message size is refused with 413 before it is read.
"""
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving import grpc_service, inference, json_codec
from serving.errors import ServingError, invalid_argument, not_found

log = logging.getLogger("serving.rest")
_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:predict|:classify|:regress)?/?$")


def _to_json(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class RestApi:
    """Dispatches parsed REST calls to the manager (kept apart from HTTP plumbing for clarity)."""

    def __init__(self, manager):
        self.manager = manager

    def _model_spec(self, match):
        spec = model_pb2.ModelSpec(name=match["name"])
        if match["version"] is not None:
            spec.version.value = int(match["version"])
        if match["label"] is not None:
            spec.version_label = match["label"]
        return spec

    def get(self, path):
        match = _ROUTE.match(path)
        if not match or match["tail"] in (":predict", ":classify", ":regress"):
            raise not_found(f"Malformed request: GET {path}")
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
            raise not_found(f"Malformed request: POST {path}")
        try:
            payload = json_codec.loads(body) if body else None
        except (ValueError, UnicodeDecodeError) as error:
            raise invalid_argument(f"JSON Parse error: {error}") from None
        if not isinstance(payload, dict):
            raise invalid_argument("request body must be a JSON object")
        servable = self.manager.get_servable(match["name"], int(match["version"]) if match["version"] else None,
                                             match["label"])
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse the connection
    server_version = "tfrec-kuai-serving"
    api = None
    max_body = 0

    def log_message(self, fmt, *args):  # requests are not logged line by line
        log.debug(fmt, *args)

    def setup(self):
        super().setup()
        # Small responses must leave at once: without TCP_NODELAY, Nagle's algorithm holds the body
        # back until the client's delayed ACK of the headers (~40 ms per request on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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

    def do_GET(self):
        self._handle(lambda: self.api.get(self.path.split("?", 1)[0]))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.max_body:
            # Refuse without keeping the body: drain it in chunks (bounded memory) so the client
            # can read the answer, then close the connection.
            self.close_connection = True
            left = min(length, 16 * self.max_body)
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
            self._send(413, {"error": f"Request body of {length} bytes exceeds the maximum message size of "
                                      f"{self.max_body} bytes (RESOURCE_EXHAUSTED)"}, close=True)
            return
        body = self.rfile.read(length)
        self._handle(lambda: self.api.post(self.path.split("?", 1)[0], body))


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of new keep-alive clients would be refused.
    request_queue_size = 1024


class RestServer:
    """The HTTP front end; ``port`` 0 picks a free one (read it back from ``.port``)."""

    def __init__(self, manager, host, port, max_body_bytes):
        handler = type("Handler", (_Handler,), {"api": RestApi(manager), "max_body": max_body_bytes})
        self._server = _Server((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


