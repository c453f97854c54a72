"""The Beam job as the log grows: wall time, cost per impression and peak memory at 1 M, 3 M, 10 M.

    .venv/bin/python benchmarks/bench_pipeline_scale.py [--impressions 1000000,3000000,10000000] [--runs 3]
        [--runs_largest 1] [--videos 0] [--workdir DIR]

For each size: ``tfrec-kuai simulate --impressions N`` (users grow with N, 150 impressions each;
``--videos`` grows the catalogue too), then ``python -m beam_pipelines.build_examples`` on it, each
run in a process of its own on the in-process DirectRunner (the default), its peak resident memory
read from the kernel's accounting of that process (``os.wait4``'s ``ru_maxrss``). Prints the median
wall time of ``--runs`` runs (``--runs_largest`` for the largest size), µs per impression and its
ratio to the smallest size, peak memory, and the largest user's history (the bound a cluster
worker needs: the Beam job groups a user's events on one worker).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from bench_pipeline import job_args   # the same flags as the in-process benchmark


def simulate(folder, impressions, videos):
    if os.path.exists(os.path.join(folder, "params.json")):
        return
    subprocess.run([sys.executable, "-m", "tfrec_kuai.cli", "simulate", "--output", folder, "--impressions",
                    str(impressions), "--seed", "7", "--videos", str(videos), "--no_progress"], check=True, cwd=REPO)


def run_job(log_dir, out):
    """(wall seconds, peak RSS bytes, metadata) of one build_examples process."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "beam_pipelines.build_examples", *job_args(log_dir, out)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_pipeline_scale: build_examples failed on {log_dir}:\n{stderr.decode()[-2000:]}")
    with open(os.path.join(out, "metadata.json")) as f:
        return seconds, usage.ru_maxrss * 1024, json.load(f)


def largest_user(log_dir):
    """Impressions of the heaviest user of the log (the largest per-user group of the job)."""
    import numpy as np
    with open(os.path.join(log_dir, "params.json")) as f:
        counts = np.zeros(json.load(f)["users"], np.int64)
    for name in ("log_standard_sim.csv", "log_random_sim.csv"):
        with open(os.path.join(log_dir, name)) as f:
            f.readline()
            while lines := f.readlines(100_000_000):
                counts += np.bincount([int(line.split(",", 1)[0]) for line in lines], minlength=len(counts))
    return int(counts.max())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impressions", default="1000000,3000000,10000000", help="log sizes, comma-separated")
    p.add_argument("--runs", type=int, default=3, help="runs per size (median)")
    p.add_argument("--runs_largest", type=int, default=1, help="runs of the largest size")
    p.add_argument("--videos", type=int, default=0, help="catalogue size (simulate --videos; 0: KuaiRand-Pure's)")
    p.add_argument("--workdir", default="/tmp/tfrec_kuai_bench_pipeline_scale")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.impressions.split(",")]
    rows = []
    for n in sizes:
        log_dir = os.path.join(args.workdir, f"log_{n}_v{args.videos}")
        simulate(log_dir, n, args.videos)
        runs = [run_job(log_dir, os.path.join(args.workdir, "examples"))
                for _ in range(args.runs_largest if n == max(sizes) else args.runs)]
        seconds = statistics.median(r[0] for r in runs)
        written = runs[-1][2]["rows"]
        rows.append({"impressions": n, "runs": [r[0] for r in runs], "seconds": seconds,
                     "peak_rss_gb": max(r[1] for r in runs) / 1e9, "largest_user": largest_user(log_dir),
                     "examples": written["train_examples"] + written["eval_examples"]})
        print(f"  {n:,} impressions: {', '.join(f'{r[0]:.1f}' for r in runs)} s, peak {rows[-1]['peak_rss_gb']:.2f} GB",
              file=sys.stderr, flush=True)
    base = rows[0]["seconds"] / rows[0]["impressions"]
    print(f"\nbuild_examples, DirectRunner in-process, L = 50, {os.cpu_count()} CPUs, catalogue "
          f"{args.videos or 'KuaiRand-Pure'} videos\n")
    print("| impressions | runs | wall s (median) | µs / impression | per impression / smallest | peak RSS (GB) | "
          "largest user (impressions) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        per = r["seconds"] / r["impressions"]
        print(f"| {r['impressions']:,} | {len(r['runs'])} | {r['seconds']:.1f} | {per * 1e6:.1f} | {per / base:.2f} | "
              f"{r['peak_rss_gb']:.2f} | {r['largest_user']:,} |")
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "bench_pipeline_scale.jsonl"), "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "videos": args.videos, "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
