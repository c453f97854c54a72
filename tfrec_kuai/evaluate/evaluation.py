"""Offline evaluation: ``metrics.json`` and plots for a ranking or retrieval model (docs/design.md §9).

Ranking, on the eval split (later days than training):

* ``auc_<obj>`` and ``gauc_<obj>`` for every binary objective — GAUC is the per-user AUC averaged
  with impression weights over users that have both classes, because a feed ranks *within* a
  user: a model can have a good global AUC by merely knowing which users skip a lot;
* ``xauc_watch`` — the share of impression pairs with different watch times that the predicted
  watch time orders correctly (ties in the prediction count one half), and ``mae_watch_s``;
* calibration per objective: mean prediction vs observed rate, and the expected calibration
  error over 10 equal-width bins (``calibration.png``).

With the simulator's per-impression truth (``--ground_truth``, keyed by ``user_id, video_id,
time_ms``) the same keys are computed for the **oracle** — the true probabilities and expected
watch time used as predictions — the upper bound any model can reach on this log.

Retrieval: ``recall_at_K`` and ``ndcg_at_K`` of the watched video (effective views of the eval
split) against the whole corpus, brute force.

All metrics are implemented here in NumPy (no scikit-learn), with ties handled exactly.
"""
import csv
import json
import os

import numpy as np

from tfrec_kuai.errors import InputError
from tfrec_kuai.schema import BINARY_LABELS, CORPUS_FEATURES
RECALL_KS = (10, 50, 100)


# ----------------------------------------------------------------------------- metrics

