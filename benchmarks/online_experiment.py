"""The online comparison of docs/online.md: the ranking variants and the ranking score, by paired A/B.

Runs the rule of docs/preregistrations/online_abtest.md with ``tfrec-kuai abtest`` (in-process,
``tfrec_kuai.online.abtest.run_abtest``):

1. the ranking score's search on the validation population (``--tune_seed``): a coordinate search
   over ``skip``, then ``hate``, then ``engage`` of the blend of ``full``, each step keeping the
   value of the best watch time per user-day;
2. on each reported world seed (``--seeds``), one paired A/B of every arm — ``full`` (the control),
   ``no_feedback``, ``shared_bottom``, ``popular``, ``random``, ``logging``, ``oracle``, and ``full``
   with the tuned blend, E[watch] alone and p_skip alone;
3. the table: per arm and seed the watch time per user-day and skip rate with each lift over
   ``full`` and its 95 % interval, whether the rule's claim holds (every seed's interval excludes
   zero the same way), and the share of the popular → oracle gap that ``full`` closes.

    .venv/bin/python benchmarks/online_experiment.py --world WORLD --exports EXPORTS --output OUT

``EXPORTS`` holds the model folders ``full``, ``no_feedback`` and ``shared_bottom`` (``tfrec-kuai
export --model_name <variant> --top_n 100 --retrieve_k 100``). Every A/B writes its own folder
under ``OUT`` (its metrics.json, page and logs); ``OUT/summary.json`` and ``OUT/table.md`` are the
result. A step whose metrics.json exists is not run again.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfrec_kuai.online.abtest import run_abtest
from tfrec_kuai.online.policies import Blend

VARIANTS = ("full", "no_feedback", "shared_bottom")
BASELINES = ("popular", "random", "logging", "oracle")
SEARCH = (("skip", (0.0, 0.5, 1.0, 2.0, 4.0)), ("hate", (0.0, 2.0, 4.0)), ("engage", (0.0, 1.0, 3.0)))
SINGLE = {"full_watch_only": "?skip=0&hate=0&engage=0", "full_skip_only": "?watch=0&hate=0&engage=0"}
METRICS = ("watch_time_per_user_day", "skip_rate")
BETTER = {"watch_time_per_user_day": 1, "skip_rate": -1}      # the sign of a lift in the arm's favour


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True)
    p.add_argument("--exports", required=True, help="folder with the model folders full, no_feedback, shared_bottom")
    p.add_argument("--output", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--tune_seed", type=int, default=201)
    p.add_argument("--tune_users", type=int, default=1000)
    p.add_argument("--bootstrap", type=int, default=1000)
    return p.parse_args(argv)


def _abtest(args, folder, arms, seed, users):
    path = os.path.join(args.output, folder)
    if os.path.exists(os.path.join(path, "metrics.json")):
        with open(os.path.join(path, "metrics.json")) as f:
            return json.load(f)
    print(f"[online] {folder}: {len(arms)} arms, {users} users, seed {seed}", file=sys.stderr, flush=True)
    return run_abtest(args.world, arms, users=users, days=args.days, seed=seed, output=path, paired=True,
                      replicates=args.bootstrap, progress=True)


def tune(args):
    """The coordinate search of the blend on the validation seed: ``(best Blend, trail)``."""
    full = os.path.join(args.exports, "full")
    best, trail = Blend(), []
    for field, values in SEARCH:
        candidates = {f"{field}_{v:g}": Blend(**{**best.__dict__, field: v}) for v in values}
        arms = [(name, f"savedmodel:{full}?{blend.text()}") for name, blend in candidates.items()]
        out = _abtest(args, f"tune_{field}", arms, args.tune_seed, args.tune_users)
        watch = {name: out["arms"][name]["watch_time_per_user_day"] for name in candidates}
        chosen = max(watch, key=watch.get)
        best = candidates[chosen]
        trail.append({"field": field, "watch_time_per_user_day": watch, "chosen": chosen})
    return best, trail


def claim(lifts, metric):
    """``"better"`` / ``"worse"`` when every seed's interval excludes zero the same way, else ``"not resolved"``."""
    signs = set()
    for lift in lifts:
        if lift["low"] is None or lift["high"] is None:
            return "not resolved"
        signs.add(1 if lift["low"] > 0 else -1 if lift["high"] < 0 else 0)
    if len(signs) != 1 or 0 in signs:
        return "not resolved"
    return "better" if signs.pop() == BETTER[metric] else "worse"


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    blend, trail = tune(args)
    arms = [(v, f"savedmodel:{os.path.join(args.exports, v)}") for v in VARIANTS]
    arms += [(b, b) for b in BASELINES]
    full = os.path.join(args.exports, "full")
    arms += [("full_tuned", f"savedmodel:{full}?{blend.text()}")]
    arms += [(name, f"savedmodel:{full}{query}") for name, query in SINGLE.items()]
    runs = {seed: _abtest(args, f"seed_{seed}", arms, seed, args.users) for seed in args.seeds}
    summary = {"blend": blend.text(), "search": trail, "seeds": args.seeds, "users": args.users,
               "days": args.days, "arms": {}}
    for name, spec in arms:
        entry = {"policy": spec}
        for metric in METRICS:
            entry[metric] = [runs[s]["arms"][name][metric] for s in args.seeds]
            if name != "full":
                # The lift of full over the arm: the arm's lift over full, read from full's side.
                lifts = [runs[s]["lift"][name][metric] for s in args.seeds]
                entry[f"{metric}_lift"] = lifts
                entry[f"{metric}_claim"] = claim(lifts, metric)
        summary["arms"][name] = entry
    gap = []
    for s in args.seeds:
        a = {k: runs[s]["arms"][k]["watch_time_per_user_day"] for k in ("full", "popular", "oracle")}
        gap.append((a["full"] - a["popular"]) / (a["oracle"] - a["popular"]))
    summary["gap_closed_by_full"] = gap
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [f"Paired A/B, {args.users} users x {args.days} day, world seeds {args.seeds}; lift = arm / full - 1, "
             "95 % paired user bootstrap interval; claim = the arm vs full by the preregistered rule",
             "", "| arm | watch s / user-day (per seed) | lift vs full | skip rate | lift vs full | "
                 "watch claim | skip claim |", "|---|---|---|---|---|---|---|"]
    for name, entry in summary["arms"].items():
        cells = [name]
        for metric in METRICS:
            fmt = "{:.1f}" if metric.startswith("watch") else "{:.3f}"
            cells.append(", ".join(fmt.format(v) for v in entry[metric]))
            lifts = entry.get(f"{metric}_lift")
            cells.append("control" if lifts is None else
                         "; ".join(f"{x['value']:+.1%} [{x['low']:+.1%}, {x['high']:+.1%}]" for x in lifts))
        cells += [entry.get("watch_time_per_user_day_claim", "–"), entry.get("skip_rate_claim", "–")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"tuned blend: {blend.text()}; search: " +
              "; ".join(f"{t['field']} -> {t['chosen']}" for t in trail),
              "share of the popular -> oracle watch-time gap closed by full: " +
              ", ".join(f"{g:.1%}" for g in gap)]
    table = "\n".join(lines)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
