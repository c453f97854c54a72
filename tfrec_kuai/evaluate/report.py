"""The report a user reads: one HTML page with PNG figures beside it.

It gathers what the other steps already wrote — the examples folder (``metadata.json`` and the
TFRecords), each model's ``history.json``, each evaluation's ``metrics.json`` and plots, and, when
asked (``benchmarks_md``), a Markdown file of benchmark tables such as ``benchmarks/RESULTS.md`` —
and adds the data statistics a recommender
engineer looks at first: skip rate and watch ratio by duration bucket, and history lengths.
Nothing is recomputed that a step already measured; every number on the page names its source.
"""
import html
import json
import os
import re
import shutil

import numpy as np

from tfrec_kuai.errors import InputError
from tfrec_kuai.evaluate.page import format_value, img_tag, write_html

DURATION_EDGES_S = (0, 7, 18, 30, 60, 120, 300, float("inf"))
VARIANT_COLUMNS = (
    ("auc_skip", "skip AUC"),
    ("gauc_skip", "skip GAUC"),
    ("auc_long", "long-view AUC"),
    ("xauc_watch", "watch-time XAUC"),
    ("mae_watch_s", "watch MAE (s)"),
)


def _bucket_labels():
    labels = []
    for lo, hi in zip(DURATION_EDGES_S[:-1], DURATION_EDGES_S[1:]):
        labels.append(f"{lo:g}–{hi:g}s" if np.isfinite(hi) else f"≥{lo:g}s")
    return labels


def data_statistics(examples_dir, split="train", max_examples=200_000):
    """Skip rate, mean watch ratio and count per duration bucket, and the history-length histogram."""
    from tfrec_kuai.data import examples

    durations, skips, ratios, hist_lens = [], [], [], []
    seen = 0
    with examples.read_errors_as_input_errors(examples_dir, split):
        for batch in examples.make_dataset(examples_dir, split, batch_size=4096):
            durations.append(batch["duration_s"].numpy())
            skips.append(batch["label_skip"].numpy())
            ratios.append(batch["label_watch_ratio"].numpy())
            hist_lens.append(batch["hist_len"].numpy())
            seen += len(durations[-1])
            if seen >= max_examples:
                break
    if not durations:
        raise InputError(f"no '{split}' examples in {examples_dir}")
    duration = np.concatenate(durations)[:max_examples]
    skip = np.concatenate(skips)[:max_examples].astype(np.float64)
    ratio = np.concatenate(ratios)[:max_examples].astype(np.float64)
    hist_len = np.concatenate(hist_lens)[:max_examples]
    bucket = np.digitize(duration, DURATION_EDGES_S[1:-1], right=False)
    rows = []
    for index, label in enumerate(_bucket_labels()):
        mask = bucket == index
        count = int(mask.sum())
        rows.append({
            "bucket": label,
            "examples": count,
            "skip_rate": float(skip[mask].mean()) if count else None,
            "mean_watch_ratio": float(ratio[mask].mean()) if count else None,
        })
    return {
        "split": split,
        "examples_read": int(len(duration)),
        "by_duration": rows,
        "hist_len": hist_len.astype(np.int64),
    }


