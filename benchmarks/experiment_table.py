"""Collects ``eval_*/metrics.json`` of benchmarks/run_experiments.sh into the Markdown variant table.

    .venv/bin/python benchmarks/experiment_table.py OUT_DIR
"""
import json
import os
import sys

VARIANTS = ("full", "no_history", "no_feedback", "no_context", "shared_bottom")
COLUMNS = (("auc_skip", "skip AUC"), ("gauc_skip", "skip GAUC"), ("auc_long", "long-view AUC"),
           ("xauc_watch", "watch-time XAUC"), ("mae_watch_s", "watch MAE (s)"), ("recall_at_50", "Recall@50"))


def _read(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def table(out_dir):
    rows, oracle = [], None
    for v in VARIANTS:
        rank = _read(os.path.join(out_dir, f"eval_ranking_{v}", "metrics.json"))
        retr = _read(os.path.join(out_dir, f"eval_retrieval_{v}", "metrics.json"))
        if rank is None and retr is None:
            continue
        merged = dict(rank or {})
        if retr:
            merged["recall_at_50"] = retr.get("recall_at_50")
        rows.append((v, merged))
        if rank and rank.get("oracle") and oracle is None:
            oracle = rank["oracle"]
    fmt = lambda x: "—" if x is None else f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"  # noqa: E731
    lines = ["| variant | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for v, m in rows:
        lines.append(f"| {v} | " + " | ".join(fmt(m.get(k)) for k, _ in COLUMNS) + " |")
    if oracle:
        lines.append("| oracle (simulator truth) | " + " | ".join(fmt(oracle.get(k)) for k, _ in COLUMNS) + " |")
    by = dict(rows)
    if oracle and "full" in by and "no_feedback" in by:
        full, nf, orc = by["full"]["auc_skip"], by["no_feedback"]["auc_skip"], oracle["auc_skip"]
        closed = (full - nf) / (orc - nf) if orc != nf else float("nan")
        lines.append("")
        lines.append(f"Share of the no_feedback → oracle skip-AUC gap closed by full: {closed:.1%}")
        for key in ("auc_skip", "xauc_watch"):
            beaten = [v for v, m in rows if v != "full" and m.get(key) is not None and m[key] >= by["full"][key]]
            lines.append(f"full beats every variant on {key}: {'yes' if not beaten else 'no (' + ', '.join(beaten) + ')'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "/work/data/experiments"))
