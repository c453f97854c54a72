"""The daily loop's serving step: one day of the world's users served over gRPC by the running
server, each impression attributed to the model version that chose it (docs/design.md §10).

The day is driven by the A/B test's own ``run_arm`` with the ``served`` policy (the same code an
A/B arm runs), one day of the world at a time (``World.serve(first_day=...)``), on a cohort
rebuilt from the world's log and every earlier day's served log: a resumed loop rebuilds exactly
the state an unbroken one has, from what is on disk. The users' clocks are the last logged
impression, which a run kept in memory would carry a swipe further; rebuilding every day keeps
both runs alike.

Attribution: the policy is wrapped (:class:`Recorder`) so that every request of the day is
remembered with its users and the page it filled ((user, day, visit, first position)); the
server logs every request (``logging_config`` at sampling rate 1) as a ``PredictionLog`` with the
version that answered. Requests are sent one at a time, so the day's records are the next
``requests`` records of the request log, in order; each is checked against its request (the same
users) and every impression takes the version of the request of its page.
"""
from __future__ import annotations

import glob
import os
import time

import numpy as np

from tfrec_kuai.errors import InputError
from tfrec_kuai.online import metrics
from tfrec_kuai.online.abtest import RANDOM, STANDARD, run_arm
from tfrec_kuai.online.worldlog import read_world_log

RECORDS_TIMEOUT_S = 120.0
SWAP_TIMEOUT_S = 300.0
SWAP_PAUSE_S = 0.05       # between the requests that keep coming during a swap


class Recorder:
    """The served policy, with every Predict it sends remembered (users, the version that answered)
    and each page mapped to the request whose answer filled it.

    ``swap=(publish, version)``: right after the day's first request is answered, ``publish()``
    renames ``version`` into the served base path, and that first request is sent again and
    again, as the traffic that keeps coming while the server loads the new version, until
    ``version`` answers it (within ``SWAP_TIMEOUT_S``); its last answer fills the first page. So
    the swap happens under real ``recommend`` traffic, every failure during it is counted (the
    policy's ``failed_requests``), and the day's users are served by the new version."""

    def __init__(self, policy, swap=None):
        self.policy, self.swap = policy, swap
        self.name, self.history_length = policy.name, policy.history_length
        self.users, self.versions, self.pages = [], [], {}
        self.swap_requests = 0
        self._call = policy.call
        policy.call = self.call

    def _send(self, inputs):
        out = self._call(inputs)
        self.users.append(np.asarray(inputs["user_id"], np.int64).reshape(-1).copy())
        self.versions.append(self.policy.answered_version)
        return out

    def call(self, inputs):
        out = self._send(inputs)
        if self.swap is not None:
            publish, version = self.swap
            self.swap = None
            publish()
            deadline = time.time() + SWAP_TIMEOUT_S
            while self.policy.answered_version != version:
                if time.time() > deadline:
                    raise InputError(f"the loop's server did not serve version {version} within "
                                     f"{SWAP_TIMEOUT_S:.0f} s of its rename into the base path")
                time.sleep(SWAP_PAUSE_S)
                out = self._send(inputs)
                self.swap_requests += 1
        return out

    def recommend(self, page):
        out = self.policy.recommend(page)
        index = len(self.users) - 1
        for user in page.user_ids:
            self.pages[(int(user), page.day, page.visit, page.position)] = index
        return out


def read_day_rows(folder):
    """The rows of a day's served log (``ArmLog``'s two files), [n, 19] int64."""
    from beam_pipelines.validation import parse_lines
    parts = []
    for name in (STANDARD, RANDOM):
        with open(os.path.join(folder, name), "rb") as f:
            lines = f.read().splitlines()[1:]
        values, _, rejects = parse_lines(lines)
        if rejects:
            raise InputError(f"{os.path.join(folder, name)}: {len(rejects)} unreadable row(s): the loop's folder "
                             "was changed by hand")
        parts.append(values)
    return np.concatenate(parts)


def history_rows(world_dir, day_folders, user_ids):
    """The world's log and the earlier days' served rows of ``user_ids``: what the cohort is built from."""
    parts = [read_world_log(world_dir)] + [read_day_rows(f) for f in day_folders]
    rows = np.concatenate(parts)
    return rows[np.isin(rows[:, 0], user_ids)]


