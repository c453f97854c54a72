"""One error type for every failed request, carrying TF Serving's status code.

The gRPC servicers abort with ``code`` and the REST handler answers with the HTTP status TF
Serving's own HTTP server maps that code to, so both front ends report a failure identically and
the server never dies because one request was bad.
"""
import grpc

# TF Serving's http_server.cc ToHTTPStatusCode, for the codes this server produces.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request failed with a canonical status ``code`` and a message meant for the client."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self):
        return _HTTP_STATUS.get(self.code, 500)

    @property
    def code_name(self):
        return self.code.name


def invalid_argument(message):
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def failed_precondition(message):
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def not_found(message):
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def code_from_number(number):
    """The grpc.StatusCode for a canonical error number (what tf.errors.OpError.error_code holds)."""
    return _BY_NUMBER.get(int(number), grpc.StatusCode.UNKNOWN)


def from_tf_error(error):
    """A TensorFlow runtime error (bad value inside the graph) as a ServingError with its code."""
    message = getattr(error, "message", None) or str(error)
    return ServingError(code_from_number(getattr(error, "error_code", 2)), message.strip())
