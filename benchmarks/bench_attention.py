"""Benchmark of the feedback-weighted attention (docs/design.md §7): fused op vs composite vs XLA.

For each shape and history fill, times the forward and the forward+backward (gradients of all
five float inputs) of three implementations, each inside a ``tf.function``:

* ``fused``      - the C++ op and its fused gradient op;
* ``composite``  - the plain-TF-ops implementation;
* ``xla``        - the composite compiled with ``jit_compile=True``.

Prints the median and the minimum time of ``--repeats`` runs (after ``--warmup`` runs), the
fused speed-up over each other implementation (from the medians, and from the minima, which are
the steadier estimate on a machine shared with other jobs), and the effective bandwidth against the *minimal* bytes: what any
implementation must read at least (query, and keys/values/bias/gate at the valid positions only,
plus the incoming gradient for the backward) and must write (the output, and every gradient
tensor in full). Fill 100% means every lengths[b] = L; fill 50% draws lengths uniformly from
[0, L] (mean L/2), like real histories of mixed length.

Beside the forward pass, in the same round-robin, ``stream`` is a plain streaming read of the same
keys, values, bias and gate tensors (``tf.reduce_sum`` of each, TensorFlow's multi-threaded
reduction): the read bandwidth the machine gives this process at that moment. The ``of stream``
column is each forward's GB/s over that one's — how close the kernel comes to the memory bound.

The fused op runs the kernels compiled for the best instruction set the CPU has (AVX2 + FMA, or
the x86-64-v2 baseline; ``TFREC_KUAI_FWA_ISA`` forces one, cc/fwa_kernel.h). A second table times
the two copies against each other in the same round-robin, through the pybind11 module (the same
kernels, split over ``os.cpu_count()`` threads as the op's pool splits them).

    .venv/bin/python benchmarks/bench_attention.py [--repeats 7] [--warmup 2] [--shapes all|main]
"""
import argparse
import functools
import os
import statistics
import sys
import time

import numpy as np

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai import ops

# (B, L, H, D, Dv)
SHAPES = {
    "main": [(1024, 100, 2, 32, 32)],
    "all": [(1024, 100, 2, 32, 32), (2048, 50, 4, 16, 16), (256, 200, 1, 64, 64)],
}
IMPLS = ("fused", "composite", "xla")
FLOAT = 4


def make_inputs(B, L, H, D, Dv, fill, seed=0):
    rng = np.random.default_rng(seed)
    if fill >= 1.0:
        lengths = np.full(B, L, np.int32)
    else:
        lengths = rng.integers(0, L + 1, size=B).astype(np.int32)
    arrays = [
        rng.normal(size=(B, H, D)), rng.normal(size=(B, L, H, D)), rng.normal(size=(B, L, H, Dv)),
        rng.normal(size=(B, L, H)), rng.uniform(-1, 1, size=(B, L, H)),
    ]
    floats = [tf.constant(a.astype(np.float32)) for a in arrays]
    dout = tf.constant(rng.normal(size=(B, H, Dv)).astype(np.float32))
    return floats, tf.constant(lengths), dout


def minimal_bytes(B, L, H, D, Dv, lengths, backward):
    """Bytes an ideal kernel must move: valid-position reads plus full output writes."""
    valid = int(np.sum(lengths))  # number of valid (b, l) positions
    read = B * H * D + valid * H * (D + Dv + 2)  # query; keys, values, bias, gate at valid positions
    read = read * FLOAT + B * 4  # + lengths
    write = B * H * Dv * FLOAT  # output
    if backward:
        read += B * H * Dv * FLOAT  # incoming gradient
        write += (B * H * D + B * L * H * (D + Dv + 2)) * FLOAT  # all five gradients, padding included
    return read + write


def make_stream_read():
    """The bandwidth reference: read keys, values, bias and gate once each, as fast as TF reduces."""
    def read(q, k, v, bias, gate, lengths, dout):
        return [tf.reduce_sum(t) for t in (k, v, bias, gate)]
    return tf.function(read)


def stream_bytes(floats):
    return sum(int(np.prod(t.shape)) for t in floats[1:]) * FLOAT


def make_step(implementation, backward):
    impl = "composite" if implementation == "xla" else implementation

    def forward(q, k, v, bias, gate, lengths, dout):
        return ops.feedback_weighted_attention(q, k, v, bias, gate, lengths, implementation=impl)

    def forward_backward(q, k, v, bias, gate, lengths, dout):
        floats = [q, k, v, bias, gate]
        with tf.GradientTape() as tape:
            tape.watch(floats)
            out = ops.feedback_weighted_attention(*floats, lengths, implementation=impl)
        return out, tape.gradient(out, floats, output_gradients=dout)

    return tf.function(forward_backward if backward else forward, jit_compile=implementation == "xla")