def count_records(prefix):
    from serving.prediction_log import log_files, read_records
    return sum(1 for _ in read_records(log_files(prefix))) if log_files(prefix) else 0


def _day_records(prefix, start, count):
    """Records ``start`` .. ``start + count`` of the request log, waiting for the writer to flush them."""
    from serving.prediction_log import log_files, read_records
    deadline = time.time() + RECORDS_TIMEOUT_S
    while True:
        records = list(read_records(log_files(prefix))) if log_files(prefix) else []
        if len(records) >= start + count or time.time() > deadline:
            return records[start:start + count]
        time.sleep(0.5)


def attribute(recorder, served_pages, prefix, start):
    """``(version per impression, version per request, mismatched requests)`` from the request log:
    its records ``start`` .. on are the day's requests in the order sent; one whose users or
    version differ from what the request got back is counted as mismatched (and left at −1)."""
    from serving.tensors import to_numpy
    records = _day_records(prefix, start, len(recorder.users))
    versions = np.full(len(recorder.users), -1, np.int64)
    mismatched = len(recorder.users) - len(records)
    for i, record in enumerate(records):
        users = to_numpy(record.predict_log.request.inputs["user_id"]).reshape(-1).astype(np.int64)
        version = record.log_metadata.model_spec.version.value
        if np.array_equal(users, recorder.users[i]) and version == recorder.versions[i]:
            versions[i] = version
        else:
            mismatched += 1
    return versions[served_pages] if len(served_pages) else np.zeros(0, np.int64), versions, mismatched


def serve_day(world, world_dir, output, day, user_ids, policy, page_size, chunk_users, prefix, swap=None,
              progress=True, references=()):
    """Serve loop day ``day`` (world day ``day - 1``) into ``output``; returns the day's serve record."""
    from tqdm import tqdm

    earlier = [os.path.join(os.path.dirname(output), str(d)) for d in range(1, day)]
    rows = history_rows(world_dir, earlier, user_ids)
    start = count_records(prefix)
    recorder = Recorder(policy, swap)
    pages = []

    def on_served(chunk, cols, extra):
        if not len(cols["user_id"]):
            return
        position = extra["position"] - extra["position"] % page_size
        pages.extend(recorder.pages[(int(u), int(d), int(v), int(p))] for u, d, v, p in
                     zip(cols["user_id"], extra["day"], extra["visit"], position))

    started = time.monotonic()
    with tqdm(total=len(user_ids), unit="user", desc=f"loop day {day} serving", disable=not progress) as bar:
        sums, shown, _ = run_arm(world, recorder, user_ids, rows, 1, page_size, chunk_users, output, bar,
                                 first_day=day - 1, on_served=on_served)
    serve_s = time.monotonic() - started
    by_impression, by_request, mismatched = attribute(recorder, np.asarray(pages, np.int64), prefix, start)
    out = _arm_record(world, sums, shown)
    out.update({"requests": len(recorder.users), "failed_requests": int(policy.failed_requests),
                "unattributed_requests": int(mismatched), "serve_s": round(serve_s, 3),
                "swap_requests": recorder.swap_requests,
                "versions": _counts(by_impression), "requests_by_version": _counts(by_request)})
    known = [int(v) for v in out["versions"] if int(v) >= 0]
    out["model_version"] = max(known) if known else None
    out["references"] = {}
    for name, reference in references:
        folder = os.path.join(output, "reference", name)
        earlier_ref = [os.path.join(os.path.dirname(output), str(d), "reference", name) for d in range(1, day)]
        ref_rows = history_rows(world_dir, earlier_ref, user_ids)
        sums, shown, _ = run_arm(world, reference, user_ids, ref_rows, 1, page_size, chunk_users, folder,
                                 first_day=day - 1)
        out["references"][name] = _arm_record(world, sums, shown)
    return out


def _arm_record(world, sums, shown):
    authors = world.catalogue.author_id
    return metrics.arm_metrics(sums, int(shown.sum()), int(len(np.unique(authors[shown]))))


def _counts(values):
    keys, counts = np.unique(values, return_counts=True)
    return {str(int(k)): int(c) for k, c in zip(keys, counts)}


def day_folders(days_dir):
    """The finished days' folders under ``days_dir``, by day."""
    found = [p for p in glob.glob(os.path.join(days_dir, "*")) if os.path.basename(p).isdigit()]
    return sorted(found, key=lambda p: int(os.path.basename(p)))
