"""Collects ``eval_*/metrics.json`` of benchmarks/run_experiments.sh into the Markdown variant table.

    .venv/bin/python benchmarks/experiment_table.py OUT_DIR [--engagement]

``OUT_DIR`` holds one run (``eval_ranking_<variant>/``) or several seeds (``seed_<n>/eval_...``).
With several seeds every cell is the mean ± the standard deviation over the seeds that have the
variant, and the issue's two checks (full beats every variant; share of the no_feedback → oracle
skip-AUC gap closed) are made on the means and reported for each seed too, so a win inside the
seed-to-seed spread shows as one.
"""
import glob
import json
import os
import statistics
import sys

VARIANTS = ("full", "no_history", "no_feedback", "no_context", "shared_bottom")
COLUMNS = (("auc_skip", "skip AUC"), ("gauc_skip", "skip GAUC"), ("auc_long", "long-view AUC"),
           ("xauc_watch", "watch-time XAUC"), ("mae_watch_s", "watch MAE (s)"), ("recall_at_50", "Recall@50"))
ENGAGEMENT_COLUMNS = tuple((f"auc_{o}", f"{o} AUC") for o in ("like", "follow", "comment", "forward", "hate"))
CHECKED = ("auc_skip", "xauc_watch")


def _read(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_run(run_dir):
    """({variant: metrics}, oracle metrics or None) of one seed's folder."""
    rows, oracle = {}, None
    for v in VARIANTS:
        rank = _read(os.path.join(run_dir, f"eval_ranking_{v}", "metrics.json"))
        retr = _read(os.path.join(run_dir, f"eval_retrieval_{v}", "metrics.json"))
        if rank is None and retr is None:
            continue
        merged = dict(rank or {})
        if retr:
            merged["recall_at_50"] = retr.get("recall_at_50")
        rows[v] = merged
        if rank and rank.get("oracle") and oracle is None:
            oracle = rank["oracle"]
    return rows, oracle


def seed_dirs(out_dir):
    """[(label, folder)]: the ``seed_*`` sub-folders, or the folder itself for a single run."""
    seeds = sorted(glob.glob(os.path.join(out_dir, "seed_*")), key=lambda p: int(p.rsplit("_", 1)[1]))
    return [(os.path.basename(p), p) for p in seeds] or [("run", out_dir)]


def gap_closed(full, no_feedback, oracle):
    return (full - no_feedback) / (oracle - no_feedback) if oracle != no_feedback else float("nan")


def losers(rows, key):
    """Variants at or above ``full`` on ``key``."""
    return [v for v, m in rows.items() if v != "full" and m.get(key) is not None and m[key] >= rows["full"][key]]


def _values(runs, variant, key):
    """``key`` of ``variant`` in every seed that has it."""
    return [rows[variant][key] for _, rows, _ in runs if rows.get(variant, {}).get(key) is not None]


def _fmt(values):
    if not values:
        return "—"
    mean = statistics.fmean(values)
    text = f"{mean:.4f}" if abs(mean) < 10 else f"{mean:.2f}"
    if len(values) > 1:
        sd = statistics.stdev(values)
        text += f" ± {sd:.4f}" if abs(mean) < 10 else f" ± {sd:.2f}"
    return text


def table(out_dir, columns=COLUMNS):
    """The Markdown table of ``columns`` (pairs of metrics.json key, header) and the issue's checks."""
    runs = [(label, *read_run(path)) for label, path in seed_dirs(out_dir)]
    runs = [(label, rows, oracle) for label, rows, oracle in runs if rows]
    if not runs:
        return f"no eval_* results under {out_dir}"
    oracle = next((o for _, _, o in runs if o), None)
    present = [v for v in VARIANTS if any(v in rows for _, rows, _ in runs)]
    mean = {v: {k: statistics.fmean(_values(runs, v, k)) for k, _ in columns if _values(runs, v, k)}
            for v in present}
    n = len(runs)
    lines = [f"{n} seed(s): " + ", ".join(label for label, _, _ in runs) + (" — mean ± sd" if n > 1 else ""), "",
             "| variant | " + " | ".join(c[1] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for v in present:
        cells = [_fmt(_values(runs, v, k)) for k, _ in columns]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    if oracle:
        lines.append("| oracle (simulator truth) | " + " | ".join(_fmt([oracle[k]] if oracle.get(k) is not None else []) for k, _ in columns) + " |")
    if not (oracle and "full" in mean and "no_feedback" in mean):
        return "\n".join(lines)
    lines.append("")
    closed = gap_closed(mean["full"]["auc_skip"], mean["no_feedback"]["auc_skip"], oracle["auc_skip"])
    lines.append(f"Share of the no_feedback → oracle skip-AUC gap closed by full (means): {closed:.1%}")
    for key in CHECKED:
        beaten = losers(mean, key)
        lines.append(f"full beats every variant on {key} (means): "
                     f"{'yes' if not beaten else 'no (' + ', '.join(beaten) + ')'}")
    if n > 1:
        for label, rows, _ in runs:
            if "full" not in rows or "no_feedback" not in rows:
                continue
            parts = [f"gap closed {gap_closed(rows['full']['auc_skip'], rows['no_feedback']['auc_skip'], oracle['auc_skip']):.1%}"]
            for key in CHECKED:
                beaten = losers(rows, key)
                parts.append(f"{key}: {'full best' if not beaten else 'beaten by ' + ', '.join(beaten)}")
            lines.append(f"- {label}: " + "; ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="/work/data/experiments")
    parser.add_argument("--engagement", action="store_true",
                        help="also the like / follow / comment / forward / hate AUCs")
    args = parser.parse_args()
    print(table(args.out_dir, COLUMNS + ENGAGEMENT_COLUMNS if args.engagement else COLUMNS))
