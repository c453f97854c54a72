"""Training throughput: the full ranking model with fused vs composite attention, and the input alone.

    .venv/bin/python benchmarks/bench_training.py --examples DIR [--examples DIR2 ...] [--rounds 3] \
        [--optimizer adam --optimizer lazy_adam]

Each ``DIR`` is an examples folder of ``python -m beam_pipelines.build_examples`` (one per history
length L to measure; ``make bench`` builds a small L = 50 one in benchmarks/out/examples first).

Measured without order bias. The first fit of a process is the slow one (tracing, thread pools,
allocator growth), so a ratio of two fits in one process says as much about their order as about
the op. Here every fit runs in a process of its own (``--worker``), which first runs a discarded
warm-up fit of the same implementation and then the timed one; the rounds alternate the order
(fused then composite, composite then fused, ...). For each L the table has the median
examples/s of each implementation over ``--rounds``, the median of the per-round ratios
fused / composite with their range, and the tf.data input alone (read + gunzip + shuffle + parse
and the per-batch masking the training loop does) on the same stream. Each ``--optimizer``
(``train.optimizer``: ``adam``, ``lazy_adam``; default the config's) is a row of its own for every
folder, so the two optimizers are compared in the same run.

The first ``--warmup`` steps of each fit are not timed. Results are printed as a Markdown table
and appended to ``--output`` as JSON lines (by default ``benchmarks/out/bench_training.jsonl``,
which git ignores: a run's record, not a tracked file that every run rewrites).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tfrec_kuai  # noqa: F401
import tensorflow as tf

from tfrec_kuai import ops
from tfrec_kuai.train import training
from tfrec_kuai.config import OPTIMIZERS, Config, load_config
from tfrec_kuai.train.optimizers import make_optimizer


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


def compiled_model(examples_dir, config: Config, implementation):
    """(the full ranking model built and compiled as training does, seeded; its config) with ``implementation``."""
    config = config.override("model", attention_implementation=implementation)
    tf.keras.utils.set_random_seed(0)
    model = training.build_model(config, training.read_vocabularies(examples_dir))
    model.compile(optimizer=make_optimizer(config.train.optimizer, config.train.learning_rate))
    return model, config


def fit_rate(examples_dir, config: Config, implementation, steps, warmup):
    model, config = compiled_model(examples_dir, config, implementation)
    stream = training.training_stream(examples_dir, config, steps + warmup)
    timer = _Timer(warmup)
    model.fit(stream, epochs=1, steps_per_epoch=steps + warmup, callbacks=[timer], verbose=0)
    return timer.rate(config.train.batch_size)


def _config(examples_dir, config_path, batch_size, optimizer=None):
    from tfrec_kuai.data import examples

    config = load_config(config_path, "ranking").override("train", batch_size=batch_size, optimizer=optimizer)
    return config.override("model", history_length=int(examples.load_metadata(examples_dir)["history_length"]))


def worker(args):
    """One implementation (or the input alone) in this process: a discarded warm-up, then the timed run."""
    config = _config(args.examples[0], args.config, args.batch_size, (args.optimizer or [None])[0])
    if args.worker == "input":
        input_rate(args.examples[0], config, args.steps)
        rate = input_rate(args.examples[0], config, args.steps)
    else:
        fit_rate(args.examples[0], config, args.worker, max(args.steps // 3, 5), args.warmup)
        rate = fit_rate(args.examples[0], config, args.worker, args.steps, args.warmup)
    print(json.dumps({"rate": rate, "batch_size": config.train.batch_size, "optimizer": config.train.optimizer,
                      "history_length": config.model.history_length,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))


def _run_worker(args, examples_dir, optimizer, what):
    command = [sys.executable, os.path.abspath(__file__), "--worker", what, "--examples", examples_dir,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--optimizer", optimizer] if optimizer else []
    command += ["--config", args.config] if args.config else []
    command += ["--batch_size", str(args.batch_size)] if args.batch_size else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_training: the {what} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True, action="append",
                   help="examples folder (python -m beam_pipelines.build_examples); repeat for several L")
    p.add_argument("--config", default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--optimizer", action="append", choices=OPTIMIZERS, default=None,
                   help="train.optimizer; repeat to compare (default: the config's)")
    p.add_argument("--rounds", type=int, default=3, help="processes per implementation and L, order alternating")
    p.add_argument("--worker", choices=("fused", "composite", "input"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "bench_training.jsonl"),
                   help="JSON lines file a run appends its result to (default: benchmarks/out/, not tracked)")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    impls = ["fused", "composite"] if ops.fused_available() else ["composite"]
    results = []
    rows = [(examples_dir, optimizer) for examples_dir in args.examples for optimizer in args.optimizer or [None]]
    for examples_dir, optimizer in rows:
        rates = {impl: [] for impl in impls}
        ratios, peak = [], 0.0
        for r in range(args.rounds):
            order = impls if r % 2 == 0 else impls[::-1]
            this = {}
            for impl in order:
                measured = _run_worker(args, examples_dir, optimizer, impl)
                this[impl] = measured["rate"]
                rates[impl].append(measured["rate"])
                peak = max(peak, measured["peak_rss_gb"])
                print(f"  L={measured['history_length']} {measured['optimizer']} round {r + 1} {impl}: {measured['rate']:,.0f} examples/s",
                      file=sys.stderr)
            if len(impls) == 2:
                ratios.append(this["fused"] / this["composite"])
        input_alone = _run_worker(args, examples_dir, optimizer, "input")
        results.append({"examples": examples_dir, "optimizer": measured["optimizer"],
                        "history_length": measured["history_length"],
                        "batch_size": measured["batch_size"], "input_alone": input_alone["rate"],
                        "rates": rates, "ratios": ratios, "peak_rss_gb": peak})
    print(f"\nbatch size {results[0]['batch_size']}, {args.steps} timed steps, {args.rounds} rounds "
          f"(each fit in its own process after a warm-up fit, order alternating), {os.cpu_count()} CPUs, "
          f"TF {tf.version.VERSION}\n")
    print("| examples | L | optimizer | input alone | composite | fused | fused / composite (median, range) "
          "| peak RSS of a fit (GB) |\n|---|---|---|---|---|---|---|---|")
    for res in results:
        med = {impl: statistics.median(v) for impl, v in res["rates"].items()}
        ratio = (f"{statistics.median(res['ratios']):.2f} ({min(res['ratios']):.2f}–{max(res['ratios']):.2f})"
                 if res["ratios"] else "–")
        print(f"| {os.path.basename(os.path.normpath(res['examples']))} | {res['history_length']} | {res['optimizer']} | "
              f"{res['input_alone']:,.0f} | {med['composite']:,.0f} | {med.get('fused', float('nan')):,.0f} | {ratio} | "
              f"{res['peak_rss_gb']:.2f} |")
    if not ops.fused_available():
        print("\n(fused op library not available: composite only)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": args.steps, "rounds": args.rounds,
                            "cpus": os.cpu_count(), "results": results}) + "\n")


if __name__ == "__main__":
    main()
