"""The A/B harness's own cost: simulated impressions served per second in-process and over gRPC,
and where a served impression's time goes.

One arm of ``tfrec-kuai abtest`` is driven by hand here — the world's cohort, its visits, one
request per page — with the same policies the command builds (``savedmodel:`` in-process,
``served:`` through a ``python -m serving.server`` subprocess on 127.0.0.1 that this script starts,
official ``tensorflow-serving-api`` stubs). The policy's two steps are timed where they run:

* ``request``: building the page's request from the world's log (the C++ history builder);
* ``call``: the model — the in-process signature, or the gRPC round trip (transport + server +
  model) for the served path;
* ``world``: everything else of the run — visits, reactions, the leave model, the log rows.

The harness must not be the bottleneck of an A/B test: ``world + request`` should be at most a
quarter of a served impression's cost (the ``harness share`` column). Paths alternate run by run
(in-process, served, in-process, ...) after one discarded warm-up run of each, so neither gets the
first, slow run of a process; the table has medians over ``--runs``.

    .venv/bin/python benchmarks/bench_abtest.py [--world WORLD --export EXPORT] [--users 200] [--runs 3]

``WORLD`` is a ``tfrec-kuai simulate`` folder, ``EXPORT`` a ``tfrec-kuai export`` model folder of
a model of its log. Without them the serving benchmark's world and export are built (or reused) in
``--work_dir``: a simulated log and an export of untrained default-size models (the cost of a
request does not depend on the weights; ``bench_serving.build_export``).
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

from tfrec_kuai.online.policies import make_policy, resolve_export
from tfrec_kuai.online.served import LocalServer
from tfrec_kuai.online.worldlog import read_world_log
from tfrec_kuai.schema import COLUMN_INDEX
from tfrec_kuai.sim.world import World


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default=None, help="a `tfrec-kuai simulate` output folder (default: built)")
    p.add_argument("--export", default=None, help="a `tfrec-kuai export` model folder of a model of that world")
    p.add_argument("--work_dir", default=os.path.join(HERE, "out", "bench_abtest"),
                   help="where the world and export are built without --world / --export")
    p.add_argument("--impressions", type=int, default=200_000, help="size of the built world's log")
    p.add_argument("--users", type=int, default=200, help="users served per run")
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--runs", type=int, default=3, help="timed runs of each path, after one warm-up run each")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--output", default=None, help="also write the table as JSON here")
    return p.parse_args(argv)


def one_run(world, log_rows, policy, user_ids, days):
    """``{impressions, total_s, world_s, request_s, call_s, requests}`` of serving ``user_ids``:
    the policy's request building and model call are timed while the world drives it."""
    clock = {"request_s": 0.0, "call_s": 0.0, "requests": 0}
    build, call = policy.requests.build, policy.call

    def timed(function, key, count=False):
        def wrapper(arg):
            t = time.perf_counter()
            try:
                return function(arg)
            finally:
                clock[key] += time.perf_counter() - t
                clock["requests"] += count
        return wrapper

    policy.requests.build, policy.call = timed(build, "request_s"), timed(call, "call_s", True)
    try:
        rows = log_rows[np.isin(log_rows[:, COLUMN_INDEX["user_id"]], user_ids)]
        started = time.perf_counter()
        cohort = world.cohort(user_ids, rows, policy.history_length)
        cols, _, _ = world.serve(cohort, policy, days).columns()
        total = time.perf_counter() - started
    finally:
        policy.requests.build, policy.call = build, call
    return {"impressions": int(len(cols["user_id"])), "total_s": total,
            "world_s": total - clock["request_s"] - clock["call_s"], **clock}


def row(name, runs):
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    def per_impression_ms(key):
        return 1000.0 * med[key] / med["impressions"]

    return {"path": name, "impressions_per_s": med["impressions"] / med["total_s"],
            "world_ms": per_impression_ms("world_s"), "request_ms": per_impression_ms("request_s"),
            "call_ms": per_impression_ms("call_s"), "total_ms": per_impression_ms("total_s"),
            "harness_share": (med["world_s"] + med["request_s"]) / med["total_s"],
            "impressions": int(med["impressions"]), "requests": int(med["requests"]),
            "spread_impressions_per_s": [min(r["impressions"] / r["total_s"] for r in runs),
                                         max(r["impressions"] / r["total_s"] for r in runs)]}


def main(argv=None):
    args = parse_args(argv)
    if (args.world is None) != (args.export is None):
        sys.exit("bench_abtest: give both --world and --export, or neither")
    if args.world is None:
        from bench_serving import build_export

        base, _ = build_export(args.work_dir, args.impressions, "kuai")
        args.world, args.export = os.path.join(args.work_dir, "log"), os.path.join(base, "kuai")
    export = resolve_export(args.export)
    world = World(args.world, seed=args.seed)
    log_rows = read_world_log(args.world)
    users = world.sample_users(args.users)
    results = {"in-process": [], "served (gRPC)": []}
    with LocalServer({"bench": export}) as server:
        policies = {"in-process": make_policy(f"savedmodel:{export}", world, log_rows),
                    "served (gRPC)": make_policy(f"served:{export}", world, log_rows, server.address, "bench")}
        for run in range(args.runs + 1):
            for name, policy in policies.items():
                # Each run a fresh world of the same seed: the same users, visits and draws.
                measured = one_run(World(args.world, seed=args.seed), log_rows, policy, users, args.days)
                if run:                                  # run 0 warms both paths up and is discarded
                    results[name].append(measured)
                print(f"  run {run}{' (warm-up)' if not run else ''} {name}: "
                      f"{measured['impressions'] / measured['total_s']:,.0f} impressions/s", file=sys.stderr)
        policies["served (gRPC)"].close()
    table = [row(name, runs) for name, runs in results.items()]
    inproc, grpc = table
    print(f"\nA/B harness, {args.users} users x {args.days} day(s), {grpc['impressions']} impressions and "
          f"{grpc['requests']} requests per run, median of {args.runs} runs\n")
    print("ms per impression:\n")
    print("| path | impressions/s | world | request | call | total | harness share |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['path']} | {r['impressions_per_s']:,.0f} | {r['world_ms']:.3f} | {r['request_ms']:.3f} | "
              f"{r['call_ms']:.3f} | {r['total_ms']:.3f} | {r['harness_share']:.0%} |")
    server_ms = grpc["call_ms"] - inproc["call_ms"]
    print(f"\nserved / in-process impressions/s: {grpc['impressions_per_s'] / inproc['impressions_per_s']:.2f}; "
          f"the gRPC path adds {server_ms:.3f} ms per impression over the in-process model call "
          f"(transport + server)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "table": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
