"""A fair limit on how many unbatched model runs execute at once.

Why: without batching every request runs the model on its own request thread, so at 32
concurrent clients 32 TensorFlow calls share the host's cores. They all slow down, and which of
them gets the cores, and the interpreter lock between their Python steps, is not in arrival
order: some calls finish fast and others wait hundreds of milliseconds (unbatched ``recommend``
at 32 clients: p99 ≈ 330 ms, p50 ≈ 60–190 ms; benchmarks/RESULTS.md). TF Serving
bounds the same thing through its request threads (``--grpc_max_threads``, ``--rest_api_num_threads``,
4 × the cores by default); here the request threads may wait for a batch instead, so the bound is
on model runs, and the waiting is first come, first served, for every transport alike.
"""
import collections
import os
import threading

# TF Serving's default number of request threads (4 × the cores): the server's default bound.
DEFAULT_SLOTS = 4 * (os.cpu_count() or 1)


class FairGate:
    """At most ``slots`` holders at once; the others enter in the order they arrived.

    ``with gate: ...`` holds one slot. A leaving holder hands its slot directly to the longest
    waiter, so a late arrival can never take a slot ahead of an earlier one. ``slots`` 0 (or less):
    no limit.
    """

    def __init__(self, slots):
        self.slots = int(slots)
        self._lock = threading.Lock()
        self._free = self.slots
        self._waiters = collections.deque()  # one locked lock per waiting thread, oldest first

    def __enter__(self):
        if self.slots <= 0:
            return self
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return self
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder that hands this thread its slot
        return self

    def __exit__(self, *exc_info):
        if self.slots <= 0:
            return False
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1
        return False

    def waiting(self):
        """How many threads wait for a slot now."""
        with self._lock:
            return len(self._waiters)
