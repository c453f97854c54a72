"""``tfrec-kuai loop``: the daily loop — serve, build examples, train, push, hot-swap (docs/design.md §10).

Day 0 is the logging policy's log (``simulate``, with its ``is_rand`` random exposures), the
Beam job over it (writing the history state), the first models trained from scratch and
exported as version 1 into ``DIR/serving/kuai/``, which a ``python -m serving.server`` started
here polls every second, logging every request as a ``PredictionLog``. Then each day d = 1..D,
as TFX names the steps:

1. **Serving**: the day's users (``--users`` of the world, drawn with the seed; the same users
   every day) served over gRPC through the ``served`` policy (``online/loop_serve.py``), their
   impressions written as KuaiRand-format logs into ``DIR/days/<d>/``;
2. **ExampleGen**: the Beam job on that day's logs only, with the previous day's history state
   (``build_examples --history_state``): its cost does not grow with the days before;
   **Evaluator**: the model that served the day, on the day's examples (offline AUC by day);
3. **Trainer**: both stages, ``tfrec-kuai train`` on the day's examples, warm-started from
   yesterday's models where the train command takes ``--warm_start``;
4. **Pusher**: ``tfrec-kuai export`` of version d + 1 into a staging folder. It is renamed into
   the served base path (one ``os.rename``: a version appears whole, as TF Serving expects) once
   the first request of the next day has been answered; that request keeps coming, as the
   day's traffic does, until the new version answers it (``loop_serve.Recorder``), so the swap
   happens under traffic, its failures are counted, and the day's users are served by the new
   version. The last day's version is renamed in at once.

Restartable: each step writes into a staging path renamed into place when it is done, and
``DIR/state.json`` (replaced atomically) lists the finished steps, so the same command after a
``kill -9`` resumes at the first unfinished step; the server dies with the loop (``PDEATHSIG``)
and is started again on resume. ``DIR/metrics.json`` and ``DIR/report/`` are rewritten from the
state after every step.

Layout::

    DIR/state.json, metrics.json, report/index.html (+ PNG plots)
    DIR/server.json               the running server's pid and gRPC address
    DIR/world/                    the simulate folder (unless --world names one)
    DIR/days/<d>/                 log_standard_abtest.csv, log_random_abtest.csv, ground_truth.csv,
                                  reference/<policy>/ (the same users served by a reference policy)
    DIR/beam/<d>/examples, state  the day's examples and history state
    DIR/beam/<d>.video_features.csv  the video table with world day d's uploads (--uploads_per_day)
    DIR/evaluation/<d>/           metrics.json of the day's Evaluator
    DIR/models/<d>/ranking, retrieval
    DIR/staging/<v>/              an export waiting to be renamed into DIR/serving/kuai/<v>
    DIR/serving/kuai/<v>/         the versions the server polls
    DIR/requests/kuai-*.tfrecord  the server's request log
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time

from tfrec_kuai.errors import InputError

MODEL = "kuai"
STATE, METRICS = "state.json", "metrics.json"
# What must be the same to resume a loop folder (--days may grow; --no_progress may change).
FIXED = ("variant", "users", "seed", "history_length", "world", "world_users", "impressions", "world_days",
         "config", "page_size", "chunk_users", "references", "xla", "uploads_per_day",
         "videos")
DEFAULTS = {"uploads_per_day": 0, "videos": 0}    # what a loop folder started before the options existed had
# ``frozen``: version 1 (the day-0 model) kept serving, in-process: the loop without its daily
# learning, facing the same world — in particular the same catalogue depleted by the no-repeat rule.
REFERENCES = ("logging", "oracle", "random", "frozen")
STEP_KEYS = {"ExampleGen": "beam_s", "Evaluator": "evaluate_s", "Trainer": "train_s", "Pusher": "export_s"}


def plan(days, simulate):
    """The steps in order: ``[(day, step)]``."""
    steps = ([(0, "Simulate")] if simulate else []) + [(0, "ExampleGen"), (0, "Trainer"), (0, "Pusher")]
    for d in range(1, days + 1):
        steps += [(d, "Serving"), (d, "ExampleGen"), (d, "Evaluator"), (d, "Trainer"), (d, "Pusher")]
    return steps


def _write_json(path, value):
    """``value`` as JSON at ``path``, replacing it atomically (a kill leaves the old file or the new one)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fresh(path):
    """An empty staging path (a killed step's leftovers removed)."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def _command(name, argv):
    """Run ``tfrec-kuai NAME ARGV`` in this process (the command's own parser and ``run``)."""
    from tfrec_kuai import cli
    module = importlib.import_module(cli.COMMANDS[name][0])
    parser = cli.OneLineParser(prog=f"tfrec-kuai {name}")
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def train_takes_warm_start():
    """Whether ``tfrec-kuai train`` has ``--warm_start`` (continual training)."""
    from tfrec_kuai import cli
    parser = cli.OneLineParser(prog="train")
    importlib.import_module(cli.COMMANDS["train"][0]).add_arguments(parser)
    return "--warm_start" in parser._option_string_actions   # argparse's table of its flags


class Loop:
    """One loop folder: its options, its state, its steps."""

    def __init__(self, output, days, options, progress=True):
        self.dir, self.days, self.progress = os.path.abspath(output), days, progress
        self.options = {k: options[k] for k in FIXED}
        self.world_dir = os.path.abspath(options["world"]) if options["world"] else os.path.join(self.dir, "world")
        self.server = None
        self._world = None
        self.state = self._load_state()

    # -- state ------------------------------------------------------------------------------------
    def _load_state(self):
        path = os.path.join(self.dir, STATE)
        if not os.path.exists(path):
            if os.path.isdir(self.dir) and os.listdir(self.dir):
                raise InputError(f"--output {self.dir} is not empty and holds no {STATE}: not a loop folder")
            os.makedirs(self.dir, exist_ok=True)
            state = {"options": self.options, "done": [], "steps": {}, "serving": {}}
            _write_json(path, state)
            return state
        try:
            with open(path) as f:
                state = json.load(f)
            stored = state["options"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{path}: unreadable ({error})") from None
        changed = sorted(k for k in FIXED if stored.get(k, DEFAULTS.get(k)) != self.options[k])
        if changed:
            raise InputError(f"--output {self.dir} is a loop started with other options "
                             f"({', '.join(f'--{k} {stored.get(k)!r}' for k in changed)}): resume it with the "
                             "same command, or give a new --output")
        return state

    def _finish(self, day, step, seconds, record=None):
        key = f"{day}/{step}"
        self.state["steps"][key] = {"seconds": round(seconds, 3), **(record or {})}
        self.state["done"].append(key)
        _write_json(os.path.join(self.dir, STATE), self.state)
        self.write_outputs()
        print(f"loop: day {day} {step} done in {seconds:.1f} s", file=sys.stderr, flush=True)

    # -- paths ------------------------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.dir, *[str(p) for p in parts])

    def version_dir(self, version):
        return self.path("serving", MODEL, version)

    def staged(self, version):
        return self.path("staging", version, MODEL, version)

    @property
    def world(self):
        if self._world is None:
            from tfrec_kuai.sim.world import World
            self._world = World(self.world_dir, seed=self.options["seed"])
        return self._world

    # -- the run ----------------------------------------------------------------------------------
    def run(self):
        try:
            for day, step in plan(self.days, not self.options["world"]):
                if f"{day}/{step}" in self.state["done"]:
                    continue
                started = time.monotonic()
                record = getattr(self, "_" + step.lower())(day)
                if step == "Simulate":
                    self.world.sample_users(self.options["users"])    # --users the new world lacks: stop now
                self._finish(day, step, time.monotonic() - started, record)
            self.write_outputs()
            return self.metrics()
        finally:
            if self.server is not None:
                self.server.stop()
                self.server = None

    def _simulate(self, day):
        from tfrec_kuai.sim.simulator import SimParams, simulate
        tmp = _fresh(self.world_dir + ".tmp")
        o = self.options
        simulate(tmp, SimParams(impressions=o["impressions"], seed=o["seed"], users=o["world_users"],
                                days=o["world_days"], uploads_per_day=o["uploads_per_day"], videos=o["videos"],
                                upload_days=max(SimParams.upload_days, self.days + 1)), progress=self.progress)
        shutil.rmtree(self.world_dir, ignore_errors=True)
        os.rename(tmp, self.world_dir)
        return {}

    def _examplegen(self, day):
        from beam_pipelines import build_examples
        from tfrec_kuai.online.abtest import RANDOM, STANDARD
        from tfrec_kuai.sim.simulator import RANDOM_LOG, STANDARD_LOG, USER_TABLE, VIDEO_TABLE
        if day == 0:
            inputs, history = [os.path.join(self.world_dir, n) for n in (STANDARD_LOG, RANDOM_LOG)], []
        else:
            inputs = [self.path("days", day, n) for n in (STANDARD, RANDOM)]
            history = ["--history_state", self.path("beam", day - 1, "state")]
        argv = ["--input", ",".join(inputs), "--output", self.path("beam", day, "examples"), *history,
                "--write_history_state", self.path("beam", day, "state"),
                "--video_features", os.path.join(self.world_dir, VIDEO_TABLE),
                "--user_features", os.path.join(self.world_dir, USER_TABLE),
                "--history_length", str(self.options["history_length"]), "--eval_days", "0", "--overwrite"]
        if self.world.params.uploads_per_day > 0:
            # The corpus the day's export serves tomorrow (world day ``day``) holds that day's uploads.
            os.makedirs(self.path("beam"), exist_ok=True)
            table = self.world.write_video_table(self.path("beam", f"{day}.video_features.csv"), day)
            argv[argv.index("--video_features") + 1] = table
        meta = build_examples.run(argv)
        rows = meta["rows"]
        return {"rows": {k: rows[k] for k in ("input", "train_examples", "dead_letter", "history_only") if k in rows}}

    def _evaluator(self, day):
        """Offline metrics of the model that served day ``day`` (yesterday's ranking model) on that
        day's examples, which it never trained on: the offline figure beside the online one."""
        from tfrec_kuai.evaluate import evaluation
        metrics = evaluation.evaluate(self.path("beam", day, "examples"), self.path("models", day - 1, "ranking"),
                                      _fresh(self.path("evaluation", day)), split="train", log=lambda *a: None)
        return {"offline": {k: v for k, v in metrics.items()
                            if k.startswith(("auc_", "gauc_", "xauc_")) and isinstance(v, float)}}

    def _trainer(self, day):
        final = self.path("models", day)
        tmp = _fresh(final + ".tmp")
        warm = day > 0 and train_takes_warm_start()
        for stage in ("retrieval", "ranking"):
            argv = ["--examples", self.path("beam", day, "examples"), "--model_dir", os.path.join(tmp, stage),
                    "--stage", stage, "--variant", self.options["variant"], "--validation", "none",
                    "--seed", str(self.options["seed"]), "--verbose", "0"]
            if self.options["config"]:
                argv += ["--config", self.options["config"]]
            if warm:
                argv += ["--warm_start", self.path("models", day - 1, stage)]
            _command("train", argv)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        return {"warm_start": bool(warm)}

    def _pusher(self, day):
        version = day + 1
        if not os.path.exists(self.version_dir(version)):   # published already: versions are immutable
            staging = _fresh(self.path("staging", version))
            models = self.path("models", day)
            _command("export", ["--ranking_dir", os.path.join(models, "ranking"),
                                "--retrieval_dir", os.path.join(models, "retrieval"),
                                "--examples", self.path("beam", day, "examples"), "--export_base", staging,
                                "--model_name", MODEL, "--version", str(version), "--xla", self.options["xla"],
                                "--warmup_examples", "0"])
            if day in (0, self.days):   # no traffic to swap under: the first version, or the last day's
                self.publish(version)
        return {"version": version}

    def publish(self, version):
        """Rename the staged ``version`` into the served base path (once; a no-op when it is there)."""
        source, target = self.staged(version), self.version_dir(version)
        if os.path.exists(target) or not os.path.exists(source):
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(source, target)
        shutil.rmtree(self.path("staging", version), ignore_errors=True)

    def _ensure_server(self):
        from tfrec_kuai.online.served import LocalServer
        if self.server is None:
            os.makedirs(self.path("requests"), exist_ok=True)
            self.server = LocalServer(base_paths={MODEL: self.path("serving", MODEL)},
                                      request_logging={MODEL: (self.path("requests", MODEL), 1.0)},
                                      poll_wait_s=1, role="the loop's model server").start()
            # Who serves now: an operator (and the restart test) can see the process and its port.
            _write_json(self.path("server.json"), {"pid": self.server.process.pid, "address": self.server.address})
        return self.server

    def _serving(self, day):
        from tfrec_kuai.online.loop_serve import serve_day
        from tfrec_kuai.online.policies import make_policy
        from tfrec_kuai.online.served import ServedPolicy
        server = self._ensure_server()
        world = self.world
        users = world.sample_users(self.options["users"])
        policy = ServedPolicy(f"served:{MODEL}", world, server.address, MODEL)
        references = [(name, make_policy(f"savedmodel:{self.version_dir(1)}" if name == "frozen" else name, world, None))
                      for name in self.options["references"]]
        tmp = _fresh(self.path("days", f"{day}.tmp"))
        try:
            record = serve_day(world, self.world_dir, tmp, day, users, policy, self.options["page_size"],
                               self.options["chunk_users"], self.path("requests", MODEL),
                               swap=(lambda: self.publish(day), day) if day > 1 else None, progress=self.progress,
                               references=references)
        finally:
            policy.close()
        os.rename(tmp, self.path("days", day))
        return record

    # -- outputs ----------------------------------------------------------------------------------
    def metrics(self):
        """The metrics.json dict: one row per served day (docs/design.md §10), day 0's costs apart."""
        steps = self.state["steps"]
        rows = []
        for d in range(1, self.days + 1):
            serve = steps.get(f"{d}/Serving")
            if serve is None:
                break
            row = {"day": d, "model_version": serve["model_version"],
                   "watch_time_per_user_day": serve["watch_time_per_user_day"], "skip_rate": serve["skip_rate"],
                   "failed_requests": serve["failed_requests"]}
            row.update({key: steps.get(f"{d}/{step}", {}).get("seconds") for step, key in STEP_KEYS.items()})
            row.update({k: serve[k] for k in ("users", "impressions", "requests", "versions", "requests_by_version",
                                              "unattributed_requests", "serve_s", "valid_rate", "long_rate",
                                              "distinct_videos")})
            row["swap_requests"] = serve["swap_requests"]
            row["swap_under_traffic"] = len(serve["requests_by_version"]) > 1
            row["beam_rows"] = steps.get(f"{d}/ExampleGen", {}).get("rows")
            row["offline"] = steps.get(f"{d}/Evaluator", {}).get("offline")
            row["references"] = {name: {k: ref[k] for k in ("watch_time_per_user_day", "skip_rate", "impressions")}
                                 for name, ref in serve["references"].items()}
            rows.append(row)
        day0 = {key: steps.get(f"0/{step}", {}).get("seconds") for step, key in STEP_KEYS.items()}
        day0["beam_rows"] = steps.get("0/ExampleGen", {}).get("rows")
        versions = sorted(int(v) for v in os.listdir(self.path("serving", MODEL)) if v.isdigit()) \
            if os.path.isdir(self.path("serving", MODEL)) else []
        return {"days": rows, "day0": day0, "versions": versions,
                "setup": {**self.options, "days": self.days, "world": self.world_dir, "model": MODEL,
                          "finished": len(self.state["done"]) == len(plan(self.days, not self.options["world"]))}}

    def write_outputs(self):
        from tfrec_kuai.online import loop_report
        out = self.metrics()
        _write_json(self.path(METRICS), out)
        loop_report.write_report(self.path("report"), out)


def run_loop(output, days, options, progress=True):
    """Run (or resume) the loop in ``output``; returns the metrics.json dict."""
    options = dict(options, world=os.path.abspath(options["world"]) if options["world"] else None,
                   config=os.path.abspath(options["config"]) if options["config"] else None)
    for name in options["references"]:
        if name not in REFERENCES:
            raise InputError(f"--reference {name}: expected one of {', '.join(REFERENCES)}")
    if options["config"] and not os.path.isfile(options["config"]):
        raise InputError(f"--config {options['config']}: no such file")
    if options["world"] and not os.path.isdir(options["world"]):
        raise InputError(f"--world {options['world']}: no such folder (expected a `tfrec-kuai simulate` output)")
    for name in ("uploads_per_day", "videos"):
        if options["world"] and options.get(name):
            raise InputError(f"--{name}: only with the loop's own simulated day 0 (the --world folder's "
                             f"params.json fixes its catalogue: give it to `tfrec-kuai simulate --{name}`)")
    if options["world"]:
        from tfrec_kuai.sim.world import World
        World(options["world"], seed=options["seed"]).sample_users(options["users"])   # before anything is written
    return Loop(output, days, options, progress).run()
