"""``make demo``: the whole job end to end, through the same commands a user runs.

simulate → Beam job → train retrieval and ranking → evaluate → export (fused and portable) →
start ``serving.server`` → real gRPC requests (official ``tensorflow-serving-api`` stubs) for a
few users, printed beside what those users had watched, liked and skipped → stop the server →
the HTML report.

Every step is a subprocess running the documented command (docs/design.md §9), so the demo exercises
exactly the entry points of the README, and each command is printed before it runs so that it
can be copied and run alone.

    python -m tfrec_kuai.demo --output demo_out --impressions 200000
"""
import argparse
import functools
import glob
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from tfrec_kuai.schema import FEEDBACK_BITS


def _run(command, log_prefix):
    printable = " ".join(shlex.quote(c) for c in command)
    print(f"\n=== {log_prefix}\n$ {printable}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"--- {log_prefix}: done in {time.perf_counter() - started:.0f} s", flush=True)


def _cli(*args, prefix=None):
    """``tfrec-kuai ARGS`` as argv: ``prefix`` (default ``python -m tfrec_kuai.cli`` of this Python)."""
    return list(prefix or [sys.executable, "-m", "tfrec_kuai.cli"]) + list(args)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline_steps(out, impressions, seed, epochs, history_length, beam_args=(), train_args=(), side_tables=True,
                   python=None, cli=None, simulate_args=()):
    """The commands of the demo, in order, as (title, argv) pairs (the README shows the same).

    ``beam_args`` go to the Beam job (e.g. ``--direct_num_workers=2``), ``train_args`` to both
    ``tfrec-kuai train`` calls (e.g. ``--steps_per_epoch 20`` for a quick run), ``simulate_args``
    to ``tfrec-kuai simulate`` (e.g. ``--users 8``). ``side_tables=False`` builds the examples from
    the interaction logs alone, as a user without KuaiRand's video and user tables does.
    ``python`` / ``cli`` (an argv prefix such as ``["/venv/bin/tfrec-kuai"]``) run the steps in
    another environment, e.g. one where the wheel is installed.
    """
    python = python or sys.executable
    run = functools.partial(_cli, prefix=cli or [python, "-m", "tfrec_kuai.cli"])
    log_dir, examples = os.path.join(out, "log"), os.path.join(out, "examples")
    ranking, retrieval = os.path.join(out, "models", "ranking"), os.path.join(out, "models", "retrieval")
    tables = ["--video_features", os.path.join(log_dir, "video_features_basic_sim.csv"),
              "--user_features", os.path.join(log_dir, "user_features_sim.csv")] if side_tables else []
    steps = [
        ("simulate a KuaiRand-format log", run("simulate", "--output", log_dir, "--impressions", str(impressions),
                                                "--seed", str(seed), *simulate_args)),
        ("Beam job: logs -> TFRecord examples" + ("" if side_tables else " (logs alone, no side tables)"), [
            python, "-m", "beam_pipelines.build_examples",
            "--input", os.path.join(log_dir, "log_*.csv"), *tables,
            "--history_length", str(history_length), "--output", examples, "--overwrite", *beam_args]),
        ("train retrieval (two-tower)", run("train", "--examples", examples, "--model_dir", retrieval,
                                             "--stage", "retrieval", "--epochs", str(epochs), "--verbose", "2", *train_args)),
        ("train ranking (feedback-aware, multi-objective)", run(
            "train", "--examples", examples, "--model_dir", ranking, "--stage", "ranking", "--epochs", str(epochs),
            "--verbose", "2", *train_args)),
        ("evaluate retrieval", run("evaluate", "--examples", examples, "--model_dir", retrieval,
                                    "--output", os.path.join(out, "eval", "retrieval"))),
        ("evaluate ranking (with the simulator's oracle)", run(
            "evaluate", "--examples", examples, "--model_dir", ranking, "--output", os.path.join(out, "eval", "ranking"),
            "--ground_truth", os.path.join(log_dir, "ground_truth.csv"))),
        ("export for the server (fused attention)", run(
            "export", "--ranking_dir", ranking, "--retrieval_dir", retrieval, "--examples", examples,
            "--export_base", os.path.join(out, "serving"))),
        ("export for stock TF Serving (portable)", run(
            "export", "--ranking_dir", ranking, "--retrieval_dir", retrieval, "--examples", examples,
            "--export_base", os.path.join(out, "serving_portable"), "--portable")),
    ]
    return steps


def report_command(out):
    return _cli("report", "--examples", os.path.join(out, "examples"), "--output", os.path.join(out, "report"),
                "--ranking_dir", os.path.join(out, "models", "ranking"),
                "--retrieval_dir", os.path.join(out, "models", "retrieval"),
                "--ranking_eval", "full=" + os.path.join(out, "eval", "ranking"),
                "--retrieval_eval", os.path.join(out, "eval", "retrieval"))


class ServerProcess:
    """``python -m serving.server`` as a child process on 127.0.0.1, stopped on exit."""

    def __init__(self, model_base_path, model_name="kuai", python=None, cwd=None, env=None):
        self.port, self.rest_port = free_port(), free_port()
        self.cwd, self.env = cwd, env
        self.command = [python or sys.executable, "-m", "serving.server", f"--port={self.port}",
                        f"--rest_api_port={self.rest_port}", f"--model_name={model_name}",
                        f"--model_base_path={model_base_path}", "--file_system_poll_wait_seconds=0"]
        self.model_name = model_name
        self.process = None

    def __enter__(self):
        print("\n=== start the server\n$ " + " ".join(shlex.quote(c) for c in self.command), flush=True)
        self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env)
        return self

    def wait_available(self, timeout_s=180):
        """Until the model's versions are AVAILABLE (that is, warm): ``serving/readiness.py``."""
        from serving.readiness import wait_until_available

        wait_until_available(f"127.0.0.1:{self.port}", [self.model_name], self.process, timeout_s, poll_s=0.5)

    def __exit__(self, *exc):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        print("--- server stopped", flush=True)
        return False


