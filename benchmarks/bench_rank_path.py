"""The exported ``rank`` signature with and without the XLA-compiled path, in the same run.

Exports the benchmark's (untrained, default-size) models twice — ``--xla on`` and ``--xla off``,
both fused — then calls each ``rank`` signature in-process on the same requests (1 user x
``--candidates`` videos, repeated to batches of ``--batches`` users, as a batching server would
merge them), alternating between the two so that both see the same machine load. Prints the
median latency of each and their ratio, and the XLA-on call's 99th percentile (the floor under a
batching server's p99 at that batch size: the model's own tail on this host).

    .venv/bin/python benchmarks/bench_rank_path.py                 # builds the models if needed
    .venv/bin/python benchmarks/bench_rank_path.py --repeats 40 --batches 1,4,8,16
    .venv/bin/python benchmarks/bench_rank_path.py --baseline OLD_VERSION_DIR   # + an earlier export

``--baseline`` adds a third column: the ``rank`` signature of another export version directory
(e.g. the same models exported by an earlier commit, kept aside), timed in the same interleaved
rounds, and its ratio to this code's XLA-on export (``--baseline_of off``: to the XLA-off one).

The two exports stay under ``--work_dir`` (``export_xla_on/``, ``export_xla_off/``), so the
server benchmark can be pointed at either: ``bench_serving.py --export_base DIR --examples DIR``.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np

import bench_serving

# The models this script times: bench_serving.py's default build (its work folder is named after them).
HISTORY_LENGTH, IMPRESSIONS = 50, 30000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default=None,
                   help="bench_serving.py's work folder (models and examples are built there if missing); "
                        "default /tmp/tfrec_kuai_bench_serving_L50[_<ranking config name>]")
    p.add_argument("--ranking_config", default=None,
                   help="a ranking config file for the built model (another size), as bench_serving.py takes")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--batches", default="1,4,8,16", help="users per call")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per export and batch size")
    p.add_argument("--baseline", help="an export version directory to time alongside (same models, other code)")
    p.add_argument("--baseline_of", choices=("on", "off"), default="on",
                   help="which of this code's exports the baseline is compared with (an XLA-off baseline: off)")
    return p.parse_args(argv)


def exports(work_dir, ranking_config=None):
    """{'on': version dir, 'off': version dir}, exported from the benchmark's models if missing."""
    from tfrec_kuai.export import saved_model
    ranking_dir, retrieval_dir, examples = bench_serving.build_models(work_dir, IMPRESSIONS, HISTORY_LENGTH,
                                                                      ranking_config=ranking_config)
    out = {}
    for xla in ("on", "off"):
        base = os.path.join(work_dir, f"export_xla_{xla}")
        model_base = os.path.join(base, "kuai")
        if not (os.path.isdir(model_base) and any(v.isdigit() for v in os.listdir(model_base))):
            saved_model.export(ranking_dir, retrieval_dir, examples, base, xla=xla == "on")
        out[xla] = os.path.join(model_base, max((v for v in os.listdir(model_base) if v.isdigit()), key=int))
    return out


def main(argv=None):
    args = parse_args(argv)
    args.work_dir = args.work_dir or bench_serving.default_work_dir(HISTORY_LENGTH, args.ranking_config)
    paths = exports(args.work_dir, args.ranking_config)
    import tensorflow as tf
    from tfrec_kuai import ops
    ops.load_op_library()
    request = bench_serving.make_requests(os.path.join(args.work_dir, "examples"), args.candidates)["rank"]
    if args.baseline:
        paths["baseline"] = args.baseline
    functions = {name: tf.saved_model.load(path).signatures["rank"] for name, path in paths.items()}
    baseline_header = f" {'baseline ms':>12} {'base/' + args.baseline_of:>8}" if args.baseline else ""
    print(f"{'users':>5} {'XLA off ms':>11} {'XLA on ms':>10} {'off/on':>7} {'on p99 ms':>10}{baseline_header}")
    for users in (int(b) for b in args.batches.split(",")):
        feed = {k: tf.constant(np.concatenate([v] * users, 0)) for k, v in request.items()}
        for function in functions.values():      # compile / warm up outside the timing
            for _ in range(3):
                function(**feed)
        times = {name: [] for name in functions}
        for _ in range(args.repeats):
            for name, function in functions.items():
                start = time.perf_counter()
                {k: v.numpy() for k, v in function(**feed).items()}
                times[name].append(time.perf_counter() - start)
        median = {name: 1000 * float(np.median(t)) for name, t in times.items()}
        off, on = median["off"], median["on"]
        on_p99 = 1000 * float(np.percentile(times["on"], 99))  # the tail a batching server's latency starts from
        baseline = (f" {median['baseline']:>12.2f} {median['baseline'] / median[args.baseline_of]:>7.2f}x"
                    if args.baseline else "")
        print(f"{users:>5} {off:>11.2f} {on:>10.2f} {off / on:>6.2f}x {on_p99:>10.2f}{baseline}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
