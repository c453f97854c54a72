"""The A/B test's HTML page: ``OUTPUT/index.html`` and its PNG plots beside it (docs/design.md §10).

``metrics.json`` is what a script reads; the page is what a person reads before shipping a model:
the setup that made the numbers (world, users, days, seed, paired or hash split, each arm's
policy), every arm's metrics with its lift over the control and the lift's 95 % interval — a lift
whose interval excludes zero is marked, so a reader does not mistake noise for a win — and three
plots that show *how* an arm wins or loses, which the totals hide: watch time per user-day by
day (does the lift hold over the days?), skip rate by position in the visit (does the feed
degrade as the visit goes on?), and the visit-length distribution (the leave model at work: a
feed that makes users skip ends visits early).

The page is written from the metrics.json dict alone (nothing recomputed), with the report's
HTML helpers (``evaluate/report.py``); plots are matplotlib with the Agg backend.
"""
from __future__ import annotations

import html
import os

import numpy as np

from tfrec_kuai.evaluate.page import STYLE, format_value, img_tag, write_html
from tfrec_kuai.online.metrics import RATIOS, bucket_labels

PAGE = "index.html"
PLOTS = ("watch_by_day.png", "skip_by_position.png", "visit_lengths.png")
# Lower edges of the visit-length histogram's buckets (videos per visit); the last is open.
VISIT_LENGTH_EDGES = (1, 2, 4, 6, 11, 21, 31, 51, 101, 201)
# The table's rows: the population counts first, then every ratio metric, then the distinct counts.
ROWS = ("users", "impressions") + tuple(RATIOS) + ("distinct_videos", "distinct_authors", "failed_requests")
_PAGE_STYLE = STYLE + """
.lift { display: block; font-size: 0.85em; color: #555; }
.lift.excludes-zero { color: #000; font-weight: bold; }
table.setup td { text-align: left; }
"""


def write_page(output, out):
    """Writes ``output/index.html`` and its plots for the metrics.json dict ``out``; returns the page's path."""
    setup, arms = out["setup"], out["arms"]
    names = list(arms)
    title = f"tfrec-kuai abtest: {' vs '.join(names)}"
    figures = plot_profiles(arms, output)
    sections = [f"<h1>{html.escape(title)}</h1>",
                "<h2>Setup</h2>" + _setup_table(setup, arms),
                "<h2>Metrics</h2>" + _metrics_table(out, names),
                "<h2>Plots</h2>"
                '<p class="note">Bars and bands: 95 % user-level bootstrap intervals of each arm\'s value.</p>'
                + "".join(img_tag(path, alt) for path, alt in figures)]
    return write_html(os.path.join(output, PAGE), title, sections, style=_PAGE_STYLE)


def _setup_table(setup, arms):
    split = ("paired: every arm replays the same users with common random numbers" if setup["paired"]
             else "hash split: each user goes to one arm by a hash of its id")
    rows = [("world", f"<code>{html.escape(str(setup['world']))}</code>"), ("users", format_value(setup["users"])),
            ("days", format_value(setup["days"])), ("seed", format_value(setup["seed"])), ("split", html.escape(split)),
            ("videos per request", format_value(setup["page_size"])),
            ("bootstrap replicates", format_value(setup["bootstrap_replicates"])),
            ("lift", html.escape(setup["lift"])), ("oracle's utility", html.escape(setup["oracle_utility"])),
            ("run time", f"{setup['seconds']:.1f} s")]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    arm_rows = "".join(
        f"<tr><td>{html.escape(name)}{' (control)' if name == setup['control'] else ''}</td>"
        f"<td><code>{html.escape(str(arm['policy']))}</code></td><td>{format_value(arm['users'])}</td></tr>"
        for name, arm in arms.items())
    return (f'<table class="setup"><tbody>{table}</tbody></table>'
            "<table><thead><tr><th>arm</th><th>policy</th><th>users</th></tr></thead>"
            f"<tbody>{arm_rows}</tbody></table>")


