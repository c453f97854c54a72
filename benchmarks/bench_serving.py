"""Closed-loop load on the exported recommender: the server vs calling the same model in-process.

For ``recommend`` (one user) and ``rank`` (one user x 200 candidates), at 1, 8 and 32 concurrent
clients, each client sending its next request as soon as the previous answer arrives:
p50 / p99 latency and QPS over gRPC (official stubs) and REST, with dynamic batching on and off,
and the same SavedModel called in-process from the same number of threads in the same run (each
call making its input tensors from NumPy, as the server must; a second in-process baseline reuses
pre-built tensors, a best case). The server runs as its own process
(``python -m serving.server``) so that clients and server do not share one interpreter lock; the
server-to-in-process p50 ratio is the server's overhead.

The host is shared and noisy, so every cell is measured ``--rounds`` times, the cells of a round
one after another (in-process, then each server; both servers stay up), and the table gives the
median over rounds of each number, and of each round's server ÷ in-process ratio. CPU per request
is measured too: the server process's (from /proc) and this process's (the in-process model, or
the load generator in server cells), because on 2 cores the load generator competes with the
server. TensorFlow's thread pools get the same sizes in-process and in the server.

    .venv/bin/python benchmarks/bench_serving.py                      # builds a model if needed
    .venv/bin/python benchmarks/bench_serving.py --export_base DIR    # an existing export (model kuai)

Without ``--export_base`` it simulates a log, runs the Beam job, builds both models with the
default configuration (untrained: the cost of a request does not depend on the weights) and
exports them, under ``--work_dir``.
"""
import argparse
import http.client
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tfrec_kuai  # noqa: F401
import numpy as np

from serving.admission import DEFAULT_SLOTS, FairGate
from serving.batching import BatchingOptions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export_base", default=None, help="folder with <model_name>/<version>/ (default: build one)")
    p.add_argument("--examples", default=None, help="examples folder for requests (default: the built one)")
    p.add_argument("--work_dir", default=None,
                   help="default /tmp/tfrec_kuai_bench_serving_L<history_length>[_<ranking config name>]")
    p.add_argument("--ranking_config", default=None,
                   help="a ranking config file (as `tfrec-kuai train --config` takes) for the built ranking "
                        "model, to time another size (e.g. benchmarks/configs/ranking_experts32.json); default: "
                        "the packaged default")
    p.add_argument("--history_length", type=int, default=50,
                   help="history events per request of the built model (the cost of a request grows with it)")
    p.add_argument("--model_name", default="kuai")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    p.add_argument("--warmup_seconds", type=float, default=4.0,
                   help="unmeasured load on each cell before the rounds (0.5 s before each measurement after); "
                        "long enough for XLA to compile the shapes the cell's batches bring (≈ 1.5 s per new "
                        "shape with the default model)")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--signatures", default="recommend,rank")
    p.add_argument("--transports", default="grpc,rest",
                   help="grpc: the server's default gRPC transport (C++ where built); grpc-py: the same server "
                        "on gRPC Python (--grpc_transport=python), to compare the two; rest. Their clients are "
                        "threads of this process on gRPC Python's stubs or http.client. grpc-cc-load: the "
                        "default transport again, loaded by the C++ load generator (serving._grpc_load) instead, "
                        "so that less of the shared cores goes to the clients")
    p.add_argument("--batching", default="off,on")
    p.add_argument("--rounds", type=int, default=3, help="times each cell is measured (medians are reported)")
    p.add_argument("--inprocess_inputs", default="numpy,flat,tensors",
                   help="in-process baselines, comma-separated; the first is the one ratios use. numpy: each "
                        "call makes its input tensors from NumPy (as the server does) and calls the signature "
                        "as users do; flat: the same, run as the server runs it (no Python argument binding); "
                        "tensors: the same pre-built tensors every call (a best case); numpy-fair: numpy, at "
                        "most --inprocess_max_concurrent_runs calls at once, first come first served (the "
                        "server's unbatched runs are bounded so by --max_concurrent_model_runs)")
    p.add_argument("--inprocess_max_concurrent_runs", type=int, default=DEFAULT_SLOTS,
                   help="the numpy-fair baseline's bound (default: the server's default)")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                   help="TensorFlow's intra-op pool, in-process and in the server (0: TensorFlow's default)")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0, help="likewise, the inter-op pool")
    p.add_argument("--grpc_max_threads", type=int, default=128,
                   help="the server's --grpc_max_threads (at least the clients, so none waits for a thread)")
    p.add_argument("--server_args", default="",
                   help="more server flags, space-separated (e.g. --server_args=--max_concurrent_model_runs=0)")
    shipped = "default: serving/configs/batching_parameters.txt's"
    p.add_argument("--max_batch_size", type=int, default=None, help=shipped)
    p.add_argument("--num_batch_threads", type=int, default=None, help=f"batches run at once ({shipped})")
    p.add_argument("--batch_timeout_micros", type=int, default=None, help=shipped)
    p.add_argument("--allowed_batch_sizes", default="",
                   help="comma-separated; a batch is padded up to the next (the last must be --max_batch_size)")
    p.add_argument("--impressions", type=int, default=30000, help="simulated log size when building")
    p.add_argument("--output", default=os.path.join(HERE, "out", "results_serving.json"),
                   help="JSON file of the run (default: benchmarks/out/, not tracked)")
    return p.parse_args(argv)


