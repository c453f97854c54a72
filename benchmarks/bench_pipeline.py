"""Benchmark of the data path: simulator, Beam job end to end, history builder native vs Python.

    .venv/bin/python benchmarks/bench_pipeline.py --impressions 1000000 --runs 3

Measures, on one simulated log (seed fixed):
* the simulator (impressions/s);
* ``build_examples`` end to end on the DirectRunner, in-process and multi-process
  (``--direct_num_workers=2 --direct_running_mode=multi_processing``): impressions/s, median of
  ``--runs`` runs;
* the same job with ``--history_implementation=python`` (the pure-Python window builder), once;
* the history builder alone, native vs Python, on the same users' events (median of runs).

Prints a JSON summary and, with ``--markdown``, the table for benchmarks/RESULTS.md.
Not a test: run it by hand on an idle machine; numbers depend on what else runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import tfrec_kuai  # noqa: F401
from beam_pipelines import build_examples
from tfrec_kuai.data import history
from tfrec_kuai.schema import COLUMN_INDEX, compute_labels, feedback_bits
from tfrec_kuai.sim.simulator import SimParams, simulate


def job_args(log_dir, out, extra=()):
    """build_examples' flags for a `tfrec-kuai simulate` folder: both side tables, L = 50, one eval day."""
    return ["--input", os.path.join(log_dir, "log_*.csv"), "--output", out,
            "--video_features", os.path.join(log_dir, "video_features_basic_sim.csv"),
            "--user_features", os.path.join(log_dir, "user_features_sim.csv"),
            "--history_length", "50", "--eval_days", "1", *extra]


def run_job(log_dir, out, extra):
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    meta = build_examples.run(job_args(log_dir, out, extra))
    return time.perf_counter() - start, meta


def builder_events(log_dir, max_users):
    """Per-user sorted event arrays of the first ``max_users`` users of the log."""
    logs = [np.loadtxt(os.path.join(log_dir, name), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
            for name in ("log_standard_sim.csv", "log_random_sim.csv")]
    log = np.concatenate(logs)
    log = log[np.lexsort((log[:, COLUMN_INDEX["time_ms"]], log[:, 0]))]
    users = np.unique(log[:, 0])[:max_users]
    out = []
    for u in users:
        rows = log[log[:, 0] == u]
        play, dur = rows[:, COLUMN_INDEX["play_time_ms"]], rows[:, COLUMN_INDEX["duration_ms"]]
        out.append((rows[:, COLUMN_INDEX["time_ms"]], rows[:, 1], rows[:, 1] % 997, rows[:, 1] % 53,
                    (play / 1000).astype(np.float32), (dur / 1000).astype(np.float32),
                    feedback_bits(compute_labels(play, dur))))
    return out


def time_builders(events, runs):
    """Median seconds of each builder over the same events; runs alternate native and Python so
    that both see the same load from whatever else shares the machine."""
    times = {"native": [], "python": []}
    for _ in range(runs):
        for implementation in ("native", "python"):
            start = time.perf_counter()
            for ev in events:
                history.build_history_windows(*ev, 50, implementation=implementation)
            times[implementation].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impressions", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--builder_users", type=int, default=2000, help="users timed in the builder-only test")
    parser.add_argument("--skip_python_job", action="store_true", help="skip the end-to-end pure-Python run")
    parser.add_argument("--builder_only", action="store_true", help="only the history-builder comparison")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bench_pipeline_")
    log_dir = os.path.join(work, "log")
    n = args.impressions
    result = {"impressions": n, "runs": args.runs, "cpus": os.cpu_count(), "machine": platform.processor() or
              platform.machine(), "native_builder": history.native_available(),
              "load_avg_start": os.getloadavg()[0]}

    start = time.perf_counter()
    simulate(log_dir, SimParams(impressions=n, seed=7), progress=False)
    result["simulate_s"] = time.perf_counter() - start

    if args.builder_only:
        events = builder_events(log_dir, args.builder_users)
        builder = time_builders(events, args.runs)
        result.update(builder_events=int(sum(len(e[0]) for e in events)), builder_native_s=builder["native"],
                      builder_python_s=builder["python"], builder_speedup=builder["python"] / builder["native"],
                      load_avg_end=os.getloadavg()[0])
        print(json.dumps(result, indent=2))
        return 0
    for name, extra in (("in_process", []),
                        ("multi_process", ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])):
        times = []
        for _ in range(args.runs):
            seconds, meta = run_job(log_dir, os.path.join(work, f"out_{name}"), extra)
            assert meta["rows"]["input"] == n
            times.append(seconds)
        result[f"{name}_s_runs"] = [round(t, 1) for t in times]
        result[f"{name}_s"] = statistics.median(times)
        result[f"{name}_imp_per_s"] = n / statistics.median(times)
    if not args.skip_python_job:
        seconds, _ = run_job(log_dir, os.path.join(work, "out_python"), ["--history_implementation=python"])
        result["in_process_python_builder_s"] = seconds
        result["in_process_python_builder_imp_per_s"] = n / seconds

    events = builder_events(log_dir, args.builder_users)
    result["builder_events"] = int(sum(len(e[0]) for e in events))
    builder = time_builders(events, args.runs)
    result["builder_native_s"] = builder["native"]
    result["builder_python_s"] = builder["python"]
    result["builder_speedup"] = result["builder_python_s"] / result["builder_native_s"]
    result["multi_vs_in_process"] = result["in_process_s"] / result["multi_process_s"]
    result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    if args.markdown:
        r = result
        print(f"""
| measure ({n:,} impressions, L=50, median of {args.runs}) | seconds | impressions/s |
|---|---|---|
| simulate | {r['simulate_s']:.1f} | {n / r['simulate_s']:,.0f} |
| build_examples, DirectRunner in-process | {r['in_process_s']:.1f} | {r['in_process_imp_per_s']:,.0f} |
| build_examples, DirectRunner multi-process (2 workers) | {r['multi_process_s']:.1f} | {r['multi_process_imp_per_s']:,.0f} |""")
        if "in_process_python_builder_s" in r:
            print(f"| build_examples in-process, pure-Python history builder (1 run) | "
                  f"{r['in_process_python_builder_s']:.1f} | {r['in_process_python_builder_imp_per_s']:,.0f} |")
        print(f"""
| history builder alone ({r['builder_events']:,} events of {args.builder_users} users, L=50) | seconds | events/s |
|---|---|---|
| native (pybind11, C++) | {r['builder_native_s']:.3f} | {r['builder_events'] / r['builder_native_s']:,.0f} |
| pure Python reference | {r['builder_python_s']:.3f} | {r['builder_events'] / r['builder_python_s']:,.0f} |
| ratio | {r['builder_speedup']:.1f}x | |
""")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
