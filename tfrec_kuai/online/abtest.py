"""``tfrec-kuai abtest``: an online A/B test of policies in the simulator's world (docs/design.md §10).

Users of the world are drawn with the seed; with a hash split each goes to one arm by a hash of
its id (as a real A/B test), with ``paired`` every arm replays all of them with common random
numbers — the same visit times and the same uniforms for every reaction — so the arms differ only
by what they served, and far fewer users resolve the same lift. Arms run one after another, a
cohort of users at a time (memory stays flat in the number of users). For every arm the output
folder gets its served impressions as KuaiRand-format logs (they can feed the Beam job and the
next model), with their truth, ``metrics.json`` the metrics and each arm's lift over the
first arm, the control, and each arm's profile by day, by position in the visit and by visit
length (``online/metrics.py``), and ``index.html`` the page a person reads, with its plots
(``online/abtest_page.py``).

Output::

    OUTPUT/metrics.json
    OUTPUT/index.html, watch_by_day.png, skip_by_position.png, visit_lengths.png
    OUTPUT/arms/<arm>/log_standard_abtest.csv, log_random_abtest.csv, ground_truth.csv
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time

import numpy as np

from tfrec_kuai.errors import InputError
from tfrec_kuai.online import abtest_page, metrics
from tfrec_kuai.online.policies import make_policy, parse_spec
from tfrec_kuai.online.served import LocalServer, served_exports
from tfrec_kuai.online.worldlog import read_world_log
from tfrec_kuai.schema import COLUMN_INDEX, LOG_COLUMNS
from tfrec_kuai.sim.world import World
from tfrec_kuai.sim.simulator import TRUTH_COLUMNS, write_csv_rows

ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STANDARD, RANDOM, TRUTH = "log_standard_abtest.csv", "log_random_abtest.csv", "ground_truth.csv"


def parse_arm(text):
    """``NAME=POLICY`` → ``(name, policy spec)``; InputError for a malformed one."""
    name, sep, spec = text.partition("=")
    if not sep or not ARM_NAME.match(name):
        raise InputError(f"--arm {text!r}: expected NAME=POLICY with NAME of letters, digits, '_', '.', '-'")
    parse_spec(spec)
    return name, spec


class ArmLog:
    """The served impressions of one arm, appended cohort by cohort in KuaiRand's format."""

    def __init__(self, folder):
        os.makedirs(folder, exist_ok=True)
        header = ",".join(LOG_COLUMNS) + "\n"
        self.files = [open(os.path.join(folder, name), "w") for name in (STANDARD, RANDOM, TRUTH)]
        self.files[0].write(header)
        self.files[1].write(header)
        self.files[2].write(",".join(TRUTH_COLUMNS) + "\n")
        self.truth_fmt = ["%d", "%d", "%d"] + ["%.6g"] * (len(TRUTH_COLUMNS) - 3)

    def write(self, cols, truth):
        order = np.lexsort((cols["time_ms"], cols["user_id"]))
        table = np.stack([cols[c] for c in LOG_COLUMNS], 1)[order]
        rand = table[:, COLUMN_INDEX["is_rand"]] == 1
        write_csv_rows(self.files[0], table[~rand], "%d")
        write_csv_rows(self.files[1], table[rand], "%d")
        gt = np.column_stack([cols["user_id"], cols["video_id"], cols["time_ms"]] +
                             [truth[c] for c in TRUTH_COLUMNS[3:]])[order]
        write_csv_rows(self.files[2], gt, self.truth_fmt)

    def close(self):
        for f in self.files:
            f.close()


def run_arm(world, policy, user_ids, log_rows, days, page_size, chunk_users, folder, bar=None, first_day=0,
            on_served=None):
    """Serve ``user_ids`` (sorted) with ``policy``: ``(per-user sums, served video mask, profile)``,
    the profile (``metrics.Profile``) what the page plots.

    ``first_day``: the world's first day served (``World.serve``); ``on_served(chunk, cols,
    extra)``, called with each cohort's impressions, lets a caller see where each was served
    (the daily loop maps impressions to the requests that chose them)."""
    V = len(world.catalogue.video_id)
    shown = np.zeros(V, bool)
    sums, profiles = [], []
    user_col = log_rows[:, COLUMN_INDEX["user_id"]]
    log = ArmLog(folder)
    try:
        for lo in range(0, len(user_ids), chunk_users):
            chunk = user_ids[lo:lo + chunk_users]
            rows = log_rows[np.isin(user_col, chunk)]
            cohort = world.cohort(chunk, rows, policy.history_length)
            served = world.serve(cohort, policy, days, page_size,
                                 on_day=(lambda day, n: bar.update(n)) if bar is not None else None,
                                 first_day=first_day)
            cols, truth, extra = served.columns()
            log.write(cols, truth)
            if on_served is not None:
                on_served(chunk, cols, extra)
            r = extra.get("cohort_row", np.zeros(0, np.int64))
            visits = np.bincount(r[extra["position"] == 0], minlength=len(chunk)) if len(r) else np.zeros(len(chunk))
            sums.append(metrics.per_user_sums(len(chunk), r, cols, extra.get("repeat", np.zeros(0, bool)),
                                              visits, days))
            by_day = dict(extra, day=extra["day"] - first_day) if first_day and "day" in extra else extra
            profiles.append(metrics.Profile.of_cohort(len(chunk), r, cols, by_day, days))
            if len(r):
                shown[extra["video"]] = True
    finally:
        log.close()
    return (np.concatenate(sums) if sums else np.zeros((0, len(metrics.SUMS))), shown,
            metrics.Profile.concatenate(profiles, days))