# -- setup ---------------------------------------------------------------------------------------
# The exports the benchmarks make under their work folder from its models (this script's and
# bench_rank_path.py's): stale once a model is rebuilt.
EXPORT_DIRS = ("export", "export_xla_on", "export_xla_off")


def default_work_dir(history_length, ranking_config=None):
    """The benchmarks' work folder: one per history length and ranking config file."""
    suffix = f"_{os.path.splitext(os.path.basename(ranking_config))[0]}" if ranking_config else ""
    return f"/tmp/tfrec_kuai_bench_serving_L{history_length}{suffix}"


def build_models(work_dir, impressions, history_length=50, ranking_config=None):
    """Simulated log -> Beam examples -> default-size (untrained: the cost of a request does not
    depend on the weights) ranking and retrieval models, each reused when already there and built
    with the config asked for. ``ranking_config``: a ranking config file instead of the packaged
    default (another size). Returns (ranking_dir, retrieval_dir, examples)."""
    from tfrec_kuai.train import training
    from tfrec_kuai.config import load_config
    from tfrec_kuai.sim.simulator import SimParams, simulate
    from beam_pipelines import build_examples
    log_dir, examples = os.path.join(work_dir, "log"), os.path.join(work_dir, "examples")
    if not os.path.exists(os.path.join(examples, "metadata.json")):
        print(f"building benchmark examples under {work_dir} ...", flush=True)
        simulate(log_dir, SimParams(impressions=impressions, seed=1, days=4), progress=False)
        build_examples.run(["--input", os.path.join(log_dir, "log_*.csv"), "--output", examples,
                            "--video_features", os.path.join(log_dir, "video_features_basic_sim.csv"),
                            "--history_length", str(history_length), "--eval_days", "1"])
    vocabularies = training.read_vocabularies(examples)
    history_length = json.load(open(os.path.join(examples, "metadata.json")))["history_length"]
    dirs = []
    for stage in ("ranking", "retrieval"):
        model_dir = os.path.join(work_dir, stage)
        config = load_config(ranking_config if stage == "ranking" else None, stage=stage).override(
            "model", history_length=history_length, stage=stage)
        if os.path.isdir(model_dir) and training.load_config_from_model_dir(model_dir).model != config.model:
            # Built by an earlier default or another config file (say, another expert width): timing
            # it would measure another model. Rebuild it, and drop the exports made from it.
            print(f"{model_dir} was built with another model config than the one asked for: rebuilding it "
                  f"and removing {', '.join(EXPORT_DIRS)}", flush=True)
            for name in (stage,) + EXPORT_DIRS:
                shutil.rmtree(os.path.join(work_dir, name), ignore_errors=True)
        if not os.path.isdir(model_dir):
            training.save_model_dir(training.build_model(config, vocabularies), config, model_dir)
        dirs.append(model_dir)
    return dirs[0], dirs[1], examples


