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
import numpy as np  # noqa: E402

from skip_gap_analysis import model_inputs, validation_date, validation_day_batches  # noqa: E402
from tfrec_kuai import training  # noqa: E402
from tfrec_kuai.models.ranking import PLE, TASK_GROUPS  # noqa: E402


def linear_cka(x, y):
    """Linear centred kernel alignment of two ``[N, D]`` representations of the same rows."""
    x, y = x - x.mean(0), y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def gate_statistics(model, inputs):
    """Per level: ``{task: (own-expert weights [B], normalised entropies [B])}`` and the task outputs."""
    levels, x = [], model.features_vector(inputs)
    for level in model.bottom.cgc:
        task_inputs = list(x[:-1]) if isinstance(x, list) else [x] * level.num_tasks
        stats = {}
        for t, name in enumerate(TASK_GROUPS):
            gate = level.task_gates[t](task_inputs[t]).numpy()
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
    own = [{t: [] for t in TASK_GROUPS} for _ in model.bottom.cgc]
    ent = [{t: [] for t in TASK_GROUPS} for _ in model.bottom.cgc]
    reps = {t: [] for t in TASK_GROUPS}
    for batch in validation_day_batches(args.examples, args.rows):
        levels, outputs = gate_statistics(model, model_inputs(batch))
        for i, stats in enumerate(levels):
            for t, (w, h) in stats.items():
                own[i][t].append(w)
                ent[i][t].append(h)
        for t, out in zip(TASK_GROUPS, outputs):
            reps[t].append(out)
    reps = {t: np.concatenate(v) for t, v in reps.items()}
    print(f"{args.model_dir}: validation day {validation_date(args.examples)}, {len(reps['skip'])} rows")
    print("| level | task | weight on own experts | gate entropy / max | CKA with skip (last level) |")
    print("|---|---|---|---|---|")
    last = len(own) - 1
    for i in range(len(own)):
        for t in TASK_GROUPS:
            w, h = np.concatenate(own[i][t]), np.concatenate(ent[i][t])
            cka = f"{linear_cka(reps['skip'], reps[t]):.2f}" if i == last else ""
            print(f"| {i} | {t} | {w.mean():.2f} | {h.mean():.2f} | {cka} |")


if __name__ == "__main__":
    main()