def time_steps(steps, args, warmup, repeats):
    """Median and min seconds per implementation.

    The implementations are timed round-robin (one run of each per round) rather than one after
    the other, so that load from other processes on a shared machine hits them alike and the
    ratios stay meaningful even when the absolute times drift.
    """
    for step in steps.values():
        for _ in range(warmup):
            step(*args)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step(*args)  # CPU tf.function calls return when the results are computed
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def native_step(backward, threads):
    """The pybind11 kernels as a ``time_steps`` step: ``step(isa, *arrays, grad)``."""
    from tfrec_kuai import _native

    def step(isa, q, k, v, bias, gate, lengths, grad):
        if backward:
            return _native.fwa_backward(grad, q, k, v, bias, gate, lengths, None, num_threads=threads, isa=isa)
        return _native.fwa_forward(q, k, v, bias, gate, lengths, None, num_threads=threads, isa=isa)
    return step


def isa_table(shapes, fills, warmup, repeats):
    """Rows of the baseline vs AVX2 kernels (pybind11, all CPUs), forward and forward + backward."""
    threads = os.cpu_count() or 1
    rows = []
    for shape in shapes:
        for fill in fills:
            floats, lengths, dout = make_inputs(*shape, fill)
            arrays = [t.numpy() for t in floats] + [lengths.numpy(), dout.numpy()]
            for backward in (False, True):
                step = native_step(backward, threads)
                steps = {isa: functools.partial(step, isa) for isa in ("baseline", "avx2")}
                times = time_steps(steps, arrays, warmup, repeats)
                nbytes = minimal_bytes(*shape, arrays[5], backward)
                rows.append(dict(shape=",".join(map(str, shape)), fill=fill, mode="fwd+bwd" if backward else "fwd",
                                 baseline_ms=times["baseline"][0] * 1e3, avx2_ms=times["avx2"][0] * 1e3,
                                 speedup=times["baseline"][0] / times["avx2"][0],
                                 avx2_gbps=nbytes / times["avx2"][0] / 1e9))
    return rows


def _avx2_supported():
    from tfrec_kuai import _native
    return _native.fwa_isa_supported("avx2")


def _percent(fraction):
    return "–" if np.isnan(fraction) else f"{fraction:.0%}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="all")
    parser.add_argument("--fills", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    args = parser.parse_args(argv)
    if "fused" in args.impls and not ops.fused_available():
        sys.exit("the fused op library is not built: pip install --no-build-isolation -e .")

    isa = ops.fused_isa()
    print(f"TensorFlow {tf.version.VERSION}, intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
          f"median of {args.repeats} (warmup {args.warmup}), fused kernels: {isa or 'not built'}", flush=True)
    header = (f"{'B,L,H,D,Dv':>20} {'fill':>5} {'pass':>8} {'impl':>10} {'median ms':>10} {'min ms':>8} "
              f"{'GB/s':>6} {'fused x':>8} {'x (min)':>8} {'of stream':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    for shape in SHAPES[args.shapes]:
        for fill in args.fills:
            floats, lengths, dout = make_inputs(*shape, fill)
            for backward in (False, True):
                nbytes = minimal_bytes(*shape, lengths.numpy(), backward)
                steps = {impl: make_step(impl, backward) for impl in args.impls}
                if not backward:
                    steps["stream"] = make_stream_read()
                results = time_steps(steps, (*floats, lengths, dout), args.warmup, args.repeats)
                streamed = stream_bytes(floats)
                stream_gbps = streamed / results["stream"][0] / 1e9 if not backward else None
                for impl in steps:
                    median, fastest = results[impl]
                    fused = results.get("fused", (float("nan"), float("nan")))
                    moved = streamed if impl == "stream" else nbytes
                    row = dict(shape=",".join(map(str, shape)), fill=fill, mode="fwd+bwd" if backward else "fwd",
                               impl=impl, median_ms=median * 1e3, min_ms=fastest * 1e3, gbps=moved / median / 1e9,
                               fused_speedup=median / fused[0], fused_speedup_min=fastest / fused[1])
                    row["of_stream"] = row["gbps"] / stream_gbps if stream_gbps else float("nan")
                    rows.append(row)
                    print(f"{row['shape']:>20} {fill:>5.0%} {row['mode']:>8} {impl:>10} {row['median_ms']:>10.2f} "
                          f"{row['min_ms']:>8.2f} {row['gbps']:>6.2f} {row['fused_speedup']:>8.2f} "
                          f"{row['fused_speedup_min']:>8.2f} {_percent(row['of_stream']):>9}", flush=True)
    if isa is not None and _avx2_supported():
        print(f"\nthe kernels' two instruction sets (pybind11, {os.cpu_count()} threads, median ms)\n")
        print("| B,L,H,D,Dv | fill | pass | baseline | avx2 | avx2 speed-up | avx2 GB/s |\n|---|---|---|---|---|---|---|")
        for r in isa_table(SHAPES[args.shapes], args.fills, args.warmup, args.repeats):
            rows.append({**r, "impl": "isa"})
            print(f"| {r['shape']} | {r['fill']:.0%} | {r['mode']} | {r['baseline_ms']:.2f} | {r['avx2_ms']:.2f} | "
                  f"{r['speedup']:.2f} | {r['avx2_gbps']:.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