def build_export(work_dir, impressions, model_name, history_length=50, ranking_config=None):
    """``build_models``, then their fused export (reused when there). Returns (base, examples)."""
    from tfrec_kuai.export import saved_model
    base = os.path.join(work_dir, "export")
    model_base = os.path.join(base, model_name)
    ranking_dir, retrieval_dir, examples = build_models(work_dir, impressions, history_length, ranking_config)
    if not (os.path.isdir(model_base) and any(v.isdigit() for v in os.listdir(model_base))):
        saved_model.export(ranking_dir, retrieval_dir, examples, base, model_name=model_name)
    return base, examples


def make_requests(examples_dir, candidates):
    """{signature: inputs} for one user (recommend) and one user x ``candidates`` videos (rank)."""
    from tfrec_kuai.data import examples
    from tfrec_kuai.export import saved_model as E
    serialized = examples.read_serialized_examples(examples_dir, "eval", 1)
    history_length = examples.load_metadata(examples_dir)["history_length"]
    features = E.parse_examples(serialized, history_length)
    corpus = examples.read_corpus(examples_dir)
    rows = np.arange(candidates) % len(corpus["video_id"])
    return {"recommend": E.user_inputs(features),
            "rank": E.rank_inputs(features, {k: v[rows] for k, v in corpus.items()})}


# The server (its --grpc_transport) each client transport is measured against.
SERVER_OF_TRANSPORT = {"grpc": "auto", "rest": "auto", "grpc-py": "python", "grpc-cc-load": "auto"}


class Server:
    """``python -m serving.server`` in its own process; ports read from its startup lines."""

    def __init__(self, base, model_name, batching, work_dir, extra_args=(), log_path=None):
        """``batching``: a ``serving.batching.BatchingOptions``, or None for no batching;
        ``extra_args``: more server flags (TensorFlow's thread pools, say); ``log_path``: where
        its log goes (batch sizes are logged at shutdown), else nowhere."""
        args = [sys.executable, "-m", "serving.server", "--port=0", "--rest_api_port=-1",
                f"--model_name={model_name}", f"--model_base_path={os.path.join(base, model_name)}",
                "--file_system_poll_wait_seconds=0", *extra_args]
        if batching is not None:
            params = os.path.join(work_dir, "batching_parameters.txt")
            with open(params, "w") as f:
                f.write(batching.to_text())
            args += ["--enable_batching", f"--batching_parameters_file={params}"]
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.ports = {}
        while len(self.ports) < 2:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("server exited during startup")
            for kind in ("gRPC", "REST"):
                if line.startswith(f"{kind} listening on"):
                    self.ports[kind] = int(line.rsplit(":", 1)[1])

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        if self._log is not subprocess.DEVNULL:
            self._log.close()


