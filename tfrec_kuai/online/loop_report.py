"""The daily loop's page: ``DIR/report/index.html`` and its PNG plots (docs/design.md §10).

Written from the loop's metrics.json dict alone after every step, so a person can watch a long
loop as it goes: is the model improving on its own data (watch time per user-day and skip rate
by day, beside the reference policies that served the same users on the same world seed), does a
day's cost grow with the days before (seconds of each step by day), and did any version swap
lose requests (the versions that answered each day's impressions, and the failed requests).
Matplotlib with the Agg backend; the HTML helpers every page shares (``evaluate/page.py``).
"""
from __future__ import annotations

import html
import os

import numpy as np

from tfrec_kuai.evaluate.page import format_value, img_tag, write_html
from tfrec_kuai.online.abtest_page import _finish

PAGE = "index.html"
PLOTS = ("watch_by_day.png", "skip_by_day.png", "step_cost.png", "versions.png", "offline_by_day.png")
COLUMNS = ("day", "model_version", "impressions", "requests", "failed_requests", "watch_time_per_user_day",
           "skip_rate", "auc_skip", "beam_s", "evaluate_s", "train_s", "export_s")


def write_report(output, out):
    """Writes ``output/index.html`` and its plots for the loop's metrics.json dict; returns the page's path."""
    os.makedirs(output, exist_ok=True)
    setup, days = out["setup"], out["days"]
    title = f"tfrec-kuai loop: {setup['variant']}, {len(days)} of {setup['days']} days"
    figures = plot_days(out, output)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(_cell(d, c)))}</td>" for c in COLUMNS) +
                   f"<td>{html.escape(_versions(d))}</td></tr>" for d in days)
    table = ("<table><tr>" + "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in COLUMNS) +
             "<th>impressions by version</th></tr>" + rows + "</table>")
    setup_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                         for k, v in setup.items())
    state = "finished" if setup["finished"] else "running (or stopped: re-run the command to resume)"
    sections = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(state)}; versions on disk: "
                f"{html.escape(', '.join(map(str, out['versions'])) or 'none')}</p>",
                "<h2>Setup</h2><table class='setup'>" + setup_rows + "</table>",
                "<h2>Days</h2>" + table, "<h2>Plots</h2>" + "".join(img_tag(p, alt) for p, alt in figures)]
    return write_html(os.path.join(output, PAGE), title, sections)


def _cell(day, column):
    return (day.get("offline") or {}).get(column) if column.startswith("auc_") else day.get(column)


def _versions(day):
    return ", ".join(f"v{v}: {n}" if int(v) >= 0 else f"unattributed: {n}" for v, n in day["versions"].items())


def plot_days(out, output):
    """The page's four PNGs; returns ``[(path, alt text)]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = out["days"]
    x = np.array([d["day"] for d in days])
    paths = [os.path.join(output, name) for name in PLOTS]
    names = sorted({name for d in days for name in d["references"]})
    for path, key, label in ((paths[0], "watch_time_per_user_day", "watch seconds per user-day"),
                             (paths[1], "skip_rate", "skip rate")):
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(x, [_num(d[key]) for d in days], marker="o", label=f"loop ({out['setup']['variant']})")
        for name in names:
            ax.plot(x, [_num(d["references"].get(name, {}).get(key)) for d in days], marker="s", linestyle="--",
                    label=f"{name} (same users, same world seed)")
        ax.set_xlabel("day (1 = the first day after the world's log)")
        ax.set_ylabel(label)
        ax.set_title(f"{label}, by day")
        _finish(fig, ax, path, integer_x=True)

    fig, ax = plt.subplots(figsize=(9, 4))
    cost_days = [0] + list(x)
    rows = [out["day0"]] + days
    bottom = np.zeros(len(rows))
    for key, label in (("beam_s", "ExampleGen (Beam)"), ("evaluate_s", "Evaluator"), ("train_s", "Trainer"),
                       ("export_s", "Pusher (export)")):
        values = np.array([_num(r.get(key), 0.0) for r in rows])
        ax.bar(cost_days, values, bottom=bottom, label=label)
        bottom += values
    ax.set_xlabel("day (0 = the logging policy's log)")
    ax.set_ylabel("seconds")
    ax.set_title("cost of each step, by day")
    _finish(fig, ax, paths[2], integer_x=True)

    fig, ax = plt.subplots(figsize=(9, 4))
    versions = sorted({int(v) for d in days for v in d["requests_by_version"]})
    if not versions:
        ax.plot([], [], label="no day served yet")
    bottom = np.zeros(len(days))
    for v in versions:
        values = np.array([d["requests_by_version"].get(str(v), 0) for d in days], np.float64)
        ax.bar(x, values, bottom=bottom, label=f"version {v}" if v >= 0 else "unattributed")
        bottom += values
    for xi, top, d in zip(x, bottom, days):
        ax.annotate(f"swap: {d.get('swap_requests', 0)} requests\n{d['failed_requests']} failed", (xi, top),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(bottom.max() if len(bottom) else 1.0, 1.0) * 1.25)
    ax.set_xlabel("day")
    ax.set_ylabel("Predict requests")
    ax.set_title("requests by the model version that answered them (request log)")
    _finish(fig, ax, paths[3], integer_x=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    keys = sorted({k for d in days for k in (d.get("offline") or {}) if k.startswith("auc_")})
    if not keys:
        ax.plot([], [], label="no day evaluated yet")
    for key in keys:
        ax.plot(x, [_num((d.get("offline") or {}).get(key)) for d in days], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("day (the model that served it, on its examples)")
    ax.set_ylabel("AUC")
    ax.set_title("offline AUC by day: yesterday's model on today's served impressions")
    _finish(fig, ax, paths[4], integer_x=True)
    return [(paths[0], "watch time per user-day by day"), (paths[1], "skip rate by day"),
            (paths[2], "seconds of each step by day"), (paths[3], "requests by model version, by day"),
            (paths[4], "offline AUC by day")]


def _num(value, default=np.nan):
    return default if value is None else float(value)
