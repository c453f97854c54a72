"""How does a trained ``full`` model use its PLE experts? The question behind the tie with
``shared_bottom`` (docs/experiments.md): if every task's gate leaned on the shared experts and the
tasks' representations were alike, PLE would have collapsed into a shared bottom.

    .venv/bin/python benchmarks/ple_gate_usage.py --model_dir /work/data/exp_tie/seed_3/ranking_full \
        --examples /work/data/sim1m_examples_L200

Per extraction level and task group: the mean gate weight on the task's own experts (the rest goes
to the shared ones) and the gate's entropy as a share of its maximum (1 = uniform mixing, 0 = one
expert). Then the linear CKA (Kornblith et al., 2019) between the skip task's input to its tower and
every other task's: 1 means the same representation up to a rotation and scale (what
``shared_bottom`` gives every task by construction), 0 unrelated. Runs on the validation day (the
last training day, held out from training), like skip_gap_analysis.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np

from skip_gap_analysis import model_inputs, validation_date, validation_day_batches
from tfrec_kuai.train import training
from tfrec_kuai.models.ranking import PLE, TASK_GROUPS


def linear_cka(x, y):
    """Linear centred kernel alignment of two ``[N, D]`` representations of the same rows."""
    x, y = x - x.mean(0), y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def gate_statistics(model, inputs):
    """Per level: ``{task: (own-expert weights [B], normalised entropies [B])}`` and the task outputs."""
    levels, x = [], model.features_vector(inputs)
    for level in model.bottom.cgc:
        stats = {}
        for name, gate in zip(TASK_GROUPS, level.task_gate_weights(x)):
            gate = gate.numpy()
            entropy = -(gate * np.log(np.clip(gate, 1e-12, 1.0))).sum(1) / np.log(gate.shape[1])
            stats[name] = (gate[:, :level.num_task_experts].sum(1), entropy)
        levels.append(stats)
        x = level(x)
    return levels, [out.numpy() for out in x]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--examples", required=True)
    ap.add_argument("--rows", type=int, default=25000)
    args = ap.parse_args(argv)
    model = training.load_ranking_model(args.model_dir)
    if not isinstance(model.bottom, PLE):
        raise SystemExit(f"{args.model_dir} has no PLE experts (variant {model.model_config.variant})")
    batches = [gate_statistics(model, model_inputs(batch))
               for batch in validation_day_batches(args.examples, args.rows)]
    reps = {t: np.concatenate([outputs[j] for _, outputs in batches]) for j, t in enumerate(TASK_GROUPS)}
    print(f"{args.model_dir}: validation day {validation_date(args.examples)}, {len(reps['skip'])} rows")
    print("| level | task | weight on own experts | gate entropy / max | CKA with skip (last level) |")
    print("|---|---|---|---|---|")
    last = len(model.bottom.cgc) - 1
    for i in range(last + 1):
        for t in TASK_GROUPS:
            own, entropy = (np.concatenate([levels[i][t][k] for levels, _ in batches]) for k in (0, 1))
            cka = f"{linear_cka(reps['skip'], reps[t]):.2f}" if i == last else ""
            print(f"| {i} | {t} | {own.mean():.2f} | {entropy.mean():.2f} | {cka} |")


if __name__ == "__main__":
    main()
