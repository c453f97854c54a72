"""Benchmark of the daily loop's per-day steps as days accumulate: incremental vs recomputing the
whole history, in the same run.

    .venv/bin/python benchmarks/bench_loop.py --days 8 --impressions 150000

On one simulated log of ``--days`` days (the loop's day-0 world shape), cut into one file per
date, day 1 is built and trained from scratch; then for each day d >= 2:

* **ExampleGen**: (a) incremental — the Beam job on day d with the history state of day d-1
  (``bench_pipeline_incremental.job``, the same call), (b) full — the job on days 1..d;
* **Trainer** (the ranking stage, the loop's default config, ``--validation none``): (a)
  warm-started from day d-1's incremental model on day d's examples, (b) from scratch on the full
  job's examples of days 1..d. Each fit is its own ``tfrec-kuai train`` process (the first fit
  of a process is the slow one: no order bias between the two modes), so both include the same
  TensorFlow start-up.

The export (Pusher) costs the same in both modes and is not repeated here; the loop's own
``metrics.json`` records it by day. Prints the table (seconds; the median of ``--runs`` for the
Beam step, one fit per mode and day) and writes it to ``--output``. Not a test: run it by hand on
an idle machine.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_pipeline_incremental import day_arguments, job, log_by_date, median_job, write_table


def train(examples, model_dir, warm_start=None, seed=0):
    """Seconds of one ``tfrec-kuai train --stage ranking`` process."""
    shutil.rmtree(model_dir, ignore_errors=True)
    argv = [sys.executable, "-m", "tfrec_kuai.cli", "train", "--examples", examples, "--model_dir", model_dir,
            "--stage", "ranking", "--variant", "full", "--validation", "none", "--seed", str(seed), "--verbose", "0"]
    if warm_start:
        argv += ["--warm_start", warm_start]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None):
    parser = day_arguments(__doc__.split("\n")[0], 150_000, 1000, 5, 3, "bench_loop.json")
    args = parser.parse_args(argv)
    if args.days < 3:
        parser.error("--days must be >= 3")
    work = args.work or tempfile.mkdtemp(prefix="bench_loop_")
    table = []
    try:
        log_dir, split = log_by_date(work, args)
        paths = [p for _, p in split]
        L = args.history_length

        def path(*parts):
            return os.path.join(work, "_".join(str(p) for p in parts))

        job(log_dir, path("incremental", 1), paths[:1], L, ["--write_history_state", path("state", 1)])
        train(path("incremental", 1), path("model", 1))
        for d in range(2, len(paths) + 1):
            inc_s, inc = median_job(args.runs, log_dir, path("incremental", d), paths[d - 1:d], L,
                                    ["--history_state", path("state", d - 1), "--write_history_state", path("state", d)])
            full_s, full = median_job(args.runs, log_dir, path("full", d), paths[:d], L)
            warm_s = train(path("incremental", d), path("model", d), warm_start=path("model", d - 1))
            scratch_s = train(path("full", d), path("scratch", d))
            for stale in (path("full", d), path("scratch", d), path("model", d - 1), path("incremental", d - 1)):
                shutil.rmtree(stale, ignore_errors=True)
            row = {"day": d, "new_rows": inc["rows"]["input"], "full_rows": full["rows"]["input"],
                   "beam_incremental_s": round(inc_s, 2), "beam_full_s": round(full_s, 2),
                   "train_warm_s": round(warm_s, 2), "train_scratch_s": round(scratch_s, 2)}
            table.append(row)
            print(f"day {d}: ExampleGen {inc_s:.1f} s vs {full_s:.1f} s, Trainer {warm_s:.1f} s vs {scratch_s:.1f} s",
                  flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("| day | new rows | all rows | ExampleGen incremental s | full s | Trainer warm s | scratch s "
          "| incremental total s | recompute total s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        inc, full = r["beam_incremental_s"] + r["train_warm_s"], r["beam_full_s"] + r["train_scratch_s"]
        print(f"| {r['day']} | {r['new_rows']} | {r['full_rows']} | {r['beam_incremental_s']:.1f} | "
              f"{r['beam_full_s']:.1f} | {r['train_warm_s']:.1f} | {r['train_scratch_s']:.1f} | {inc:.1f} | "
              f"{full:.1f} | {full / max(inc, 1e-9):.2f} |")
    for key in ("beam_incremental_s", "train_warm_s"):
        first, last = table[0][key], table[-1][key]
        print(f"{key}: day {table[-1]['day']} / day {table[0]['day']} = {last / max(first, 1e-9):.2f}; "
              f"median {statistics.median(r[key] for r in table):.1f} s")
    write_table(args, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
