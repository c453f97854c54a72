"""The C++ gRPC transport on its own (``cc/grpc_transport.cc``): a Python handler behind it, real
gRPC Python clients on loopback. The TF Serving APIs over it are tested in test_serving.py (every
gRPC test there runs on both transports)."""
import threading
import time

import grpc
import pytest

from tests.fixtures_serving import require_transport


@pytest.fixture
def transport_server():
    """Start a bare transport around ``handler``; yields a function (handler) -> call(method, bytes)."""
    require_transport("native")
    from serving import native_grpc
    started = []

    def start(handler, threads=4):
        transport = native_grpc._grpc_transport.Transport("127.0.0.1:0", 1 << 16, handler, threads)
        port = transport.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((transport, channel))

        def call(method, body=b"", timeout=10):
            return channel.unary_unary(method)(body, timeout=timeout)
        call.transport, call.port = transport, port
        return call

    yield start
    for transport, channel in started:
        channel.close()
        transport.shutdown(1.0)


def test_answers_now_or_later_from_another_thread(transport_server):
    later = []

    def handler(method, body, responder):
        if method == "/t.S/Now":
            return 0, "", b"now:" + body
        if method == "/t.S/Fail":
            return grpc.StatusCode.NOT_FOUND.value[0], "no such thing", b""
        worker = threading.Thread(target=lambda: responder.respond(0, "", b"later:" + body))
        later.append(worker)
        worker.start()
        return None

    call = transport_server(handler)
    assert call("/t.S/Now", b"a") == b"now:a"
    assert call("/t.S/Later", b"b") == b"later:b"
    with pytest.raises(grpc.RpcError) as info:
        call("/t.S/Fail")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and info.value.details() == "no such thing"
    # Concurrent deferred calls each get their own answer.
    results = {}
    clients = [threading.Thread(target=lambda i=i: results.__setitem__(i, call("/t.S/Later", bytes([i]))))
               for i in range(16)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert results == {i: b"later:" + bytes([i]) for i in range(16)}


def test_broken_handlers_and_responders_answer_internal_and_the_server_keeps_serving(transport_server):
    second_answer, tried_twice = [], threading.Event()

    def handler(method, body, responder):
        if method == "/t.S/Raise":
            raise ValueError("handler bug")
        if method == "/t.S/Drop":
            return None  # neither answers nor keeps the responder
        if method == "/t.S/Twice":
            responder.respond(0, "", b"first")
            try:
                responder.respond(0, "", b"second")
            except RuntimeError as error:
                second_answer.append(str(error))
            tried_twice.set()  # the client may have its answer before this line runs
            return None
        if method == "/t.S/BadTuple":
            return "not a tuple"
        return 0, "", b"ok"

    call = transport_server(handler)
    for method, fragment in (("/t.S/Raise", "handler bug"), ("/t.S/Drop", "dropped unanswered"),
                             ("/t.S/BadTuple", "transport handler failed")):
        with pytest.raises(grpc.RpcError) as info:
            call(method)
        assert info.value.code() == grpc.StatusCode.INTERNAL, method
        assert fragment in info.value.details(), (method, info.value.details())
        assert call("/t.S/Ok") == b"ok"
    assert call("/t.S/Twice") == b"first"
    assert tried_twice.wait(10)
    assert second_answer == ["this call was already answered"]


def test_message_size_limit(transport_server):
    call = transport_server(lambda method, body, responder: (0, "", bytes(len(body))))
    assert call("/t.S/Echo", b"x" * 1000) == bytes(1000)
    with pytest.raises(grpc.RpcError) as info:
        call("/t.S/Echo", b"x" * (1 << 17))  # over the 64 KiB limit
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call("/t.S/Echo", b"y") == bytes(1)


def test_shutdown_with_a_call_still_unanswered(transport_server):
    """The client of a call that was never answered gets an error at shutdown (after the grace
    period), and an answer that comes after the shutdown does nothing."""
    held, outcome = [], []

    def handler(method, body, responder):
        held.append(responder)
        return None

    call = transport_server(handler, threads=2)

    def client():
        try:
            call("/t.S/Hold", timeout=30)
            outcome.append("answered")
        except grpc.RpcError as error:
            outcome.append(error.code())
    thread = threading.Thread(target=client)
    thread.start()
    while not held:
        thread.join(0.01)
    call.transport.shutdown(0.2)  # the fixture's shutdown afterwards is a no-op
    thread.join(30)
    assert outcome and outcome[0] != "answered"
    held[0].respond(0, "", b"too late")  # the queue is closed: ignored, no crash


def test_load_generator_keeps_its_clients_in_flight_and_counts_errors(transport_server):
    """``serving._grpc_load`` (bench_serving.py's C++ clients) against the transport: every client has
    one call in flight at a time, latencies come from the measured window only, failures are counted."""
    from serving.native_grpc import load_generator
    generator = load_generator()
    in_flight, most_in_flight, bodies, lock = [0], [0], set(), threading.Lock()

    def handler(method, body, responder):
        if method == "/t.S/Fail":
            return grpc.StatusCode.UNAVAILABLE.value[0], "not now", b""
        with lock:
            in_flight[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])
            bodies.add(body)

        def answer():
            time.sleep(0.01)  # every call takes ≥ 10 ms, so 4 clients make ≤ 400 calls per second
            with lock:
                in_flight[0] -= 1
            responder.respond(0, "", b"ok")
        threading.Thread(target=answer).start()
        return None

    call = transport_server(handler, threads=2)
    target = f"127.0.0.1:{call.port}"
    result = generator.closed_loop(target, "/t.S/Echo", b"request", 4, 0.2, 0.5)
    latencies = result["latencies_ms"]
    assert result["errors"] == 0 and result["first_error"] == ""
    assert most_in_flight[0] == 4 and bodies == {b"request"}
    assert 40 <= len(latencies) <= 4 * 0.5 / 0.01 + 4  # the window's calls only, not the warmup's
    assert min(latencies) >= 10.0

    failed = generator.closed_loop(target, "/t.S/Fail", b"", 2, 0.0, 0.2)
    assert failed["latencies_ms"] == [] and failed["errors"] >= 2
    assert failed["first_error"] == f"code {grpc.StatusCode.UNAVAILABLE.value[0]}: not now"
    with pytest.raises(ValueError):
        generator.closed_loop(target, "/t.S/Echo", b"", 0, 0.0, 0.1)
