"""Where a training step of the full ranking model spends its time, from TF's profiler.

    .venv/bin/python benchmarks/profile_training_step.py --examples DIR [--implementation fused|composite]
        [--steps 20] [--logdir benchmarks/out/profile]

Fits the full model on ``DIR`` (an examples folder of ``python -m beam_pipelines.build_examples``;
its history length L is the model's) for a warm-up, then traces ``--steps`` more steps with
``tf.profiler.experimental`` and reads the trace (``*.xplane.pb``, the file TensorBoard's profile
plugin shows; open ``--logdir`` in TensorBoard for the timeline). Every TF op the step ran is put
in one part of the model by its name scope and type — the attention (forward, backward), the
feedback network, the query / key / value projections, the embeddings (lookups, their gradients),
PLE and the towers, the losses and metrics, the optimizer, the input — and the table gives each
part's share of the summed op time, per step. The op times are summed over the threads that ran
them: on 2 cores they overlap, so a part's share is of the CPU work, and the wall time of a step is
printed beside it.
"""
import argparse
import collections
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tfrec_kuai  # noqa: F401
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from bench_training import _config, compiled_model
from tfrec_kuai.train import training

# (part, test) in order: the first part whose test accepts (scope parts, op type) gets the op.
ATTENTION_OPS = ("FeedbackWeightedAttention", "FeedbackWeightedAttentionGrad")
HEADS = ("ple", "shared_bottom", "skip_tower", "depth_tower", "engage_tower", "hate_tower", "cascade", "watch_head")


def _backward(parts):
    return "gradient_tape" in parts or "gradients" in parts


def _within(parts, *names):
    return any(n in parts for n in names)


PARTS = (
    ("input: waiting for the next batch", lambda p, t: t == "IteratorGetNext"),
    ("input: parsing and batching (tf.data threads)", lambda p, t: t in ("ParseExampleV2", "ParseExample")
        or _within(p, "ParseExample")),
    ("optimizer (Adam, sparse updates)", lambda p, t: t.startswith("ResourceApply") or _within(p, "Adam", "LazyAdam")),
    ("attention op, forward", lambda p, t: t == ATTENTION_OPS[0]),
    ("attention op, backward", lambda p, t: t == ATTENTION_OPS[1]),
    ("attention, composite ops (forward + backward)", lambda p, t: _within(p, "feedback_weighted_attention")),
    ("feedback network (bias and gate)", lambda p, t: _within(p, "feedback_hidden", "feedback_out")),
    ("query / key / value projections", lambda p, t: _within(p, "query", "key", "value")),
    ("embedding lookups and their gradients", lambda p, t: t in ("ResourceGather", "GatherV2", "UnsortedSegmentSum",
                                                                 "LookupTableFindV2") or _within(p, "embedding")),
    ("history encoder: slicing, masks, concat (backward)", lambda p, t: _within(p, "history") and _backward(p)),
    ("history encoder: slicing, masks, concat (forward)", lambda p, t: _within(p, "history")),
    ("PLE, towers and heads", lambda p, t: _within(p, *HEADS)),
    ("losses and metrics", lambda p, t: any(x.startswith(("task_", "auc", "loss", "compile_loss")) or "metric" in x
                                            for x in p)),
    ("other (gradient sums, candidate features)", lambda p, t: True),
)


def part_of(scope, op_type):
    parts = scope.split("/")
    for name, test in PARTS:
        if test(parts, op_type):
            return name
    return "other"


def op_times(xplane_path):
    """``{(scope, op type): summed picoseconds}`` of the TF ops on the host plane of one trace."""
    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    times = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name == "IteratorGetNextOp::DoCompute":     # the step waiting on tf.data
                    times[("IteratorGetNext", "IteratorGetNext")] += event.duration_ps
                    continue
                if ":" not in name or "::" in name:        # executor and tf.data wrappers around the ops
                    continue
                scope, op_type = name.rsplit(":", 1)
                if not op_type or not op_type[0].isupper() or " " in op_type:
                    continue
                times[(scope, op_type)] += event.duration_ps
    return times


def profile(examples_dir, implementation, steps, warmup, logdir, batch_size=None, config_path=None):
    model, config = compiled_model(examples_dir, _config(examples_dir, config_path, batch_size), implementation)
    model.fit(training.training_stream(examples_dir, config, warmup), epochs=1, steps_per_epoch=warmup, verbose=0)
    stream = training.training_stream(examples_dir, config, steps)
    tf.profiler.experimental.start(logdir)
    started = time.perf_counter()
    model.fit(stream, epochs=1, steps_per_epoch=steps, verbose=0)
    wall = time.perf_counter() - started
    tf.profiler.experimental.stop()
    newest = max(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")), key=os.path.getmtime)
    return config, op_times(newest), wall, newest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True, help="examples folder (its L is the model's history length)")
    p.add_argument("--implementation", choices=("fused", "composite"), default="fused")
    p.add_argument("--steps", type=int, default=20, help="traced steps")
    p.add_argument("--warmup", type=int, default=15, help="steps fitted before the trace starts")
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--top", type=int, default=12, help="also list the most expensive ops")
    p.add_argument("--logdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "profile"))
    args = p.parse_args(argv)
    config, times, wall, path = profile(args.examples, args.implementation, args.steps, args.warmup, args.logdir,
                                        args.batch_size, args.config)
    by_part = collections.Counter()
    for (scope, op_type), ps in times.items():
        by_part[part_of(scope, op_type)] += ps
    total = sum(by_part.values())
    print(f"\nL = {config.model.history_length}, batch {config.train.batch_size}, {args.implementation} attention, "
          f"{args.steps} traced steps: {wall / args.steps * 1e3:.0f} ms a step (wall), "
          f"{total / 1e9 / args.steps:.0f} ms of op time a step over {os.cpu_count()} CPUs; TF {tf.version.VERSION}\n")
    print("| part of the step | op time / step (ms) | share |\n|---|---|---|")
    for name, _ in PARTS:
        if by_part.get(name):
            print(f"| {name} | {by_part[name] / 1e9 / args.steps:.1f} | {by_part[name] / total:.1%} |")
    print(f"\nmost expensive ops (trace: {path}):\n")
    print("| op (scope : type) | part | ms / step |\n|---|---|---|")
    for (scope, op_type), ps in times.most_common(args.top):
        print(f"| `{scope[-70:]}:{op_type}` | {part_of(scope, op_type)} | {ps / 1e9 / args.steps:.1f} |")


if __name__ == "__main__":
    main()