# -- clients -------------------------------------------------------------------------------------
def predict_request(model_name, signature, inputs):
    """The PredictRequest every gRPC client sends, made with the official classes."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def grpc_caller(port, model_name, signature, inputs):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    request = predict_request(model_name, signature, inputs)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def call():
        stub.Predict(request, timeout=30)
    return call


def rest_caller(port, model_name, signature, inputs):
    body = json.dumps({"signature_name": signature,
                       "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}).encode()
    local = threading.local()

    def call():
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", f"/v1/models/{model_name}:predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except Exception:
            conn.close()
            local.conn = None  # reconnect on the next call
            raise
        if response.status != 200:
            raise RuntimeError(data[:200])
    return call


def inprocess_caller(loaded, signature, inputs, inputs_as="numpy", gate=None):
    """A call of the signature in this process. ``inputs_as="numpy"``: each call makes its input
    tensors from the NumPy arrays, as any caller with a new request does (and the server does),
    and calls the signature as users do, ``function(**tensors)``; ``"flat"``: the same inputs, run
    the way the server runs a signature (``serving.servable.signature_runner``, no Python argument
    binding); ``"tensors"``: the same pre-built tensors every call, a best case that no caller with
    new data gets (≈ 1.3 ms faster per ``rank`` call here, RESULTS.md); ``"numpy-fair"``: ``numpy``
    with the calls of all the cell's threads passing through ``gate`` (a
    ``serving.admission.FairGate``), bounded and first come first served as the server's unbatched
    runs are, so that under a backlog the ratio compares overheads, not scheduling policies."""
    import contextlib
    import tensorflow as tf
    if inputs_as not in ("numpy", "flat", "tensors", "numpy-fair"):
        raise ValueError(f"in-process inputs: numpy, flat, tensors or numpy-fair, not {inputs_as!r}")
    gate = gate if inputs_as == "numpy-fair" else contextlib.nullcontext()
    function = loaded.signatures[signature]
    if inputs_as == "tensors":
        feed = {k: tf.constant(v) for k, v in inputs.items()}

        def make_feed():
            return feed
    else:
        def make_feed():
            return {k: tf.constant(v) for k, v in inputs.items()}
    if inputs_as == "flat":
        from serving.servable import signature_runner
        run, _ = signature_runner(function)
    else:
        def run(feed):
            return function(**feed)

    def call():
        with gate:
            {k: v.numpy() for k, v in run(make_feed()).items()}
    return call


def closed_loop(make_call, clients, seconds, warmup, cpu_of=()):
    """Each of ``clients`` threads calls back to back; latencies of calls started in the window.

    ``cpu_of``: process ids (None = this process) whose CPU milliseconds per answered request in
    the window are added as ``cpu_ms_per_request`` (this process) and ``server_cpu_ms_per_request``.
    """
    calls = [make_call() for _ in range(clients)]
    latencies, errors, first_error = [[] for _ in range(clients)], [0], []
    start = time.perf_counter()
    window = (start + warmup, start + warmup + seconds)

    def loop(i):
        call = calls[i]
        while True:
            t0 = time.perf_counter()
            if t0 >= window[1]:
                return
            try:
                call()
            except Exception as error:
                errors[0] += 1
                if not first_error:
                    first_error.append(f"{type(error).__name__}: {str(error)[:200]}")
                continue
            if t0 >= window[0]:
                latencies[i].append((time.perf_counter() - t0) * 1000)

    def load():
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [x for per in latencies for x in per], errors[0], first_error[0] if first_error else ""

    return measure(load, window, clients, seconds, cpu_of)


def threaded_load(make_call):
    """A cell's load: ``load(clients, seconds, warmup, cpu_of)`` is ``closed_loop`` over
    ``make_call``; ``load.first_call()`` makes one call alone."""
    def load(clients, seconds, warmup, cpu_of=()):
        return closed_loop(make_call, clients, seconds, warmup, cpu_of)
    load.first_call = lambda: make_call()()
    return load


def native_load(port, model_name, signature, inputs):
    """``threaded_load`` with the C++ load generator (``serving._grpc_load``) as the clients: the same
    closed loop and the same PredictRequest bytes (made by the official classes), every client's
    calls driven by one C++ thread, so the load takes far less of the 2 cores than gRPC Python's
    client does (RESULTS.md, "`rank` at 8 clients, and the p99 target")."""
    from serving.native_grpc import load_generator
    generator = load_generator()
    request = predict_request(model_name, signature, inputs).SerializeToString()
    method = "/tensorflow.serving.PredictionService/Predict"

    def load(clients, seconds, warmup, cpu_of=()):
        start = time.perf_counter()
        window = (start + warmup, start + warmup + seconds)

        def run():
            result = generator.closed_loop(f"127.0.0.1:{port}", method, request, clients, warmup, seconds)
            return result["latencies_ms"], result["errors"], result["first_error"][:200]
        return measure(run, window, clients, seconds, cpu_of)
    def first_call():  # raises, as the other clients' first call does, when it is not answered
        result = load(1, 0.0, 0.0)
        if result["errors"]:
            raise RuntimeError(f"the first call failed: {result.get('first_error', '')}")
    load.first_call = first_call
    return load


def measure(load, window, clients, seconds, cpu_of=()):
    """Run ``load() -> (latencies ms of the calls started in ``window``, errors, first error)`` while
    sampling the CPU of ``cpu_of`` at the window's edges; the cell's numbers."""
    cpu = []  # CPU seconds per process in ``cpu_of``, at the window's start and end

    def sample_cpu():
        for edge in window:
            time.sleep(max(0.0, edge - time.perf_counter()))
            cpu.append({pid: process_cpu_seconds(pid) for pid in cpu_of})

    sampler = threading.Thread(target=sample_cpu) if cpu_of else None
    if sampler:
        sampler.start()
    latencies, errors, first_error = load()
    if sampler:
        sampler.join()
    all_latencies = np.array(latencies)
    extra = {"first_error": first_error} if first_error else {}
    for pid in cpu_of:
        key = "cpu_ms_per_request" if pid is None else "server_cpu_ms_per_request"
        extra[key] = round((cpu[1][pid] - cpu[0][pid]) * 1000 / max(all_latencies.size, 1), 2)
    return {**extra, "clients": clients, "requests": int(all_latencies.size), "errors": errors,
            "qps": round(all_latencies.size / seconds, 1) if seconds else None,
            "min_ms": round(float(all_latencies.min()), 2) if all_latencies.size else None,
            "p50_ms": round(float(np.percentile(all_latencies, 50)), 2) if all_latencies.size else None,
            "p99_ms": round(float(np.percentile(all_latencies, 99)), 2) if all_latencies.size else None}


def process_cpu_seconds(pid=None):
    """User + system CPU seconds of process ``pid`` (this process when None), all its threads."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SUMMARY_FIELDS = ("p50_ms", "p99_ms", "qps", "cpu_ms_per_request", "server_cpu_ms_per_request",
                  "p50_ratio_vs_inprocess", "qps_ratio_vs_inprocess")


