"""The fair bound on unbatched model runs (``serving/admission.py``): the gate alone, then a real
Servable and a real server holding it."""
import os
import threading
import time

import numpy as np
import pytest

from serving.admission import FairGate


def _wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _hold_in_turn(gate, threads):
    """Start ``threads`` holders one at a time (so the arrival order is known), each keeping its slot
    until released; returns (order in which they got in, most inside at once)."""
    inside, most_inside, order, lock = [0], [0], [], threading.Lock()
    release = threading.Event()

    def hold(i):
        with gate:
            with lock:
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
                order.append(i)
            release.wait(5)
            with lock:
                inside[0] -= 1

    started = []
    for i in range(threads):
        thread = threading.Thread(target=hold, args=(i,))
        thread.start()
        started.append(thread)
        assert _wait_until(lambda i=i: len(order) + gate.waiting() == i + 1)
    assert order == list(range(min(gate.slots, threads))) and gate.waiting() == max(0, threads - gate.slots)
    release.set()
    for thread in started:
        thread.join(5)
    assert gate.waiting() == 0
    return order, most_inside[0]


def test_gate_admits_waiters_in_arrival_order():
    order, most_inside = _hold_in_turn(FairGate(1), 8)
    assert order == list(range(8)) and most_inside == 1  # one at a time: first come, first served


def test_gate_bounds_the_holders():
    order, most_inside = _hold_in_turn(FairGate(3), 10)
    assert most_inside == 3 and sorted(order) == list(range(10))


def test_gate_slot_comes_back_when_the_holder_raises():
    gate = FairGate(1)
    with pytest.raises(ValueError):
        with gate:
            raise ValueError("model failed")
    done = threading.Event()
    threading.Thread(target=lambda: (gate.__enter__(), done.set())).start()
    assert done.wait(5)


def test_gate_of_zero_slots_never_waits():
    gate = FairGate(0)
    with gate, gate, gate:
        assert gate.waiting() == 0


def test_servable_unbatched_runs_wait_for_the_gate_and_batched_ones_do_not(toy_versions):
    from serving.batching import BatchingOptions
    from serving.servable import Servable
    gate = FairGate(1)
    servable = Servable("toy", 1, toy_versions[1], BatchingOptions(max_batch_size=4, batch_timeout_micros=1000),
                        run_gate=gate)
    x = np.ones((1, 3), np.float32)
    try:
        results = {}
        with gate:  # every slot taken
            waiting = threading.Thread(target=lambda: results.setdefault("total", servable.run("total", {"x": x})))
            waiting.start()  # "total" has an unbatched output: it runs on this thread, inside the gate
            assert _wait_until(lambda: gate.waiting() == 1)
            time.sleep(0.2)
            assert "total" not in results
            # A batched signature runs on its batch thread, outside the gate.
            name, outputs = servable.run("serving_default", {"x": x, "ids": np.array([3], np.int64)})
            assert float(outputs["y"][0]) == 9.0
        waiting.join(10)
        assert float(results["total"][1]["total"]) == 3.0 and gate.waiting() == 0
    finally:
        servable.close()


def test_server_flag_sets_the_gate(toy_base):
    from serving.server import build_parser, start_in_process
    assert build_parser().parse_args([]).max_concurrent_model_runs == 4 * os.cpu_count()
    server = start_in_process(port=0, model_name="toy", model_base_path=toy_base, max_concurrent_model_runs=3,
                              file_system_poll_wait_seconds=0, grpc_transport="python")
    try:
        assert server.manager.run_gate.slots == 3
        assert server.manager.get_servable("toy").run("total", {"x": np.ones((1, 3), np.float32)})[1]["total"] == 3.0
    finally:
        server.stop()