def _average_ranks(x):
    """1-based ranks with ties sharing their average rank."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    avg = (starts + ends + 1) / 2.0                      # mean of ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(labels, scores):
    """ROC AUC (Mann–Whitney U with average ranks for ties); NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    n_pos = labels.sum()
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels, scores, groups):
    """Impression-weighted mean of per-group AUC over groups that have both classes."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="mergesort")
    g = groups[order]
    cuts = np.flatnonzero(np.diff(g)) + 1
    total, weight = 0.0, 0
    for idx in np.split(order, cuts):
        y = labels[idx]
        if y.all() or not y.any():
            continue
        total += auc(y, scores[idx]) * len(idx)
        weight += len(idx)
    return float(total / weight) if weight else float("nan")


def xauc(truth, predictions):
    """Share of pairs with ``truth_i != truth_j`` whose predictions are in the same order.

    Exact, O(n log n): walk the pairs in increasing truth, keep a Fenwick tree of the prediction
    ranks seen so far (for strictly smaller truth), count the concordant ones; a prediction tie
    counts one half.
    """
    truth = np.asarray(truth, np.float64)
    pred_rank = np.unique(np.asarray(predictions, np.float64), return_inverse=True)[1].astype(np.int64)
    n = len(truth)
    size = int(pred_rank.max()) + 1 if n else 0
    tree = np.zeros(size + 1, np.int64)
    order = np.argsort(truth, kind="mergesort")
    t_sorted = truth[order]
    cuts = np.flatnonzero(np.diff(t_sorted)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [n]])
    concordant, pairs, seen = 0.0, 0, 0

    def prefix(i):  # number of seen predictions with rank <= i (i may be -1)
        s, i = 0, i + 1
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    for s, e in zip(starts, ends):
        group = pred_rank[order[s:e]]
        if seen:
            for r in group:
                below = prefix(r - 1)
                equal = prefix(r) - below
                concordant += below + 0.5 * equal
            pairs += seen * (e - s)
        for r in group:
            i = r + 1
            while i <= size:
                tree[i] += 1
                i += i & -i
        seen += e - s
    return float(concordant / pairs) if pairs else float("nan")


def calibration(labels, predictions, bins=10):
    """Mean prediction, observed rate, expected calibration error and the reliability curve."""
    labels = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(predictions, np.float64), 0.0, 1.0)
    which = np.minimum((p * bins).astype(int), bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            curve.append({"bin": b, "count": int(m.sum()), "mean_prediction": float(p[m].mean()),
                          "observed_rate": float(labels[m].mean())})
            ece += m.mean() * abs(p[m].mean() - labels[m].mean())
    return {"mean_prediction": float(p.mean()), "observed_rate": float(labels.mean()), "ece": float(ece),
            "curve": curve}


def ranking_metrics(labels, predictions, user_ids, calibrate=True):
    """The ranking keys of docs/design.md §9 from arrays: ``labels[obj]`` 0/1, ``predictions['p_<obj>']``,
    ``labels['watch_s']`` and ``predictions['watch_s']``."""
    out = {}
    for obj in BINARY_LABELS:
        key = f"p_{obj}"
        if obj not in labels or key not in predictions:
            continue
        out[f"auc_{obj}"] = auc(labels[obj], predictions[key])
        out[f"gauc_{obj}"] = gauc(labels[obj], predictions[key], user_ids)
        if calibrate:
            out.setdefault("calibration", {})[obj] = calibration(labels[obj], predictions[key])
    if "watch_s" in labels and "watch_s" in predictions:
        out["xauc_watch"] = xauc(labels["watch_s"], predictions["watch_s"])
        out["mae_watch_s"] = float(np.mean(np.abs(np.asarray(labels["watch_s"]) - np.asarray(predictions["watch_s"]))))
    return out


def recall_ndcg_at_k(ranks, ks=RECALL_KS):
    """From the 0-based rank of the relevant item per query: recall@K and NDCG@K (one relevant)."""
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"recall_at_{k}"] = float(hit.mean()) if len(ranks) else float("nan")
        out[f"ndcg_at_{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else float("nan")
    return out


# ----------------------------------------------------------------------------- ground truth

def read_ground_truth(path, keys=None):
    """The simulator's ``ground_truth.csv`` as ``{(user_id, video_id, time_ms): row dict}``.

    With ``keys`` (a set of key tuples) only those rows are kept, so a 10 M-row truth file does
    not have to fit in memory as dicts.
    """
    out = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        first = next(reader)
        try:
            float(first[0])
            from tfrec_kuai.sim.simulator import TRUTH_COLUMNS
            header = list(TRUTH_COLUMNS)
            rows = [first]
        except ValueError:
            header, rows = first, []
        idx = {name: i for i, name in enumerate(header)}

        def handle(row):
            key = (int(row[idx["user_id"]]), int(row[idx["video_id"]]), int(row[idx["time_ms"]]))
            if keys is None or key in keys:
                out[key] = {name: float(row[i]) for name, i in idx.items() if name not in ("user_id", "video_id", "time_ms")}
        for row in rows:
            handle(row)
        for row in reader:
            if row:
                handle(row)
    return out


def oracle_predictions(truth, keys):
    """Arrays of the true probabilities / expected watch time in the order of ``keys``; rows
    without truth are reported through the returned mask."""
    found = np.array([k in truth for k in keys])
    names = ["p_" + o for o in BINARY_LABELS]
    preds = {n: np.array([truth[k].get(n, np.nan) if f else np.nan for k, f in zip(keys, found)]) for n in names}
    preds["watch_s"] = np.array([truth[k].get("expected_watch_s", np.nan) if f else np.nan
                                 for k, f in zip(keys, found)])
    return preds, found


# ----------------------------------------------------------------------------- model inference

def predict_ranking(model, dataset, max_batches=None):
    """Runs the ranking model over a dataset; returns (predictions, labels, key arrays)."""
    import tensorflow as tf
    fn = tf.function(lambda f: model(f), reduce_retracing=True, autograph=False)
    preds, labels, keys = {}, {}, {"user_id": [], "video_id": [], "time_ms": []}
    for i, batch in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        out = fn({k: v for k, v in batch.items() if not k.startswith("label_")})
        for k, v in out.items():
            preds.setdefault(k, []).append(v.numpy())
        for obj in BINARY_LABELS:
            labels.setdefault(obj, []).append(batch[f"label_{obj}"].numpy())
        labels.setdefault("watch_s", []).append(batch["label_watch_s"].numpy())
        for k in keys:
            keys[k].append(batch[k].numpy())
    if not keys["user_id"]:
        raise InputError("no eval example could be read (empty eval files?)")
    cat = lambda d: {k: np.concatenate(v) for k, v in d.items()}  # noqa: E731
    return cat(preds), cat(labels), cat(keys)


def corpus_embeddings(model, corpus_dataset):
    """(raw video ids [N], candidate embeddings [N, d]) for the whole corpus."""
    ids, embs = [], []
    for batch in corpus_dataset:
        embs.append(model.candidate_tower({k: batch[k] for k in CORPUS_FEATURES}).numpy())
        ids.append(batch["video_id"].numpy())
    return np.concatenate(ids), np.concatenate(embs)


def retrieval_ranks(model, dataset, corpus_ids, corpus_emb, max_batches=None):
    """0-based rank of the effectively-viewed video among the corpus, per eval effective view.

    A query whose video is not in the corpus gets rank = corpus size (a miss). Ties count against
    the model (rank = number of corpus items scoring >= the true one, minus itself).
    """
    import tensorflow as tf
    position = {int(v): i for i, v in enumerate(corpus_ids)}
    corpus = tf.constant(corpus_emb)
    fn = tf.function(lambda f: tf.matmul(model.query_tower(f), corpus, transpose_b=True), reduce_retracing=True,
                     autograph=False)
    ranks = []
    for i, batch in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        keep = batch["label_valid"].numpy().astype(bool)
        if not keep.any():
            continue
        feats = {k: tf.boolean_mask(v, keep) for k, v in batch.items() if not k.startswith("label_")}
        scores = fn(feats).numpy()
        for row, vid in zip(scores, batch["video_id"].numpy()[keep]):
            j = position.get(int(vid))
            ranks.append(len(corpus_ids) if j is None else int((row >= row[j]).sum() - 1))
    return np.asarray(ranks, np.int64)


# ----------------------------------------------------------------------------- plots

def plot_ranking(metrics, predictions, labels, output_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    fig, ax = plt.subplots(figsize=(6, 6))
    for obj, cal in metrics.get("calibration", {}).items():
        xs = [c["mean_prediction"] for c in cal["curve"]]
        ys = [c["observed_rate"] for c in cal["curve"]]
        ax.plot(xs, ys, marker="o", label=f"{obj} (ECE {cal['ece']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_title("calibration on the eval days")
    ax.legend(fontsize=7)
    paths.append(os.path.join(output_dir, "calibration.png"))
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    pred, true = predictions["watch_s"], labels["watch_s"]
    edges = np.unique(np.quantile(pred, np.linspace(0, 1, 21)))
    which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, len(edges) - 2)
    xs = [pred[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
    ys = [true[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
    ax.plot(xs, ys, marker="o", label=f"model (XAUC {metrics['xauc_watch']:.3f})")
    lim = max(max(xs), max(ys))
    ax.plot([0, lim], [0, lim], "k--", lw=1)
    ax.set_xlabel("predicted watch time (s), 20 quantile bins")
    ax.set_ylabel("mean observed watch time (s)")
    ax.legend()
    paths.append(os.path.join(output_dir, "watch_time.png"))
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_retrieval(ranks, output_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = np.arange(1, 201)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [(ranks < k).mean() for k in ks])
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_title("retrieval: recall of the effectively-viewed video")
    path = os.path.join(output_dir, "recall_at_k.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------- entry point

def _json_safe(x):
    """NaN (an AUC without both classes) → null, NumPy scalars → Python: strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate(examples_dir, model_dir, output_dir, ground_truth=None, batch_size=2048, max_batches=None,
             attention_implementation="auto", log=print, stage=None, variant=None, split="eval"):
    """Evaluates the model in ``model_dir`` on the eval split; writes ``metrics.json`` + plots.

    ``split="train"`` evaluates on the train split instead: the daily loop's next-day check, whose
    day of examples is all train (the model being judged never saw it).

    ``stage`` / ``variant``, when given, are what the caller expects the folder to hold; the
    examples must have the model's history length. A mismatch is an ``InputError`` before any
    work (and before ``output_dir`` is made).
    """
    from tfrec_kuai.data import examples
    from tfrec_kuai.train import training
    metadata = examples.require_examples(examples_dir, split)
    config = training.check_model_dir(model_dir, stage=stage, variant=variant,
                                      history_length=metadata["history_length"])
    stage = config.model.stage
    side = examples.side_information(examples_dir, metadata)
    log(examples.describe_side_information(side))
    os.makedirs(output_dir, exist_ok=True)
    dataset = examples.make_dataset(examples_dir, split, batch_size)
    metrics = {"stage": stage, "variant": config.model.variant, "model_dir": os.path.abspath(model_dir),
               "examples": os.path.abspath(examples_dir), "side_information": side,
               "trained_on": training.read_examples_record(model_dir), "split": split}
    with examples.read_errors_as_input_errors(examples_dir, split):
        _evaluate_stage(metrics, model_dir, examples_dir, dataset, output_dir, ground_truth, max_batches,
                        attention_implementation)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(_json_safe(metrics), f, indent=2)
    log(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=1))
    return metrics


