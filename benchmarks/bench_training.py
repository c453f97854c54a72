"""Training throughput: the full ranking model with fused vs composite attention, and the input alone.

    .venv/bin/python benchmarks/bench_training.py --examples DIR [--steps 60]

``DIR`` is an examples folder of ``python -m beam_pipelines.build_examples``; ``make bench`` builds a
small one (``benchmarks/out/examples``) first.

All three measurements run in the same process on the same stream of batches:

1. the tf.data input alone (read + gunzip + shuffle + parse, then the same per-batch masking the
   training loop does) — examples/s with nothing downstream;
2. ``model.fit`` of the full ranking model with ``attention_implementation="fused"``;
3. the same with ``"composite"``.

The first ``--warmup`` steps of each fit (tracing, first-batch costs) are excluded. Results are
printed as a Markdown table and appended to ``--output`` as JSON lines (by default
``benchmarks/out/bench_training.jsonl``, which git ignores: a run's record, not a tracked file that
every run rewrites).

The fused fit always runs first in its process, and the first fit of a process is the slower one,
so the fused / composite ratio this prints is biased by the order (benchmarks/RESULTS.md,
"Training throughput"): read it as an upper bound, not as the op's gain.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tfrec_kuai  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from tfrec_kuai import ops  # noqa: E402
from tfrec_kuai.train import training  # noqa: E402
from tfrec_kuai.config import Config, load_config  # noqa: E402


class _Timer(tf.keras.callbacks.Callback):
    def __init__(self, warmup):
        super().__init__()
        self.warmup, self.seen, self.t0, self.timed = warmup, 0, None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.warmup:
            self.t0 = time.perf_counter()
        elif self.seen > self.warmup:
            self.timed += 1

    def rate(self, batch_size):
        return self.timed * batch_size / (time.perf_counter() - self.t0)


def input_rate(examples_dir, config, steps):
    ds = training.training_stream(examples_dir, config, steps + 10)
    it = iter(ds)
    for _ in range(5):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        n += int(next(it)["label_skip"].shape[0])
    return n / (time.perf_counter() - t0)


def fit_rate(examples_dir, config: Config, implementation, steps, warmup):
    config = config.override("model", attention_implementation=implementation)
    vocabularies = training.read_vocabularies(examples_dir)
    tf.keras.utils.set_random_seed(0)
    model = training.build_model(config, vocabularies)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.train.learning_rate))
    stream = training.training_stream(examples_dir, config, steps + warmup)
    timer = _Timer(warmup)
    model.fit(stream, epochs=1, steps_per_epoch=steps + warmup, callbacks=[timer], verbose=0)
    return timer.rate(config.train.batch_size)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True, help="examples folder (python -m beam_pipelines.build_examples)")
    p.add_argument("--config", default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "bench_training.jsonl"),
                   help="JSON lines file a run appends its result to (default: benchmarks/out/, not tracked)")
    args = p.parse_args(argv)
    from tfrec_kuai.data import examples
    config = load_config(args.config, "ranking").override("train", batch_size=args.batch_size)
    config = config.override("model", history_length=int(examples.load_metadata(args.examples)["history_length"]))
    bs = config.train.batch_size
    rows = [("tf.data input alone", input_rate(args.examples, config, args.steps))]
    impls = ["fused", "composite"] if ops.fused_available() else ["composite"]
    for impl in impls:
        rows.append((f"full model fit, {impl} attention", fit_rate(args.examples, config, impl, args.steps, args.warmup)))
    print(f"\nbatch size {bs}, {args.steps} timed steps, {os.cpu_count()} CPUs, TF {tf.version.VERSION}\n")
    print("| what | examples/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")
    if not ops.fused_available():
        print("\n(fused op library not available: composite only)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "batch_size": bs, "steps": args.steps,
                            "cpus": os.cpu_count(), "results": dict(rows)}) + "\n")


if __name__ == "__main__":
    main()