def plot_data_statistics(stats, history_length, output_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in stats["by_duration"] if r["examples"]]
    labels = [r["bucket"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].bar(labels, [r["skip_rate"] for r in rows], color="#c0504d")
    axes[0].set_title("skip rate by video duration")
    axes[0].set_ylim(0, 1)
    axes[1].bar(labels, [r["mean_watch_ratio"] for r in rows], color="#4f81bd")
    axes[1].set_title("mean watch ratio (play / duration) by duration")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    by_duration = os.path.join(output_dir, "data_by_duration.png")
    fig.savefig(by_duration, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist(stats["hist_len"], bins=np.arange(0, history_length + 2) - 0.5, color="#9bbb59")
    ax.set_xlabel(f"events in the history window (L = {history_length})")
    ax.set_ylabel("examples")
    ax.set_title("history lengths")
    fig.tight_layout()
    hist_path = os.path.join(output_dir, "history_lengths.png")
    fig.savefig(hist_path, dpi=100)
    plt.close(fig)
    return [by_duration, hist_path]


def plot_training_curves(model_dirs, output_dir):
    """One panel per model: every per-epoch loss / metric of its ``history.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {}
    for name, model_dir in model_dirs.items():
        path = os.path.join(model_dir, "history.json")
        if os.path.exists(path):
            with open(path) as f:
                histories[name] = json.load(f)
    if not histories:
        return None
    fig, axes = plt.subplots(1, len(histories), figsize=(6 * len(histories), 3.8), squeeze=False)
    for ax, (name, history) in zip(axes[0], histories.items()):
        for key, values in sorted(history.items()):
            # regularization_loss is 0 without L2 terms and would only flatten the plot.
            if ("loss" in key and "regularization" not in key and values
                    and all(isinstance(v, (int, float)) for v in values)):
                ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
        ax.set_title(f"{name}: losses per epoch")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(output_dir, "training_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_metrics(eval_dir):
    path = os.path.join(eval_dir, "metrics.json")
    if not os.path.isfile(path):
        raise InputError(f"{eval_dir} is not an evaluation folder: no metrics.json (write one with "
                         "`tfrec-kuai evaluate`)")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as error:
        raise InputError(f"{path} is not valid JSON ({error})") from None


def side_information_rows(examples_dir, metadata, model_dirs):
    """(label, text) rows: which side tables the examples (and each model's training data) lacked."""
    from tfrec_kuai.data import examples
    from tfrec_kuai.train import training
    rows = [("side information", examples.describe_side_information(examples.side_information(examples_dir, metadata))
             .removeprefix("side information: "))]
    for name, model_dir in model_dirs.items():
        trained = training.read_examples_record(model_dir).get("side_information")
        if trained:
            rows.append((f"{name} model trained with", examples.describe_side_information(trained)
                         .removeprefix("side information: ")))
    return rows


def variant_table(ranking_evals, retrieval_metrics=None):
    """Rows of (name, {column: value}) for each ranking evaluation, then the oracle."""
    rows = []
    oracle = None
    for name, metrics in ranking_evals.items():
        rows.append((name, {key: metrics.get(key) for key, _ in VARIANT_COLUMNS}))
        oracle = oracle or metrics.get("oracle")
    if oracle:
        rows.append(("oracle (simulator truth)", {key: oracle.get(key) for key, _ in VARIANT_COLUMNS}))
    recall = (retrieval_metrics or {}).get("recall_at_50")
    return rows, recall


def markdown_to_html(text):
    """Enough Markdown for RESULTS.md: headings, pipe tables, fenced code, paragraphs, inline code."""
    out, lines, i = [], text.splitlines(), 0

    def inline(s):
        s = html.escape(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            out.append("<pre>" + html.escape("\n".join(block)) + "</pre>")
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)", line)
        if heading:
            level = min(len(heading.group(1)) + 1, 6)  # the page's own <h1> stays the only one
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip().startswith("|"):
            table = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                    table.append(cells)
                i += 1
            if table:
                head = "".join(f"<th>{inline(c)}</th>" for c in table[0])
                body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in table[1:])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            continue
        elif line.strip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].strip():
                if lines[i].strip().startswith(("- ", "* ")):
                    items.append(lines[i].strip()[2:])
                elif items:  # a wrapped continuation line of the current item
                    items[-1] += " " + lines[i].strip()
                i += 1
            out.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>")
            continue
        elif line.strip():
            paragraph = []  # consecutive text lines are one paragraph, as in Markdown
            while i < len(lines) and lines[i].strip() and not _starts_block(lines[i]):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{inline(' '.join(paragraph))}</p>")
            continue
        i += 1
    return "\n".join(out)


def _starts_block(line):
    stripped = line.strip()
    return stripped.startswith(("```", "#", "|", "- ", "* "))


def build_report(output_dir, examples_dir, ranking_dir=None, retrieval_dir=None, ranking_evals=None,
                 retrieval_eval=None, benchmarks_md=None, title="tfrec-kuai report", max_examples=200_000):
    """Writes ``index.html`` and its PNG figures into ``output_dir``; returns the page's path.

    ``ranking_evals`` maps a variant name to an evaluation folder (``metrics.json`` + plots); the
    first one is the model the page describes in detail (its calibration and watch-time plots).
    ``benchmarks_md``: a Markdown file appended as the last section (none by default: a user's
    report is about their run, not the project's benchmark machine).
    """
    from tfrec_kuai.data import examples

    if benchmarks_md and not os.path.isfile(benchmarks_md):
        raise InputError(f"--benchmarks {benchmarks_md} is not a file (give a Markdown file such as "
                         "benchmarks/RESULTS.md, or leave the flag out)")
    os.makedirs(output_dir, exist_ok=True)
    ranking_evals = dict(ranking_evals or {})
    metadata = examples.load_metadata(examples_dir)
    model_dirs = {name: d for name, d in (("ranking", ranking_dir), ("retrieval", retrieval_dir)) if d}
    for name, model_dir in model_dirs.items():
        from tfrec_kuai.train import training
        training.check_model_dir(model_dir, stage=name)
    ranking_metrics = {name: read_metrics(d) for name, d in ranking_evals.items()}
    retrieval_metrics = read_metrics(retrieval_eval) if retrieval_eval else None
    sections = [f"<h1>{html.escape(title)}</h1>",
                '<p class="note">Every figure and number below was produced by the commands of the README '
                "on the data named here; the model is this project's interpretation of Pan et al., CIKM 2023.</p>"]

    # -- data ------------------------------------------------------------------------------------
    rows = metadata.get("rows", {})
    stats = data_statistics(examples_dir, "train", max_examples)
    figures = plot_data_statistics(stats, metadata["history_length"], output_dir)
    summary = [("input rows", rows.get("input")), ("rows used", rows.get("used")),
               ("dead letters", rows.get("dead_letter")), ("train examples", rows.get("train_examples")),
               ("eval examples", rows.get("eval_examples")), ("corpus videos", rows.get("corpus_videos")),
               ("history length L", metadata.get("history_length"))]
    summary += side_information_rows(examples_dir, metadata, model_dirs)
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{format_value(v)}</td></tr>" for k, v in summary)
    by_duration = "".join(
        f"<tr><td>{r['bucket']}</td><td>{r['examples']}</td><td>{format_value(r['skip_rate'])}</td>"
        f"<td>{format_value(r['mean_watch_ratio'])}</td></tr>" for r in stats["by_duration"])
    rates = metadata.get("label_rates", {}).get("train", {})
    rate_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{format_value(v)}</td></tr>" for k, v in sorted(rates.items()))
    sections.append("<h2>Data</h2>"
                    f"<p>Examples folder <code>{html.escape(os.path.abspath(examples_dir))}</code>, made by "
                    f"<code>{html.escape(str(metadata.get('command', '')))}</code>.</p>"
                    f"<table><tbody>{table}</tbody></table>"
                    f"<h3>By video duration ({stats['examples_read']} train examples read)</h3>"
                    "<table><thead><tr><th>duration</th><th>examples</th><th>skip rate</th>"
                    f"<th>mean watch ratio</th></tr></thead><tbody>{by_duration}</tbody></table>"
                    + "".join(img_tag(p, os.path.basename(p)) for p in figures)
                    + (f"<h3>Label rates (train)</h3><table><tbody>{rate_rows}</tbody></table>" if rate_rows else ""))

    # -- training --------------------------------------------------------------------------------
    curves = plot_training_curves(model_dirs, output_dir) if model_dirs else None
    if curves:
        sections.append("<h2>Training</h2><p>Per-epoch losses from each model's <code>history.json</code> "
                        "(TensorBoard logs are in <code>&lt;model_dir&gt;/logs</code>).</p>" + img_tag(curves, "training curves"))

    # -- evaluation ------------------------------------------------------------------------------
    if ranking_metrics:
        rows_, recall = variant_table(ranking_metrics, retrieval_metrics)
        head = "".join(f"<th>{label}</th>" for _, label in VARIANT_COLUMNS)
        body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(
            f"<td>{format_value(values.get(key))}</td>" for key, _ in VARIANT_COLUMNS) + "</tr>" for name, values in rows_)
        recall_note = (f"<p>Retrieval Recall@50 on the eval split: <b>{recall:.4f}</b>"
                       f" (NDCG@50 {retrieval_metrics.get('ndcg_at_50', float('nan')):.4f}).</p>"
                       if recall is not None else "")
        sections.append("<h2>Evaluation (eval days)</h2>"
                        f"<table><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>"
                        + recall_note)
        first_name, first_dir = next(iter(ranking_evals.items()))
        plots = []
        for plot in ranking_metrics[first_name].get("plots", []):
            source = os.path.join(first_dir, os.path.basename(plot))
            if os.path.exists(source):
                target = os.path.join(output_dir, f"{first_name}_{os.path.basename(plot)}")
                shutil.copyfile(source, target)
                plots.append(img_tag(target, os.path.basename(plot)))
        if plots:
            sections.append(f"<h3>Calibration and watch time ({html.escape(first_name)})</h3>" + "".join(plots))
    if retrieval_metrics:
        for plot in retrieval_metrics.get("plots", []):
            source = os.path.join(retrieval_eval, os.path.basename(plot))
            if os.path.exists(source):
                target = os.path.join(output_dir, f"retrieval_{os.path.basename(plot)}")
                shutil.copyfile(source, target)
                sections.append("<h3>Retrieval</h3>" + img_tag(target, "recall at k"))

    # -- benchmarks ------------------------------------------------------------------------------
    if benchmarks_md:
        with open(benchmarks_md) as f:
            sections.append(markdown_to_html(f.read()))

    return write_html(os.path.join(output_dir, "index.html"), title, sections)
