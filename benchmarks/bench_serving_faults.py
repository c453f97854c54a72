"""Faults under load: how many requests a fault of the file system or a hostile client costs.

``python -m serving.server`` runs as its own process on 127.0.0.1 over a base path this script
controls; client threads send Predict over gRPC (official ``tensorflow-serving-api`` stubs) and
REST (plain HTTP) the whole time, and the faults come one after another, each in a phase of its
own:

* ``baseline``: nothing happens;
* ``base path removed``: the base path is renamed away for ``--outage_seconds``, then back;
* ``non-atomic copy``: a new version appears as ``saved_model.pb`` alone, ``variables/`` and the
  rest follow ``--copy_gap_seconds`` later (its first loads fail and are retried);
* ``corrupt version``: a version whose ``saved_model.pb`` is garbage is renamed in;
* ``slow clients``: ``--slow_clients`` connections send half a header, as many trickle a body one
  byte at a time, against a REST read timeout of ``--rest_read_timeout_s``.

TF Serving survives each of these without a failed request, so the table's error columns should
read 0; it also says which version served at the end of each phase and how long the slow
connections were held. Bounded: every phase has a deadline, the whole run takes about a minute,
nothing leaves the loopback interface. The model is the serving tests' toy SavedModel (the
faults are the server's, not the model's; it is built in ``--work_dir`` in a second).

    .venv/bin/python benchmarks/bench_serving_faults.py [--clients 4] [--output out.json]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tfrec_kuai  # noqa: F401
import numpy as np

MODEL = "toy"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default=None, help="default: a fresh temporary folder, removed afterwards")
    p.add_argument("--clients", type=int, default=4, help="load threads per transport (gRPC and REST)")
    p.add_argument("--phase_seconds", type=float, default=3.0, help="length of the baseline and settle phases")
    p.add_argument("--outage_seconds", type=float, default=3.0, help="how long the base path is gone")
    p.add_argument("--copy_gap_seconds", type=float, default=1.5,
                   help="between saved_model.pb and the rest of a non-atomic copy")
    p.add_argument("--slow_clients", type=int, default=8, help="half-header and trickling connections, each")
    p.add_argument("--rest_read_timeout_s", type=float, default=1.0)
    p.add_argument("--poll_seconds", type=float, default=0.2, help="the server's --file_system_poll_wait_seconds")
    p.add_argument("--load_retry_interval_micros", type=int, default=500_000)
    p.add_argument("--grpc_transport", default="auto", choices=("auto", "native", "python"))
    p.add_argument("--output", default=None, help="also write the table as JSON here")
    return p.parse_args(argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """Closed-loop clients on both transports; every answer is counted in the current phase."""

    def __init__(self, grpc_port, rest_port, clients):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        self.grpc, self.tf = grpc, tf
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0, 2.0, 3.0]], np.float32)))
        request.inputs["ids"].CopyFrom(tf.make_tensor_proto(np.array([0], np.int64)))
        self.request = request
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.rest_url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}:predict"
        self.body = json.dumps({"instances": [{"x": [1, 2, 3], "ids": 0}]}).encode()
        self.lock = threading.Lock()
        self.phase = None
        self.counts = {}
        self.last_version = None
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._grpc_client, daemon=True) for _ in range(clients)] + [
            threading.Thread(target=self._rest_client, daemon=True) for _ in range(clients)]

    def _count(self, transport, error=None):
        with self.lock:
            cell = self.counts.setdefault((self.phase, transport), {"requests": 0, "errors": 0, "examples": []})
            cell["requests"] += 1
            if error is not None:
                cell["errors"] += 1
                if len(cell["examples"]) < 3:
                    cell["examples"].append(error)

    def _grpc_client(self):
        while not self.stop.is_set():
            try:
                response = self.stub.Predict(self.request, timeout=10)
                self.last_version = int(self.tf.make_ndarray(response.outputs["version"])[0])
                self._count("grpc")
            except self.grpc.RpcError as error:
                self._count("grpc", f"{error.code().name}: {error.details()}"[:160])

    def _rest_client(self):
        while not self.stop.is_set():
            request = urllib.request.Request(self.rest_url, data=self.body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
                self._count("rest")
            except urllib.error.HTTPError as error:
                self._count("rest", f"HTTP {error.code}: {error.read()[:120]!r}")
            except OSError as error:
                self._count("rest", f"{type(error).__name__}: {error}"[:160])

    def start(self):
        for thread in self.threads:
            thread.start()

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
        self.channel.close()


def slow_connections(rest_port, count, trickle):
    """``count`` connections that send half a header (or, with ``trickle``, a body one byte per
    0.1 s); returns the seconds each was held open by the server and the status it got."""
    results = []

    def one():
        started = time.monotonic()
        status = None
        try:
            with socket.create_connection(("127.0.0.1", rest_port), timeout=15) as sock:
                if trickle:
                    sock.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                                 .encode())
                    try:
                        for _ in range(100):  # 10 s if the server let it
                            sock.sendall(b" ")
                            time.sleep(0.1)
                    except OSError:
                        pass
                else:
                    sock.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Le".encode())
                data = b""
                try:
                    while True:
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                if data.startswith(b"HTTP/1.1 "):
                    status = int(data.split(b" ")[1])
        except OSError:
            pass
        results.append((time.monotonic() - started, status))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def copy_version(template, target, parts):
    os.makedirs(target, exist_ok=True)
    for name in parts:
        source = os.path.join(template, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(target, name))
        elif os.path.exists(source):
            shutil.copy(source, target)


def run(args, work):
    from tests.fixtures_serving import build_toy_saved_model, publish_version
    templates = {v: build_toy_saved_model(os.path.join(work, "templates", str(v)), v) for v in (1, 2)}
    base = os.path.join(work, "base", MODEL)
    os.makedirs(base)
    publish_version(templates[1], base, 1)
    grpc_port, rest_port = free_port(), free_port()
    command = [sys.executable, "-m", "serving.server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
               f"--model_name={MODEL}", f"--model_base_path={base}",
               f"--file_system_poll_wait_seconds={args.poll_seconds}",
               f"--load_retry_interval_micros={args.load_retry_interval_micros}", "--max_num_load_retries=10",
               f"--rest_read_timeout_s={args.rest_read_timeout_s}", f"--grpc_transport={args.grpc_transport}",
               "--log_level=WARNING"]
    log_path = os.path.join(work, "server.log")
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        for line in server.stdout:
            if line.startswith("REST listening"):
                break
        else:
            raise SystemExit(f"the server did not start; see {log_path}")
        load = Load(grpc_port, rest_port, args.clients)
        rows = []

        def phase(name, action, note=lambda: ""):
            load.phase = name
            started = time.monotonic()
            action()
            rows.append({"fault": name, "seconds": round(time.monotonic() - started, 1),
                         "version_after": load.last_version, "note": note()})

        load.phase = "baseline"
        load.start()
        phase("baseline", lambda: time.sleep(args.phase_seconds))

        def outage():
            os.rename(base, base + ".away")
            time.sleep(args.outage_seconds)
            os.rename(base + ".away", base)
            time.sleep(args.phase_seconds / 2)
        phase("base path removed", outage)

        def non_atomic():
            target = os.path.join(base, "2")
            copy_version(templates[2], target, ["saved_model.pb"])
            time.sleep(args.copy_gap_seconds)
            copy_version(templates[2], target, ["variables", "assets", "assets.extra", "fingerprint.pb"])
            if not wait_until(lambda: load.last_version == 2, 30):
                raise SystemExit(f"version 2 never served; see {log_path}")
            time.sleep(args.phase_seconds / 2)
        phase("non-atomic copy", non_atomic)

        def corrupt():
            staging = os.path.join(base, ".tmp-3")
            os.makedirs(staging)
            with open(os.path.join(staging, "saved_model.pb"), "wb") as f:
                f.write(b"not a SavedModel")
            os.rename(staging, os.path.join(base, "3"))
            time.sleep(args.phase_seconds)
        phase("corrupt version", corrupt)

        held = {}

        def slow():
            threads, results = [], []
            for trickle in (False, True):
                more, got = slow_connections(rest_port, args.slow_clients, trickle)
                threads += more
                results.append(got)
            for thread in threads:
                thread.join(20)
            held["half header"], held["trickled body"] = results

        def slow_note():
            parts = []
            for kind, results in held.items():
                seconds = [s for s, _ in results]
                statuses = sorted({str(status) for _, status in results})
                parts.append(f"{len(results)} {kind}: held ≤ {max(seconds):.1f} s, answered {'/'.join(statuses)}")
            return "; ".join(parts)
        phase("slow clients", slow, slow_note)
        load.close()
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    table = []
    for row in rows:
        for transport in ("grpc", "rest"):
            cell = load.counts.get((row["fault"], transport), {"requests": 0, "errors": 0, "examples": []})
            row[f"{transport}_requests"], row[f"{transport}_errors"] = cell["requests"], cell["errors"]
            row[f"{transport}_error_examples"] = cell["examples"]
        table.append(row)
    return table


def print_table(table):
    header = ("fault", "seconds", "gRPC requests", "gRPC errors", "REST requests", "REST errors", "version after",
              "note")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table:
        print(f"| {row['fault']} | {row['seconds']} | {row['grpc_requests']} | {row['grpc_errors']} | "
              f"{row['rest_requests']} | {row['rest_errors']} | {row['version_after']} | {row['note']} |")
    for row in table:
        for transport in ("grpc", "rest"):
            for example in row[f"{transport}_error_examples"]:
                print(f"  {row['fault']} / {transport}: {example}")


def main(argv=None):
    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="tfrec_kuai_bench_faults_")
    try:
        table = run(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print_table(table)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(table, f, indent=2)
    return 1 if any(row["grpc_errors"] or row["rest_errors"] for row in table) else 0


if __name__ == "__main__":
    sys.exit(main())
