"""`retrieve` and `recommend` latency as the corpus grows: 7.5 k, 100 k and 1 M videos, brute force.

    .venv/bin/python benchmarks/bench_retrieve_corpus.py [--sizes 7583,100000,1000000] [--repeats 200]

Takes bench_serving.py's models and examples (built there if missing: untrained, default size —
the cost of a request does not depend on the weights) and exports them once per corpus size, the
benchmark's corpus grown the way ``tfrec-kuai simulate --videos N`` grows a catalogue: each added
video copies the content features (author, tag, duration) of a real corpus row under a new id,
which the models meet as an out-of-vocabulary id, as most ids of a KuaiRand-1K-sized catalogue
would be. Each export is loaded back (``tf.saved_model.load``: the artifact TF Serving loads) and
its ``retrieve`` and ``recommend`` signatures are called with one-user requests, the sizes taking
turns call by call so that all see the same machine load. The table gives p50 / p99 per request,
and the export size and time (the corpus embeddings are computed at export). The top-k is exact:
``tf.matmul`` over every corpus row, then ``tf.math.top_k``.
"""
import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np

import bench_serving
from bench_rank_path import HISTORY_LENGTH, IMPRESSIONS   # bench_serving.py's default build


def grown_corpus(corpus, size, seed=0):
    """``corpus`` with rows added up to ``size``: copies of random rows under new ids."""
    n = len(corpus["video_id"])
    if size <= n:
        return {k: v[:size] for k, v in corpus.items()}
    pick = np.random.default_rng(seed).integers(0, n, size - n)
    grown = {k: np.concatenate([v, v[pick]]) for k, v in corpus.items()}
    grown["video_id"][n:] = corpus["video_id"].max() + 1 + np.arange(size - n)
    return grown


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="7583,100000,1000000", help="corpus videos, comma-separated")
    p.add_argument("--repeats", type=int, default=200, help="timed calls per size and signature")
    p.add_argument("--work_dir", default=None, help="bench_serving.py's work folder (default: its own)")
    p.add_argument("--keep", action="store_true", help="keep the exports (under WORK_DIR/corpus_exports)")
    args = p.parse_args(argv)
    work_dir = args.work_dir or bench_serving.default_work_dir(HISTORY_LENGTH)
    ranking_dir, retrieval_dir, examples_dir = bench_serving.build_models(work_dir, IMPRESSIONS, HISTORY_LENGTH)

    import tensorflow as tf
    from tfrec_kuai import ops
    from tfrec_kuai.data import examples
    from tfrec_kuai.export import saved_model
    from tfrec_kuai.train import training

    ops.load_op_library()
    ranking = training.load_ranking_model(ranking_dir, attention_implementation="fused")
    retrieval = training.load_retrieval_model(retrieval_dir, attention_implementation="fused")
    corpus = examples.read_corpus(examples_dir)
    requests = bench_serving.make_requests(examples_dir, 1)
    base = os.path.join(work_dir, "corpus_exports")
    shutil.rmtree(base, ignore_errors=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    functions, built = {}, {}
    for size in sizes:
        started = time.perf_counter()
        path = saved_model.export_models(ranking, retrieval, grown_corpus(corpus, size), HISTORY_LENGTH, base,
                                         version=size, xla=False)
        seconds = time.perf_counter() - started
        loaded = tf.saved_model.load(path)
        functions[size] = {name: loaded.signatures[name] for name in ("retrieve", "recommend")}
        built[size] = (seconds, folder_bytes(path))
        print(f"exported a {size:,}-video corpus in {seconds:.0f} s ({built[size][1] / 2**20:.0f} MiB)",
              file=sys.stderr, flush=True)
    user = {k: tf.constant(v) for k, v in requests["recommend"].items()}      # retrieve takes the same inputs
    feeds = {"retrieve": user, "recommend": user}
    times = {(size, name): [] for size in sizes for name in feeds}
    for size in sizes:                                    # first calls (graph warm-up) outside the timing
        for name, feed in feeds.items():
            for _ in range(5):
                functions[size][name](**feed)
    for _ in range(args.repeats):
        for size in sizes:
            for name, feed in feeds.items():
                start = time.perf_counter()
                {k: v.numpy() for k, v in functions[size][name](**feed).items()}
                times[(size, name)].append(time.perf_counter() - start)
    print(f"\none-user requests, {args.repeats} calls per cell, sizes interleaved; {os.cpu_count()} CPUs, "
          f"TF {tf.version.VERSION}; brute-force top-k\n")
    smallest = sizes[0]
    print("| corpus videos | export (s) | export size (MiB) | retrieve p50 (ms) | retrieve p99 (ms) | "
          f"recommend p50 (ms) | recommend p99 (ms) | recommend p50 / {smallest:,} |\n|---|---|---|---|---|---|---|---|")
    p50_small = np.median(times[(smallest, "recommend")])
    for size in sizes:
        cells = []
        for name in feeds:
            t = np.asarray(times[(size, name)]) * 1000
            cells += [f"{np.median(t):.2f}", f"{np.percentile(t, 99):.2f}"]
        ratio = np.median(times[(size, "recommend")]) / p50_small
        print(f"| {size:,} | {built[size][0]:.0f} | {built[size][1] / 2**20:.0f} | {' | '.join(cells)} | {ratio:.1f}× |")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
