"""Collects ``eval_*/metrics.json`` of benchmarks/run_experiments.sh into the Markdown variant table.

    .venv/bin/python benchmarks/experiment_table.py OUT_DIR [--engagement]

``OUT_DIR`` holds one run (``eval_ranking_<variant>/``) or several seeds (``seed_<n>/eval_...``).
With several seeds every cell is the mean ± the standard deviation over the seeds that have the
variant, and the project's two quality checks (full beats every variant; share of the
no_feedback → oracle skip-AUC gap closed) are made on the means and reported for each seed too,
so a win inside the seed-to-seed spread shows as one. With two or more seeds it also prints, for
each variant, the paired differences ``full − variant`` (same seed, same data) with a 90 %
Student-t interval: the test that says whether a difference of means is larger than the seed
noise.
"""
import glob
import json
import math
import os
import statistics

VARIANTS = ("full", "no_history", "no_feedback", "no_context", "shared_bottom")
COLUMNS = (("auc_skip", "skip AUC"), ("gauc_skip", "skip GAUC"), ("auc_long", "long-view AUC"),
           ("xauc_watch", "watch-time XAUC"), ("mae_watch_s", "watch MAE (s)"), ("recall_at_50", "Recall@50"))
ENGAGEMENT_COLUMNS = tuple((f"auc_{o}", f"{o} AUC") for o in ("like", "follow", "comment", "forward", "hate"))
CHECKED = ("auc_skip", "xauc_watch")
CONFIDENCE = 0.90


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


def t_within(t, df):
    """P(|T| ≤ t) for Student's t with ``df`` (a positive integer) degrees of freedom.

    The closed forms of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df): exact, and no
    SciPy, which the project does not otherwise need.
    """
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:
        term, total = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):   # cosθ, (2/3)cos³θ, (2·4)/(3·5)cos⁵θ, …
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return 2.0 / math.pi * (theta + math.sin(theta) * total)
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):              # 1, (1/2)cos²θ, (1·3)/(2·4)cos⁴θ, …
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * total


def t_quantile(confidence, df):
    """The ``t`` with P(|T| ≤ t) = ``confidence``: the half-width factor of a two-sided interval."""
    lo, hi = 0.0, 1.0
    while t_within(hi, df) < confidence:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_within(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2.0


def paired_difference(runs, variant, key, confidence=CONFIDENCE):
    """``full − variant`` on ``key`` over the seeds that have both: (n, mean, sd, low, high).

    Pairing by seed removes what the two runs of a seed share (the same shuffled data order), so
    the interval is the honest one for "is full better than variant".
    None with fewer than two pairs.
    """
    diffs = [rows["full"][key] - rows[variant][key] for _, rows, _ in runs
             if rows.get("full", {}).get(key) is not None and rows.get(variant, {}).get(key) is not None]
    if len(diffs) < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile(confidence, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return len(diffs), mean, sd, mean - half, mean + half


def paired_lines(runs, variants):
    """The paired-difference lines of the table, one per variant and checked metric."""
    lines = []
    for v in variants:
        for key in CHECKED:
            result = paired_difference(runs, v, key)
            if result is None:
                continue
            n, mean, sd, low, high = result
            verdict = "full better" if low > 0 else "full worse" if high < 0 else "not separated"
            lines.append(f"- full − {v}, {key}: {mean:+.4f} (sd {sd:.4f}, n = {n}; "
                         f"{CONFIDENCE:.0%} interval {low:+.4f} … {high:+.4f}): {verdict}")
    return lines


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
    """The Markdown table of ``columns`` (pairs of metrics.json key, header) and the quality checks."""
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
    paired = paired_lines(runs, [v for v in present if v != "full"])
    if paired:
        lines += ["", f"Paired differences (same seed), mean, sd and {CONFIDENCE:.0%} Student-t interval:"] + paired
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