def pick_users(examples_dir, count, min_history=5):
    """One eval example each for ``count`` different users with some history (serialized + parsed)."""
    from serving.client import example_features
    from tfrec_kuai.data.examples import read_serialized_examples

    chosen, users = [], set()
    for record in read_serialized_examples(examples_dir, "eval", 5000):
        features = example_features(record)
        user = features["user_id"][0]
        if user in users or features["hist_len"][0] < min_history:
            continue
        users.add(user)
        chosen.append(features)
        if len(chosen) == count:
            break
    return chosen


def describe_history(features):
    """What the user did with the videos of the history window: watched long, liked, skipped."""
    n = features["hist_len"][0]
    ids, bits = features["hist_video_id"][:n], features["hist_feedback"][:n]
    pick = lambda bit: [v for v, b in zip(ids, bits) if b & bit]  # noqa: E731
    return {"watched (long view)": pick(FEEDBACK_BITS["long"]), "liked": pick(FEEDBACK_BITS["like"]),
            "skipped": pick(FEEDBACK_BITS["skip"]), "hated": pick(FEEDBACK_BITS["hate"])}


def recommend_for_users(port, examples_dir, users=3, model_name="kuai", show=10):
    """Sends one gRPC Predict(recommend) per user with the official stubs; prints and returns answers."""
    from serving.client import GrpcTransport, Target, build_inputs

    target = Target(model_name)
    transport = GrpcTransport(f"127.0.0.1:{port}", timeout=30)
    signature = transport.signatures(target)["recommend"]
    answers = []
    for features in pick_users(examples_dir, users):
        version, outputs = transport.predict(target, "recommend", build_inputs(signature, [features], {}, {}))
        history = describe_history(features)
        print(f"\nuser {features['user_id'][0]} (model version {version}, history of {features['hist_len'][0]} events)")
        for what, ids in history.items():
            print(f"  {what:20} {len(ids):3}  {ids[:12]}{' …' if len(ids) > 12 else ''}")
        print("  recommended:        video_id      score   p_skip  p_long   watch_s  p_like")
        for i in range(min(show, outputs["video_id"].shape[1])):
            print(f"    {i + 1:2}. {int(outputs['video_id'][0, i]):>20} {float(outputs['score'][0, i]):9.3f}"
                  f" {float(outputs['p_skip'][0, i]):7.3f} {float(outputs['p_long'][0, i]):7.3f}"
                  f" {float(outputs['watch_s'][0, i]):8.1f} {float(outputs['p_like'][0, i]):7.3f}")
        answers.append((features, outputs))
    transport.channel.close()
    return answers


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tfrec_kuai.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--impressions", type=int, default=200_000, help="size of the simulated log")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--history_length", type=int, default=50)
    parser.add_argument("--users", type=int, default=3, help="users whose recommendations are printed")
    parser.add_argument("--no_report", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="keep TensorFlow's C++ start-up log on stderr")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from tfrec_kuai.quiet import quiet_tensorflow
    quiet_tensorflow(verbose=args.verbose)   # here and, through the environment, in every step
    out = os.path.abspath(args.output)
    started = time.perf_counter()
    for title, command in pipeline_steps(out, args.impressions, args.seed, args.epochs, args.history_length):
        _run(command, title)
    with ServerProcess(os.path.join(out, "serving", "kuai")) as server:
        server.wait_available()
        print(f"server AVAILABLE on 127.0.0.1:{server.port} (gRPC), :{server.rest_port} (REST)")
        recommend_for_users(server.port, os.path.join(out, "examples"), users=args.users)
    if not args.no_report:
        _run(report_command(out), "the report")
        print(f"open {os.path.join(out, 'report', 'index.html')}")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; outputs in {out} "
          f"({len(glob.glob(os.path.join(out, 'serving', 'kuai', '*')))} exported version(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
