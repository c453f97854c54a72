"""Where is the skip-AUC gap to the oracle? Decomposes the simulator's true skip logit and asks how
much of each part a trained model's logit carries.

    .venv/bin/python benchmarks/skip_gap_analysis.py --experiments /work/data/exp3/seed_0 \
        --examples /work/data/sim1m_examples_L200 --log /work/data/sim1m full no_feedback no_context

(``--experiments``: one seed's folder of benchmarks/run_experiments.sh, holding ``ranking_<variant>/``.)

The simulator's skip logit (tfrec_kuai/sim/behaviour.py) is a sum of three known parts:
``duration`` (base + skip_duration·log(d/30 s)), ``match`` (−k(d)·match: the user's latent affinity
to the video's topics + video quality + user leniency) and ``streak`` (skip_streak · consecutive
preceding skips). Each part is computed from ``ground_truth.csv`` (its ``match`` column and the
parameters in ``params.json``, through ``behaviour.skip_logit_static``); each model's logit is regressed on the three parts. A loading of
1 means the model carries that part at full strength; the AUC of each part alone says how much it
is worth. Runs on the **last training day** (the validation day held out from training), never on
the eval day.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np

import tfrec_kuai  # noqa: F401
import tensorflow as tf

from tfrec_kuai.data import examples
from tfrec_kuai.evaluate import evaluation as E
from tfrec_kuai.train import training
from tfrec_kuai.sim import behaviour


def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def validation_date(examples_dir):
    """The last training day: held out from training (TrainConfig.validation), never the eval day."""
    return sorted(examples.load_metadata(examples_dir)["date_split"]["train_dates"])[-1]


def validation_day_batches(examples_dir, rows, batch_size=2048):
    """Batches (dicts of tensors, labels included) of the validation day's first ``rows`` rows or so."""
    val_date, n = validation_date(examples_dir), 0
    for b in examples.make_dataset(examples_dir, "train", batch_size):
        keep = b["date"].numpy() == val_date
        if not keep.any():
            continue
        yield {k: tf.boolean_mask(v, keep) for k, v in b.items()}
        n += int(keep.sum())
        if n >= rows:
            return


def model_inputs(batch):
    """The batch without its labels: what the model is called with."""
    return {k: x for k, x in batch.items() if not k.startswith("label_")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", required=True)
    ap.add_argument("--examples", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--rows", type=int, default=25000)
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args(argv)
    with open(os.path.join(args.log, "params.json")) as f:
        beh = behaviour.BehaviourParams(**json.load(f)["params"]["behaviour"])
    models = {v: training.load_ranking_model(os.path.join(args.experiments, f"ranking_{v}")) for v in args.variants}
    cols = {k: [] for k in ("user_id", "video_id", "time_ms", "duration_s", "label_skip")}
    preds = {v: [] for v in models}
    for bb in validation_day_batches(args.examples, args.rows):
        for k in cols:
            cols[k].append(bb[k].numpy())
        for v, m in models.items():
            preds[v].append(m(model_inputs(bb))["p_skip"].numpy())
    c = {k: np.concatenate(v) for k, v in cols.items()}
    P = {v: np.concatenate(x) for v, x in preds.items()}
    keys = list(zip(c["user_id"].tolist(), c["video_id"].tolist(), c["time_ms"].tolist()))
    truth = E.read_ground_truth(os.path.join(args.log, "ground_truth.csv"), set(keys))
    p_true = np.array([truth[k]["p_skip"] for k in keys])
    match = np.array([truth[k]["match"] for k in keys])
    y, d = c["label_skip"], c["duration_s"] * 1000.0
    # The simulator's own static skip logit, split: at match 0 it is the duration part.
    duration_part = behaviour.skip_logit_static(beh, np.zeros_like(match), d)
    parts = {"duration": duration_part, "match": behaviour.skip_logit_static(beh, match, d) - duration_part}
    parts["streak"] = logit(p_true) - parts["duration"] - parts["match"]
    X = np.stack([parts["duration"], parts["match"], parts["streak"], np.ones(len(y))], 1)
    print(f"validation day {validation_date(args.examples)}, {len(y)} rows")
    print("| predictor | skip AUC | loading on duration | on match | on streak | R² |\n|---|---|---|---|---|---|")
    print(f"| oracle (true p_skip) | {E.auc(y, p_true):.4f} | 1 | 1 | 1 | 1 |")
    for name, part in parts.items():
        print(f"| the {name} part alone | {E.auc(y, part):.4f} | | | | |")
    for v, p in P.items():
        t = logit(p)
        coef = np.linalg.lstsq(X, t, rcond=None)[0]
        r2 = 1 - ((t - X @ coef) ** 2).sum() / ((t - t.mean()) ** 2).sum()
        print(f"| {v} | {E.auc(y, p):.4f} | {coef[0]:.2f} | {coef[1]:.2f} | {coef[2]:.2f} | {r2:.2f} |")


if __name__ == "__main__":
    main()