def summarize(rows, baseline="numpy"):
    """Median over rounds of each number, per cell; ratios (to the in-process ``baseline`` cell) are
    taken within a round first."""
    inproc = {(r["round"], r["signature"], r["clients"]): r for r in rows
              if r["mode"] == "in-process" and r["transport"] == baseline}
    for r in rows:
        base_row = inproc.get((r["round"], r["signature"], r["clients"]))
        if r["mode"] == "server" and base_row and base_row["p50_ms"] and r["p50_ms"]:
            r["p50_ratio_vs_inprocess"] = round(r["p50_ms"] / base_row["p50_ms"], 2)
            r["qps_ratio_vs_inprocess"] = round(r["qps"] / base_row["qps"], 2) if base_row["qps"] else None
    cells = {}
    for r in rows:
        cells.setdefault((r["signature"], r["mode"], r["transport"], r["batching"], r["clients"]), []).append(r)
    summary = []
    for (signature, mode, transport, batching, clients), group in cells.items():
        cell = dict(signature=signature, mode=mode, transport=transport, batching=batching, clients=clients,
                    rounds=len(group), errors=sum(r["errors"] for r in group))
        for field in SUMMARY_FIELDS:
            values = [r[field] for r in group if r.get(field) is not None]
            if values:
                cell[field] = round(float(np.median(values)), 2)
        summary.append(cell)
    return summary


