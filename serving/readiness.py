"""Waiting for a model server to be ready, the way a TF Serving client does: GetModelStatus.

A server answers its port before its models load (and warm up), so "ready" is per model: every
version it reports is AVAILABLE. A version that reached END did not load (its status says why),
and no amount of waiting helps, so that is an error at once, as is a server process that exited.
The demo, the A/B test's own server and tests call this one function over the official
``tensorflow-serving-api`` stub, against ``python -m serving.server`` or ``tensorflow_model_server``.
"""
import time


class NotReady(Exception):
    """The server did not make a model AVAILABLE: it exited, a version ended, or time ran out."""


def wait_until_available(address, model_names, process=None, timeout_s=300.0, poll_s=0.2):
    """Return once every model of ``model_names`` on the gRPC ``address`` has all its reported
    versions AVAILABLE (at least one).

    Args:
      address: ``HOST:PORT`` of the server's gRPC port.
      model_names: the models to wait for.
      process: the server's ``subprocess.Popen``, if this caller started it: its exit stops the wait.
      timeout_s: the whole wait's limit.
      poll_s: pause between status calls.

    Raises:
      NotReady: the process exited, a version is END (with the server's error message), or
        ``timeout_s`` passed.
    """
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    status = get_model_status_pb2.ModelVersionStatus
    deadline = time.time() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for name in model_names:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = name
            while True:
                if process is not None and process.poll() is not None:
                    raise NotReady(f"the server exited with status {process.returncode}")
                try:
                    states = stub.GetModelStatus(request, timeout=5.0).model_version_status
                except grpc.RpcError:
                    states = []
                ended = [s for s in states if s.state == status.END]
                if ended:
                    raise NotReady(f"model {name!r} version {ended[0].version} did not load: "
                                   f"{ended[0].status.error_message or 'version ended'}")
                if states and all(s.state == status.AVAILABLE for s in states):
                    break
                if time.time() > deadline:
                    raise NotReady(f"model {name!r} was not AVAILABLE within {timeout_s:.0f} s")
                time.sleep(poll_s)
