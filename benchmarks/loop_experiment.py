"""The daily loop of docs/online.md: `full` against itself over days, its logging reference and
the same loop with `no_feedback`, by the rule of docs/preregistrations/daily_loop.md.

Runs ``tfrec-kuai loop`` twice on the same world seed (skipping a loop whose metrics.json says
it finished) — ``--variant full --reference logging --reference oracle --reference frozen`` and ``--variant
no_feedback`` — then reads every day's served logs and compares per-user watch seconds with 95 %
paired user-level bootstrap intervals (the same users in every loop and reference):

* the loop improves: days 6–8 against days 1–3 of `full` (the last three days against the first
  three for another ``--days``), and against the `frozen` reference (the day-0 model kept
  serving the same users: the same world without the daily learning);
* ends above logging: the last day of `full` against its `logging` reference;
* ends above `no_feedback`: the last day of the two loops, and their last three days pooled.

    .venv/bin/python benchmarks/loop_experiment.py --output OUT [--days 8 --users 1000 --seed 5 --uploads_per_day 100 --videos N]

Writes OUT/summary.json and OUT/table.md and prints the table.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfrec_kuai.online.abtest import RANDOM, STANDARD
from tfrec_kuai.schema import COLUMN_INDEX, compute_labels
from tfrec_kuai.sim.world import World

REFERENCES = ("logging", "oracle", "frozen")
LOOPS = {"full": ["--variant", "full", "--reference", "logging", "--reference", "oracle", "--reference", "frozen"],
         "no_feedback": ["--variant", "no_feedback"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="folder of the two loops (OUT/full, OUT/no_feedback)")
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--history_length", type=int, default=50)
    p.add_argument("--impressions", type=int, default=150_000)
    p.add_argument("--world_days", type=int, default=7)
    p.add_argument("--uploads_per_day", type=int, default=100, help="new videos every served day (cold start)")
    p.add_argument("--videos", type=int, default=0, help="catalogue size of the world (0: KuaiRand-Pure's 7,583)")
    p.add_argument("--bootstrap", type=int, default=2000)
    return p.parse_args(argv)


def run_loops(args):
    common = ["--days", str(args.days), "--users", str(args.users), "--seed", str(args.seed),
              "--history_length", str(args.history_length), "--impressions", str(args.impressions),
              "--world_days", str(args.world_days), "--uploads_per_day", str(args.uploads_per_day), "--videos", str(args.videos),
              "--no_progress"]
    for name, flags in LOOPS.items():
        folder = os.path.join(args.output, name)
        metrics = os.path.join(folder, "metrics.json")
        if os.path.exists(metrics) and json.load(open(metrics)).get("setup", {}).get("finished"):
            continue
        print(f"[loop] {name}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "tfrec_kuai.cli", "loop", "--output", folder, *common, *flags],
                       check=True)


def per_user(folder, users, world, day):
    """``[users, 4]``: watch seconds, impressions, skips of the served logs in ``folder`` (loop
    day ``day``), and impressions of videos uploaded that world day or the one before."""
    C = COLUMN_INDEX
    parts = []
    for name in (STANDARD, RANDOM):
        path = os.path.join(folder, name)
        with open(path) as f:
            f.readline()                                  # the header
            body = f.read()
        if body.strip():
            parts.append(np.loadtxt(body.splitlines(), delimiter=",", dtype=np.int64, ndmin=2))
    rows = np.concatenate(parts) if parts else np.zeros((0, len(C)), np.int64)
    index = np.searchsorted(users, rows[:, C["user_id"]])
    skip = compute_labels(rows[:, C["play_time_ms"]], rows[:, C["duration_ms"]])["skip"]
    out = np.zeros((len(users), 4))
    uploaded = world.population.upload_day[world.video_index(rows[:, C["video_id"]])]   # -1: the catalogue's
    age = (day - 1) - uploaded                                                           # loop day d = world day d-1
    out[:, 3] = np.bincount(index, (uploaded >= 0) & (age >= 0) & (age <= 1), len(users))
    out[:, 0] = np.bincount(index, rows[:, C["play_time_ms"]] / 1000.0, len(users))
    out[:, 1] = np.bincount(index, minlength=len(users))
    out[:, 2] = np.bincount(index, skip, len(users))
    return out


def lift(a, b, rng, replicates):
    """Watch time of ``a`` over ``b`` − 1 ([users, 3] sums each, the same users) with a 95 % paired
    bootstrap interval, and the same for the skip rate."""
    weights = rng.multinomial(len(a), np.full(len(a), 1.0 / len(a)), size=replicates)   # [R, users]
    boot_a, boot_b = weights @ a, weights @ b                                               # [R, 3]
    out = {}
    for metric, value in (("watch_time_per_user_day", lambda s: s[..., 0]),
                          ("skip_rate", lambda s: s[..., 2] / s[..., 1])):
        point = value(a.sum(0)) / value(b.sum(0)) - 1
        boot = value(boot_a) / value(boot_b) - 1
        low, high = np.percentile(boot, [2.5, 97.5])
        out[metric] = {"value": float(point), "low": float(low), "high": float(high),
                       "excludes_zero": bool(low > 0 or high < 0)}
    return out


def main(argv=None):
    args = parse_args(argv)
    run_loops(args)
    world = os.path.join(args.output, "full", "world")
    world = World(world, seed=args.seed)
    users = world.sample_users(args.users)
    days = list(range(1, args.days + 1))
    served = {name: {d: per_user(os.path.join(args.output, name, "days", str(d)), users, world, d) for d in days}
              for name in LOOPS}
    for ref in REFERENCES:
        served[ref] = {d: per_user(os.path.join(args.output, "full", "days", str(d), "reference", ref), users, world, d)
                       for d in days}
    rng = np.random.default_rng(7)
    first, last = days[:3], days[-3:]

    def pooled(name, ds):
        return sum(served[name][d] for d in ds)

    claims = {
        "full improves (last 3 days vs first 3)": lift(pooled("full", last), pooled("full", first), rng, args.bootstrap),
        "full vs frozen day-0 model (last 3 days)": lift(pooled("full", last), pooled("frozen", last), rng,
                                                          args.bootstrap),
        "full vs frozen day-0 model, last day": lift(served["full"][days[-1]], served["frozen"][days[-1]], rng,
                                                     args.bootstrap),
        "full vs logging, last day": lift(served["full"][days[-1]], served["logging"][days[-1]], rng, args.bootstrap),
        "full vs no_feedback loop, last day": lift(served["full"][days[-1]], served["no_feedback"][days[-1]], rng,
                                                   args.bootstrap),
        "full vs no_feedback loop, last 3 days": lift(pooled("full", last), pooled("no_feedback", last), rng,
                                                      args.bootstrap),
        "no_feedback improves (last 3 days vs first 3)": lift(pooled("no_feedback", last),
                                                              pooled("no_feedback", first), rng, args.bootstrap),
    }
    by_day = {name: [{"day": d, "watch_time_per_user_day": float(s[:, 0].sum() / len(users)),
                      "skip_rate": float(s[:, 2].sum() / max(s[:, 1].sum(), 1)),
                      "fresh_share": float(s[:, 3].sum() / max(s[:, 1].sum(), 1))} for d, s in per_day.items()]
              for name, per_day in served.items()}
    offline = {name: [(d.get("offline") or {}).get("auc_skip") for d in m["days"]]
               for name, m in ((n, json.load(open(os.path.join(args.output, n, "metrics.json")))) for n in LOOPS)}
    metrics = {name: json.load(open(os.path.join(args.output, name, "metrics.json"))) for name in LOOPS}
    summary = {"args": vars(args), "by_day": by_day, "claims": claims,
               "failed_requests": {n: sum(d["failed_requests"] for d in m["days"]) for n, m in metrics.items()},
               "unattributed_requests": {n: sum(d.get("unattributed_requests", 0) for d in m["days"])
                                         for n, m in metrics.items()},
               "beam_s": {n: [d["beam_s"] for d in m["days"]] for n, m in metrics.items()},
               "offline_auc_skip": offline}
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [f"Daily loop, {args.users} users, {args.days} days, world seed {args.seed}; watch s / user-day "
             "(skip rate; share of impressions on videos uploaded that day or the day before) by day", "", "| day | " + " | ".join(served) + " |", "|---" * (len(served) + 1) + "|"]
    for i, d in enumerate(days):
        lines.append(f"| {d} | " + " | ".join(f"{by_day[n][i]['watch_time_per_user_day']:.0f} "
                                              f"({by_day[n][i]['skip_rate']:.3f}; {by_day[n][i]['fresh_share']:.1%})"
                                              for n in served) + " |")
    lines += ["", "| comparison | watch time lift [95 %] | skip rate lift [95 %] |", "|---|---|---|"]
    for name, c in claims.items():
        w, s = c["watch_time_per_user_day"], c["skip_rate"]
        lines.append(f"| {name} | {w['value']:+.1%} [{w['low']:+.1%}, {w['high']:+.1%}] | "
                     f"{s['value']:+.1%} [{s['low']:+.1%}, {s['high']:+.1%}] |")
    lines += ["", "offline skip AUC by day (the serving model on the day's examples): " +
              "; ".join(f"{n} " + ", ".join("–" if a is None else f"{a:.3f}" for a in v) for n, v in offline.items()),
              f"Beam step seconds by day: {summary['beam_s']}"]
    lines += ["", f"failed requests: {summary['failed_requests']}; unattributed requests: "
              f"{summary['unattributed_requests']}"]
    table = "\n".join(lines)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