def main(argv=None):
    args = parse_args(argv)
    args.work_dir = args.work_dir or default_work_dir(args.history_length, args.ranking_config)
    os.makedirs(args.work_dir, exist_ok=True)
    import tensorflow as tf
    if args.tensorflow_intra_op_parallelism:  # before TensorFlow runs anything here
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    if args.export_base:
        base, examples = args.export_base, args.examples
        if not examples:
            raise SystemExit("--export_base needs --examples (for realistic requests)")
    else:
        base, examples = build_export(args.work_dir, args.impressions, args.model_name, args.history_length,
                                      args.ranking_config)
    requests = make_requests(examples, args.candidates)
    signatures = args.signatures.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    baselines = args.inprocess_inputs.split(",")   # the first is the ratios' baseline

    from tfrec_kuai import ops
    ops.load_op_library()
    model_base = os.path.join(base, args.model_name)
    version = max(int(v) for v in os.listdir(model_base) if v.isdigit())
    loaded = tf.saved_model.load(os.path.join(model_base, str(version)))
    thread_flags = [f"--grpc_max_threads={args.grpc_max_threads}",
                    f"--tensorflow_intra_op_parallelism={args.tensorflow_intra_op_parallelism}",
                    f"--tensorflow_inter_op_parallelism={args.tensorflow_inter_op_parallelism}",
                    *args.server_args.split()]
    servers = {}
    rows = []
    try:
        transports = args.transports.split(",")
        unknown = set(transports) - set(SERVER_OF_TRANSPORT)
        if unknown:
            raise SystemExit(f"--transports: unknown {sorted(unknown)}; choose from {sorted(SERVER_OF_TRANSPORT)}")
        for batching in args.batching.split(","):  # all stay up: rounds alternate between them
            options = BatchingOptions(max_batch_size=args.max_batch_size,
                                      batch_timeout_micros=args.batch_timeout_micros,
                                      num_batch_threads=args.num_batch_threads,
                                      allowed_batch_sizes=[int(x) for x in args.allowed_batch_sizes.split(",") if x])
            for grpc_transport in sorted({SERVER_OF_TRANSPORT[t] for t in transports}):
                servers[batching, grpc_transport] = Server(
                    base, args.model_name, options if batching == "on" else None, args.work_dir,
                    thread_flags + [f"--grpc_transport={grpc_transport}"],
                    os.path.join(args.work_dir, f"server_batching_{batching}_{grpc_transport}.log"))
        cells = []  # (mode, transport, batching, signature, clients, load, server pid or None)
        for signature in signatures:
            for clients in levels:
                for inputs_as in baselines:  # shown in the transport column
                    gate = FairGate(args.inprocess_max_concurrent_runs)  # one per cell: its threads share it
                    def make_call(signature=signature, inputs_as=inputs_as, gate=gate):
                        return inprocess_caller(loaded, signature, requests[signature], inputs_as, gate)
                    cells.append(("in-process", inputs_as, "-", signature, clients, threaded_load(make_call), None))
                for batching in args.batching.split(","):
                    for transport in transports:
                        server = servers[batching, SERVER_OF_TRANSPORT[transport]]
                        port = server.ports["REST" if transport == "rest" else "gRPC"]
                        if transport == "grpc-cc-load":
                            load = native_load(port, args.model_name, signature, requests[signature])
                        else:
                            maker = rest_caller if transport == "rest" else grpc_caller
                            load = threaded_load(lambda maker=maker, port=port, signature=signature: maker(
                                port, args.model_name, signature, requests[signature]))
                        cells.append(("server", transport, batching, signature, clients, load, server.process.pid))
        for *_, clients, load, _pid in cells:  # unmeasured
            load.first_call()  # one call alone first: XLA compiles the request's shapes once, not per thread
            load(clients, 0.0, args.warmup_seconds)
        for round_index in range(args.rounds):
            for mode, transport, batching, signature, clients, load, pid in cells:
                cpu_of = (None,) if pid is None else (None, pid)
                row = dict(round=round_index, mode=mode, transport=transport, batching=batching, signature=signature,
                           **load(clients, args.seconds, 0.5, cpu_of=cpu_of))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = summarize(rows, baseline=baselines[0])
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"command": " ".join([os.path.relpath(sys.executable, REPO), "benchmarks/bench_serving.py"]
                                       + (argv if argv is not None else sys.argv[1:])),
                   "cpus": os.cpu_count(), "seconds_per_cell": args.seconds, "rounds": args.rounds,
                   "summary": summary, "results": rows}, f, indent=1)
    print(f"medians over {args.rounds} rounds; p50/inproc: server p50 / in-process ({baselines[0]}) p50; CPU ms per "
          "request: the server's, and this process's (the model in-process, the load generator otherwise)")
    print(f"{'signature':10} {'mode':10} {'transport':9} {'batch':5} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'QPS':>8} {'p50/inproc':>10} {'srv CPU':>8} {'own CPU':>8}")
    for r in summary:
        print(f"{r['signature']:10} {r['mode']:10} {r['transport']:9} {r['batching']:5} {r['clients']:>7} "
              f"{r.get('p50_ms', ''):>8} {r.get('p99_ms', ''):>8} {r.get('qps', ''):>8} "
              f"{r.get('p50_ratio_vs_inprocess', ''):>10} {r.get('server_cpu_ms_per_request', ''):>8} "
              f"{r.get('cpu_ms_per_request', ''):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
