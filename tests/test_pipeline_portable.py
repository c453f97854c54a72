"""The Beam job through Beam's portable job API, as Flink, Spark and Dataflow Runner v2 run it.

A job service (``local_job_service_main``, the one that ships in ``apache_beam``) and an SDK
worker pool (``worker_pool_main``, ``--environment_type=EXTERNAL``) run as their own processes on
127.0.0.1, in another folder than the launcher's; the job's output equals the in-process
DirectRunner's on the same input: every TFRecord byte for byte, the vocabularies, the corpus, the
dead letter and the metadata.
"""
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from beam_pipelines import build_examples
from tests.log_rows import HEADER, log_row, read_records
from tfrec_kuai.schema import VOCAB_FEATURES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Service:
    """A Beam service started as its own process group (the worker pool's SDK workers are its
    children: stopping the group stops them too), its output in ``folder/<name>.log``."""

    def __init__(self, name, argv, folder, timeout=60):
        self.name, self.log = name, os.path.join(folder, f"{name}.log")
        self.port = free_port()
        # the pool starts each SDK worker as `python` from PATH: this interpreter's, which has the job
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                   PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", *argv, str(self.port)], cwd=folder, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(self.log, errors="replace") as f:
                    pytest.fail(f"{name} ({' '.join(argv)} {self.port}) did not start listening "
                                f"(exit {self.proc.returncode}); its output:\n{f.read()[-4000:]}")
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def portable_services(tmp_path):
    """``(job endpoint, worker pool address)`` of a job service and a worker pool on 127.0.0.1."""
    folder = tmp_path / "services"
    folder.mkdir()
    started = []
    try:
        for name, argv in (("job_service", ["apache_beam.runners.portability.local_job_service_main", "--port"]),
                           ("worker_pool", ["apache_beam.runners.worker.worker_pool_main", "--service_port"])):
            started.append(Service(name, argv, str(folder)))
        yield tuple(f"127.0.0.1:{s.port}" for s in started), started
    finally:
        for service in started:
            service.stop()


def job_input(tiny_log_dir, folder):
    """The tiny log plus a file of bad rows and one duplicate event: every output, the dead letter
    included, has rows to compare."""
    with open(os.path.join(tiny_log_dir, "log_standard_sim.csv")) as f:
        next(f)
        duplicate = next(f).rstrip("\n")
    bad = [duplicate, log_row(video_id="abc"), log_row(is_like=2), "1,10,20220408", log_row(duration_ms=-5)]
    (folder / "bad.csv").write_text("\n".join([HEADER] + bad) + "\n")
    return ["--input", os.path.join(tiny_log_dir, "log_*.csv"), "--input", str(folder / "bad.csv"),
            "--video_features", os.path.join(tiny_log_dir, "video_features_basic_sim.csv"),
            "--user_features", os.path.join(tiny_log_dir, "user_features_sim.csv"),
            "--history_length", "50", "--eval_days", "1"]


def dead_letter(folder):
    return sorted(line for path in glob.glob(os.path.join(folder, "dead_letter", "*.jsonl"))
                  for line in open(path, encoding="utf-8") if line.strip())


@pytest.mark.slow
def test_portable_runner_equals_direct_runner(tiny_log_dir, portable_services, tmp_path, monkeypatch):
    (job_endpoint, worker_pool), services = portable_services
    flags = job_input(tiny_log_dir, tmp_path)
    direct, direct_result = build_examples.run(flags + ["--output", str(tmp_path / "direct")], return_result=True)
    # the launcher in another folder than the workers, with relative paths: the workers get them absolute
    monkeypatch.chdir(tiny_log_dir)
    relative = [os.path.relpath(a, tiny_log_dir) if a.startswith(tiny_log_dir) else a for a in flags]
    portable, portable_result = build_examples.run(relative + [
        "--output", str(tmp_path / "portable"), "--read_range_mb", "0.05", "--encode_batch", "64",
        "--runner=PortableRunner", f"--job_endpoint={job_endpoint}", "--environment_type=EXTERNAL",
        f"--environment_config={worker_pool}"], return_result=True)

    with open(services[1].log, errors="replace") as f:  # the DoFns ran in an SDK worker process of the pool
        assert re.findall(r'Starting worker with command .*worker_id="worker_\d+"', f.read())
    assert portable["pipeline_options"]["runner"] == "PortableRunner"
    assert direct["rows"]["dead_letter"] == 5 and direct["rows"]["dead_letter_by_reason"]["duplicate_event"] == 1
    for key in set(direct) | set(portable):
        if key not in ("command", "pipeline_options", "label_rates"):
            assert portable[key] == direct[key], key
    for split in ("train", "eval"):  # float sums in another order
        assert portable["label_rates"][split] == pytest.approx(direct["label_rates"][split], rel=1e-6)
    out, ref = str(tmp_path / "portable"), str(tmp_path / "direct")
    for split in ("train", "eval", "corpus"):
        assert read_records(out, split) == read_records(ref, split), split
    for feature in VOCAB_FEATURES:
        with open(os.path.join(out, "vocab", f"{feature}.txt")) as a, \
                open(os.path.join(ref, "vocab", f"{feature}.txt")) as b:
            assert a.read() == b.read(), feature
    assert dead_letter(out) == dead_letter(ref)
    assert build_examples.counters(portable_result) == build_examples.counters(direct_result)


def test_unreachable_job_endpoint_is_one_line(tiny_log_dir, tmp_path):
    """No job service at ``--job_endpoint``: exit 2 with one line, before ``--output`` exists."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.build_examples", "--input", os.path.join(tiny_log_dir, "log_*.csv"),
         "--output", str(out), "--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{free_port()}",
         "--job_server_timeout=1", "--environment_type=EXTERNAL", "--environment_config=127.0.0.1:1"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("build_examples: error:")]
    assert len(errors) == 1 and "no job service answered within 1 s" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.building-*"))