def run_abtest(world_dir, arms, users, days, seed, output, paired=False, page_size=10, chunk_users=1000,
               replicates=1000, progress=True, leave=None, server=None):
    """Run the A/B test and write ``output``; returns the metrics.json dict.

    ``arms``: ``[(name, policy spec)]``, the first the control. ``server``: the gRPC address of
    the model server ``served:<model name>`` arms call; without it the ``served:<export dir>``
    arms are served by a server started here for the run (``online/served.py``)."""
    if len(arms) < 1:
        raise InputError("at least one --arm NAME=POLICY is needed")
    names = [name for name, _ in arms]
    if len(set(names)) != len(names):
        raise InputError(f"--arm names must differ, got {names}")
    started = time.time()
    world = World(world_dir, seed=seed, leave=leave)
    log_rows = read_world_log(world_dir)
    user_ids = world.sample_users(users)
    exports = served_exports(arms, server)       # served:<export dir> arms: one model each, named after the arm
    common = (world_dir, world, log_rows, user_ids, arms, days, seed, output, paired, page_size, chunk_users,
              replicates, progress, started)
    if not exports:
        return _run(*common, server, {})
    with LocalServer(exports) as local:
        return _run(*common, local.address, {name: name for name in exports})


def _profile_rng(seed, paired, arm):
    """The bootstrap of an arm's profile intervals: its own stream (the lifts' draws stay as they
    are); paired, the same resampled users for every arm, as for the lifts."""
    return np.random.default_rng([seed, 6] if paired else [seed, 6, arm])


def _run(world_dir, world, log_rows, user_ids, arms, days, seed, output, paired, page_size, chunk_users,
         replicates, progress, started, server, model_names):
    assignment = np.zeros(len(user_ids), np.int64) if paired else world.hash_split(user_ids, len(arms))
    # Every arm checked (a served one: its server answers) before any runs or anything is written.
    policies = [make_policy(spec, world, log_rows, server, model_names.get(name)) for name, spec in arms]
    created = not os.path.exists(output)
    try:
        return _serve_arms(world_dir, world, log_rows, user_ids, arms, policies, days, seed, output, paired,
                           page_size, chunk_users, replicates, progress, started, assignment)
    except BaseException:
        if created:       # a run stopped part-way (a refused request) leaves no half-written folder
            shutil.rmtree(output, ignore_errors=True)
        raise


def _serve_arms(world_dir, world, log_rows, user_ids, arms, policies, days, seed, output, paired, page_size,
                chunk_users, replicates, progress, started, assignment):
    from tqdm import tqdm

    names = [name for name, _ in arms]
    os.makedirs(output, exist_ok=True)
    authors = world.catalogue.author_id
    results = {}
    for index, ((name, _), policy) in enumerate(zip(arms, policies)):
        mine = user_ids if paired else user_ids[assignment == index]
        with tqdm(total=len(mine) * days, unit="user-day", desc=f"abtest {name}", disable=not progress) as bar:
            sums, shown, profile = run_arm(world, policy, mine, log_rows, days, page_size, chunk_users,
                                           os.path.join(output, "arms", name), bar)
        distinct = (int(shown.sum()), int(len(np.unique(authors[shown]))))
        results[name] = (sums, distinct, profile)
        if hasattr(policy, "close"):
            policy.close()
    rng = np.random.default_rng([seed, 5])
    out = {"arms": {}, "lift": {}}
    control = names[0]
    for name in names:
        sums, (videos, n_authors), profile = results[name]
        out["arms"][name] = {"policy": dict(arms)[name], **metrics.arm_metrics(sums, videos, n_authors),
                             "failed_requests": int(getattr(policies[names.index(name)], "failed_requests", 0)),
                             **profile.to_json(_profile_rng(seed, paired, names.index(name)), replicates)}
        if name != control:
            c_sums, c_distinct, _ = results[control]
            out["lift"][name] = metrics.lift(sums, c_sums, paired, rng, replicates,
                                             {"distinct_videos": (videos, c_distinct[0]),
                                              "distinct_authors": (n_authors, c_distinct[1])})
    out["setup"] = {"world": os.path.abspath(world_dir), "users": int(len(user_ids)), "days": int(days),
                    "seed": int(seed), "paired": bool(paired), "page_size": int(page_size), "control": control,
                    "first_day_ms": int(world.first_day_ms), "bootstrap_replicates": int(replicates),
                    "leave": world.leave.to_dict(), "seconds": round(time.time() - started, 2),
                    "lift": "relative: metric(arm) / metric(control) - 1, 95 % user-level bootstrap interval",
                    "oracle_utility": "expected watch seconds (behaviour model truth), unseen videos only"}
    with open(os.path.join(output, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2)
    abtest_page.write_page(output, out)
    return out
