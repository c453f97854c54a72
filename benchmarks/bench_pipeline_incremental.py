"""Benchmark of the daily Beam step: incremental (one day + the history state) vs the full history.

    .venv/bin/python benchmarks/bench_pipeline_incremental.py --days 8 --impressions 400000 --runs 3

On one simulated log of ``--days`` days (seed fixed), cut into one file per date, day 1 is built
by the full job, which writes the history state; then for each day d >= 2, in the same run:

(a) incremental: ``--input`` day d, ``--history_state`` the state of day d-1 (each user's last L
    rows and the vocabulary counts), writing the state of day d for the next day;
(b) full: ``--input`` days 1..d, recomputing the whole history.

Both on the in-process DirectRunner, ``--eval_days 0`` (the loop's case: every new row trains),
the median of ``--runs`` runs each. The daily loop needs (a) flat in d (day 7 within 1.3x of
day 2, docs/design.md §10); (b) grows with d. Prints the table and writes it to ``--output``.
Not a test: run it by hand on an idle machine; numbers depend on what else runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import tfrec_kuai  # noqa: F401
from beam_pipelines import build_examples
from tests.log_rows import split_by_date
from tfrec_kuai.sim.simulator import SimParams, simulate


def job(log_dir, out, inputs, history_length, extra=()):
    """``(seconds, metadata)`` of one run of the job (its output folder replaced)."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["--input", ",".join(inputs), "--output", out,
            "--video_features", os.path.join(log_dir, "video_features_basic_sim.csv"),
            "--user_features", os.path.join(log_dir, "user_features_sim.csv"),
            "--history_length", str(history_length), "--eval_days", "0", "--overwrite", *extra]
    start = time.perf_counter()
    meta = build_examples.run(args)
    return time.perf_counter() - start, meta


def median_job(runs, *args, **kwargs):
    times, meta = [], None
    for _ in range(runs):
        seconds, meta = job(*args, **kwargs)
        times.append(seconds)
    return statistics.median(times), meta


def day_arguments(description, impressions, users, seed, runs, output_name):
    """The parser of a benchmark over a log cut into days (this one and ``bench_loop.py``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--impressions", type=int, default=impressions, help="over all days")
    parser.add_argument("--users", type=int, default=users)
    parser.add_argument("--history_length", type=int, default=50)
    parser.add_argument("--runs", type=int, default=runs, help="Beam runs per day and mode (the median is printed)")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                                      output_name),
                        help="JSON file the table is written to (default: benchmarks/out/, not tracked)")
    return parser


def log_by_date(work, args):
    """``(log folder, [(date, path)])``: the simulated log of ``--days`` days in ``work`` (made
    once), cut into one file per date."""
    log_dir = os.path.join(work, "log")
    if not os.path.exists(os.path.join(log_dir, "params.json")):
        simulate(log_dir, SimParams(impressions=args.impressions, users=args.users, days=args.days,
                                    seed=args.seed), progress=False)
    return log_dir, split_by_date([os.path.join(log_dir, f) for f in ("log_standard_sim.csv", "log_random_sim.csv")],
                                  os.path.join(work, "days"))


def write_table(args, table):
    """The run's setup and per-day rows as JSON at ``--output``."""
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"setup": vars(args), "days": table}, f, indent=2)
    print(f"written to {args.output}")


def main(argv=None):
    parser = day_arguments(__doc__.split("\n")[0], 400_000, 2000, 3, 1, "bench_pipeline_incremental.json")
    args = parser.parse_args(argv)
    if args.days < 2:
        parser.error("--days must be >= 2")
    work = args.work or tempfile.mkdtemp(prefix="bench_incremental_")
    try:
        log_dir, split = log_by_date(work, args)
        paths = [p for _, p in split]

        def state(d):
            return os.path.join(work, f"state_{d}")

        L = args.history_length
        job(log_dir, os.path.join(work, "examples_1"), paths[:1], L, ["--write_history_state", state(1)])
        table = []
        for d in range(2, len(paths) + 1):
            inc_s, inc = median_job(args.runs, log_dir, os.path.join(work, f"incremental_{d}"), paths[d - 1:d], L,
                                    ["--history_state", state(d - 1), "--write_history_state", state(d)])
            full_s, full = median_job(args.runs, log_dir, os.path.join(work, f"full_{d}"), paths[:d], L)
            table.append({"day": d, "date": split[d - 1][0], "new_rows": inc["rows"]["input"],
                          "state_rows": inc["rows"]["history_rows"]["input"], "full_rows": full["rows"]["input"],
                          "incremental_s": round(inc_s, 2), "full_s": round(full_s, 2)})
            shutil.rmtree(os.path.join(work, f"full_{d}"), ignore_errors=True)
            row = table[-1]
            print(f"day {d}: incremental {row['incremental_s']:.2f} s ({row['new_rows']} rows + {row['state_rows']} "
                  f"of state), full {row['full_s']:.2f} s ({row['full_rows']} rows)", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("| day | new rows | state rows | incremental s | full rows | full s | full / incremental |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['day']} | {r['new_rows']} | {r['state_rows']} | {r['incremental_s']:.2f} | {r['full_rows']} | "
              f"{r['full_s']:.2f} | {r['full_s'] / max(r['incremental_s'], 1e-9):.2f} |")
    first, last = table[0]["incremental_s"], table[-1]["incremental_s"]
    print(f"\nincremental: day {table[-1]['day']} / day {table[0]['day']} = {last / max(first, 1e-9):.2f}")
    write_table(args, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