def _metrics_table(out, names):
    control = out["setup"]["control"]
    head = "".join(f"<th>{html.escape(name)}{' (control)' if name == control else ''}</th>" for name in names)
    body = []
    for metric in ROWS:
        cells = []
        for name in names:
            value = out["arms"][name].get(metric)
            lift = out["lift"].get(name, {}).get(metric)
            cells.append(f"<td>{format_value(value)}{_lift(lift)}</td>")
        body.append(f"<tr><td>{html.escape(metric)}</td>{''.join(cells)}</tr>")
    return (f'<p class="note">Under each arm\'s value: its lift over {html.escape(control)}, '
            "relative (arm / control − 1), with its 95 % interval; <b>bold</b>: the interval excludes zero. "
            "Distinct videos and authors are counts over the arm's population, their lift has no interval.</p>"
            f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _lift(lift):
    if not lift or lift.get("value") is None:
        return ""
    text = f"{lift['value']:+.1%}"
    low, high = lift.get("low"), lift.get("high")
    if low is None or high is None:
        return f'<span class="lift">{text}</span>'
    excludes = low > 0 or high < 0
    return (f'<span class="lift{" excludes-zero" if excludes else ""}">'
            f"{text} [{low:+.1%}, {high:+.1%}]</span>")


def plot_profiles(arms, output):
    """The three PNGs of the page from the arms' ``by_day``, ``skip_rate_by_position`` and
    ``visit_lengths``; returns ``[(path, alt text)]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(arms)
    offsets = (np.arange(len(names)) - (len(names) - 1) / 2) * 0.08
    paths = [os.path.join(output, name) for name in PLOTS]

    fig, ax = plt.subplots(figsize=(9, 4))
    for offset, name in zip(offsets, names):
        days = [d for d in arms[name]["by_day"] if d["watch_time_per_user_day"] is not None]
        x = np.array([d["day"] + 1 for d in days]) + offset
        _line(ax, x, days, "watch_time_per_user_day", name)
    last_day = max([d["day"] + 1 for name in names for d in arms[name]["by_day"]] or [1])
    ax.set_xlim(0.5, last_day + 0.5)          # one day too: the arms' offsets stay small beside it
    ax.set_xticks(range(1, last_day + 1))
    ax.set_xlabel("day (1 = the first day after the world's log)")
    ax.set_ylabel("watch seconds per user-day")
    ax.set_title("watch time per user-day, by day")
    _finish(fig, ax, paths[0], integer_x=True)

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = _union_labels(arms, "skip_rate_by_position", "positions", "first")
    for offset, name in zip(offsets, names):
        rows = arms[name]["skip_rate_by_position"]
        x = np.array([labels.index(r["positions"]) for r in rows]) + offset
        _line(ax, x, rows, "skip_rate", name)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel("position of the video in the visit")
    ax.set_ylabel("skip rate")
    ax.set_title("skip rate by position in the visit")
    _finish(fig, ax, paths[1])

    fig, (hist, survival) = plt.subplots(1, 2, figsize=(11, 4))
    edges = VISIT_LENGTH_EDGES
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        lengths, counts = _visit_counts(arms[name])
        if not len(lengths):                       # an arm without users (a hash split of very few)
            continue
        total = counts.sum()
        bucket = np.searchsorted(edges, lengths, side="right") - 1
        shares = np.bincount(bucket, weights=counts, minlength=len(edges)) / total
        hist.bar(np.arange(len(edges)) + (i - (len(names) - 1) / 2) * width, shares, width, label=name)
        at_least = 1.0 - np.concatenate([[0], np.cumsum(counts)[:-1]]) / total
        mean = arms[name]["visit_lengths"]["mean"]
        survival.step(lengths, at_least, where="post",
                      label=f"{name} (mean {'—' if mean is None else f'{mean:.1f}'})")
    hist.set_xticks(range(len(edges)), bucket_labels(edges), rotation=30)
    hist.set_xlabel("videos in the visit")
    hist.set_ylabel("share of visits")
    hist.set_title("visit lengths")
    survival.set_xscale("log")
    survival.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    survival.set_xlabel("k videos")
    survival.set_ylabel("share of visits with at least k videos")
    survival.set_title("visits lasting at least k videos")
    survival.legend(fontsize=8)
    _finish(fig, hist, paths[2])
    return [(paths[0], "watch time per user-day by day, per arm"),
            (paths[1], "skip rate by position in the visit, per arm"),
            (paths[2], "visit-length distribution, per arm")]


def _line(ax, x, rows, key, label):
    y = np.array([r[key] for r in rows], np.float64)
    low = np.array([r["low"] if r["low"] is not None else r[key] for r in rows], np.float64)
    high = np.array([r["high"] if r["high"] is not None else r[key] for r in rows], np.float64)
    ax.errorbar(x, y, yerr=np.stack([y - low, high - y]) if len(y) else None, marker="o", capsize=3, label=label)


def _union_labels(arms, key, label, order):
    seen = {}
    for arm in arms.values():
        for row in arm[key]:
            seen[row[label]] = row[order]
    return sorted(seen, key=seen.get)


def _visit_counts(arm):
    counts = arm["visit_lengths"]["counts"]
    lengths = np.array(sorted(int(k) for k in counts), np.int64)
    return lengths, np.array([counts[str(k)] for k in lengths], np.float64)


def _finish(fig, ax, path, integer_x=False):
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if integer_x:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