def _evaluate_stage(metrics, model_dir, examples_dir, dataset, output_dir, ground_truth, max_batches,
                    attention_implementation):
    """Fills ``metrics`` with the stage's keys and plots."""
    from tfrec_kuai.data import examples
    from tfrec_kuai.train import training
    if metrics["stage"] == "ranking":
        model = training.load_ranking_model(model_dir, attention_implementation)
        preds, labels, keys = predict_ranking(model, dataset, max_batches)
        metrics["eval_examples"] = int(len(keys["user_id"]))
        metrics.update(ranking_metrics(labels, preds, keys["user_id"]))
        metrics["plots"] = plot_ranking(metrics, preds, labels, output_dir)
        if ground_truth:
            key_list = list(zip(keys["user_id"].tolist(), keys["video_id"].tolist(), keys["time_ms"].tolist()))
            truth = read_ground_truth(ground_truth, set(key_list))
            oracle, found = oracle_predictions(truth, key_list)
            oracle_metrics = ranking_metrics({k: v[found] for k, v in labels.items()},
                                             {k: v[found] for k, v in oracle.items()}, keys["user_id"][found],
                                             calibrate=False)
            model_same_rows = ranking_metrics({k: v[found] for k, v in labels.items()},
                                              {k: v[found] for k, v in preds.items()}, keys["user_id"][found],
                                              calibrate=False)
            metrics["oracle"] = {"matched_examples": int(found.sum()), **oracle_metrics}
            if not found.all():
                metrics["model_on_matched_rows"] = model_same_rows
    else:
        model = training.load_retrieval_model(model_dir, attention_implementation)
        corpus_ids, corpus_emb = corpus_embeddings(model, examples.make_corpus_dataset(examples_dir, 4096))
        ranks = retrieval_ranks(model, dataset, corpus_ids, corpus_emb, max_batches)
        metrics["eval_queries"] = int(len(ranks))
        metrics["corpus_size"] = int(len(corpus_ids))
        metrics.update(recall_ndcg_at_k(ranks))
        metrics["plots"] = plot_retrieval(ranks, output_dir)
