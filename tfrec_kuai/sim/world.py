"""The simulator's world as an environment a policy drives (docs/design.md §10).

``tfrec-kuai simulate`` writes what users did with the feed of a fixed logging policy. The world
answers the online question instead: what would these users have done with the feed *this*
policy picks? It continues a simulate folder — the same :class:`~tfrec_kuai.sim.simulator.Population`
(catalogue, users, latent affinities, logging-policy tables) rebuilt from its ``params.json`` and
seed — from the first day after its log ends:

* each user-day has ``Poisson(activity)`` app visits at diurnal times (the offline log's hour
  weights), never overlapping;
* in a visit the policy serves pages of N videos; the user reacts to each with the behaviour
  model (skip with the skip-streak context effect, play time, like, follow, comment, forward,
  hate, profile visit) and its truth, and after each video may leave (``sim/leave.py``);
* reactions update the state the offline simulator uses (the skip streak, reset at a visit's
  start) and the user's log: the rows are KuaiRand's 19 columns, built by the same
  ``simulator.log_columns`` as the offline log.

Every draw comes from ``sim/crn.py`` keyed by (seed, user, day, visit, position), so every policy
meets the same users, the same visit times and the same uniforms (common random numbers).

Users are driven a cohort at a time (:class:`Cohort`), all of its users in one NumPy call per
position in the page; the one sequential part is the order of positions, as in ``simulate``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass

import numpy as np

from tfrec_kuai.errors import InputError
from tfrec_kuai.schema import COLUMN_INDEX, LOG_COLUMNS, compute_labels
from tfrec_kuai.sim import behaviour, crn
from tfrec_kuai.sim.leave import leave_probability
from tfrec_kuai.sim.simulator import (BEIJING, HOUR_WEIGHTS, PARAMS_FILE, TAB_VALUES, TAB_WEIGHTS, TRUTH_COLUMNS,
                                  Population, SimParams, log_columns)

DAY_MS = 86_400_000
PAUSE_MS = 60_000            # a new visit starts at least a minute after the previous one ended
# Purposes: the second key of every stream, so no two kinds of draw share uniforms.
VISITS, VISIT_TIME, REACTION, ASSIGN = 1, 2, 3, 4


@dataclass
class Page:
    """One request of the policy: "the next ``size`` videos" for ``len(rows)`` users now.

    ``rows``: the users' rows in the cohort; ``user_ids`` their ids; ``time_ms`` the moment of
    the request (the first video of the page is shown then); ``streak`` the skip streak so far in
    the visit; ``position`` the page's first position in the visit."""
    cohort: "Cohort"
    rows: np.ndarray
    user_ids: np.ndarray
    time_ms: np.ndarray
    tab: np.ndarray
    streak: np.ndarray
    day: int
    visit: int
    position: int
    size: int

    def excluded(self):
        """``[b, V]`` bool: what a policy must not serve these users now — the videos each has
        seen and those not uploaded yet."""
        return self.cohort.seen[self.rows] | ~self.cohort.world.available(self.day)[None, :]


class Cohort:
    """The state of a group of users driven together: what each has seen (for exclusion and
    ``repeat_rate``), their newest ``history_length`` log rows (the requests' history) and
    their clocks."""

    def __init__(self, world, user_ids, log_rows, history_length):
        self.world = world
        self.user_ids = np.asarray(user_ids, np.int64)
        self.pop_rows = self.user_ids            # population row of user id u is u
        n, V = len(self.user_ids), len(world.catalogue.video_id)
        C = COLUMN_INDEX
        rows = np.asarray(log_rows, np.int64).reshape(-1, len(LOG_COLUMNS))
        pos = np.searchsorted(self.user_ids, rows[:, C["user_id"]])
        pos = np.clip(pos, 0, max(n - 1, 0))
        mine = (self.user_ids[pos] == rows[:, C["user_id"]]) if n else np.zeros(len(rows), bool)
        rows, pos = rows[mine], pos[mine]
        order = np.lexsort((rows[:, C["time_ms"]], pos))
        rows, pos = rows[order], pos[order]
        self.seen = np.zeros((n, V), bool)
        self.seen[pos, world.video_index(rows[:, C["video_id"]])] = True
        self.H = max(int(history_length), 1)
        self.hist = np.zeros((n, self.H, len(LOG_COLUMNS)), np.int64)   # newest last
        self.hist_count = np.zeros(n, np.int64)
        ends = np.searchsorted(pos, np.arange(n), side="right")
        from_end = ends[pos] - 1 - np.arange(len(pos))
        keep = from_end < self.H
        self.hist[pos[keep], self.H - 1 - from_end[keep]] = rows[keep]
        self.hist_count = np.minimum(np.bincount(pos, minlength=n), self.H)
        self.clock = np.full(n, world.first_day_ms - PAUSE_MS, np.int64)
        last = ends > 0
        if len(rows):
            self.clock[last] = np.maximum(self.clock[last], rows[ends[last] - 1, C["time_ms"]])
        self._utility = None

    def __len__(self):
        return len(self.user_ids)

    def recent_rows(self, rows):
        """The newest log rows of cohort ``rows``: list of [k, 19] arrays in time order."""
        return [self.hist[r, self.H - self.hist_count[r]:] for r in rows]

    def append(self, rows, page_rows, shown):
        """Add a page's impressions ([b, N, 19], ``shown`` a prefix mask) to the users' history."""
        n_new = shown.sum(1)
        both = np.concatenate([self.hist[rows], page_rows], 1)          # valid: [H - count, H + n_new)
        take = n_new[:, None] + np.arange(self.H)[None, :]
        self.hist[rows] = np.take_along_axis(both, take[:, :, None], 1)
        self.hist_count[rows] = np.minimum(self.hist_count[rows] + n_new, self.H)

    def true_utility(self):
        """``(W, A, static)`` per (user, video), float32 [n, V]: the expected watch seconds if not
        skipped ... as the behaviour model's closed form gives them (``behaviour.truth`` at p_skip
        0 and 1), and the skip logit without the streak. Expected watch at streak s is
        ``W + p_skip(s) · (A − W)``. Computed once per cohort (the oracle's table)."""
        if self._utility is None:
            w = self.world
            V = len(w.catalogue.video_id)
            W = np.empty((len(self), V), np.float32)
            A = np.empty((len(self), V), np.float32)
            static = np.empty((len(self), V), np.float32)
            videos = np.arange(V)
            for r in range(len(self)):
                rows = np.full(V, self.pop_rows[r])
                match = w.population.match(rows, videos)
                d = w.catalogue.duration_ms
                W[r] = behaviour.truth(w.beh, match, d, np.zeros(V))["expected_watch_s"]
                A[r] = behaviour.truth(w.beh, match, d, np.ones(V))["expected_watch_s"]
                static[r] = behaviour.skip_logit_static(w.beh, match, d)
            self._utility = W, A, static
        return self._utility


class Served:
    """What a cohort was served: per impression the log columns, the truth and where it happened."""

    def __init__(self):
        self.parts = []

    def add(self, cols, truth, extra):
        self.parts.append((cols, truth, extra))

    def columns(self):
        if not self.parts:
            empty = {c: np.zeros(0, np.int64) for c in LOG_COLUMNS}
            return empty, {c: np.zeros(0) for c in TRUTH_COLUMNS[3:]}, {}
        cols = {k: np.concatenate([p[0][k] for p in self.parts]) for k in self.parts[0][0]}
        truth = {k: np.concatenate([p[1][k] for p in self.parts]) for k in self.parts[0][1]}
        extra = {k: np.concatenate([p[2][k] for p in self.parts]) for k in self.parts[0][2]}
        return cols, truth, extra


class World:
    """The world of a ``tfrec-kuai simulate`` folder, driven by policies from the day after its log."""

    def __init__(self, folder, seed=0, leave=None):
        path = os.path.join(folder, PARAMS_FILE)
        if not os.path.isdir(folder):
            raise InputError(f"--world {folder}: no such folder (expected a `tfrec-kuai simulate` output)")
        try:
            with open(path) as f:
                info = json.load(f)
            self.params = SimParams.from_dict(info["params"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"--world {folder}: {PARAMS_FILE} missing or unreadable ({error}); "
                             "expected a `tfrec-kuai simulate` output folder") from None
        if leave is not None:
            self.params.leave = leave
        self.folder = folder
        self.seed = int(seed)
        self.population = Population(self.params)
        self.catalogue = self.population.catalogue
        if int(info.get("users", len(self.population.user_ids))) != len(self.population.user_ids) or \
                int(info.get("videos", self.population.base_videos)) != self.population.base_videos:
            raise InputError(f"--world {folder}: {PARAMS_FILE} does not rebuild the same users and videos")
        self.beh, self.leave = self.params.behaviour, self.params.leave
        self.num_users = len(self.population.user_ids)
        start = _dt.datetime.fromisoformat(self.params.start_date).replace(tzinfo=BEIJING)
        self.first_day_ms = int(start.timestamp() * 1000) + self.params.days * DAY_MS
        self._video_order = np.argsort(self.catalogue.video_id, kind="stable")
        # Visits per user-day: the user's offline sessions per day.
        p = self.params
        self.visit_rate = self.population.counts / (p.session_mean * p.days) * self.leave.visits_scale
        self._hour_cdf = np.cumsum(HOUR_WEIGHTS) / HOUR_WEIGHTS.sum()
        self._tab_cdf = np.cumsum(TAB_WEIGHTS)
        self._available = {}

    def available(self, day):
        """``[V]`` bool: the videos there on world ``day`` (the base catalogue and the uploads of
        days up to ``day``); one array per day, asked for on every page."""
        if day not in self._available:
            self._available[day] = self.population.upload_day <= day
        return self._available[day]

    def write_video_table(self, path, day):
        """The video side table as it stands on world ``day`` (with its uploads) at ``path``."""
        return self.catalogue.write_table(path, np.flatnonzero(self.available(day)))

    def video_index(self, video_ids):
        """Catalogue index of log video ids (InputError for an id the catalogue lacks)."""
        ids = np.asarray(video_ids, np.int64)
        sorted_ids = self.catalogue.video_id[self._video_order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        if len(ids) and not np.all(sorted_ids[pos] == ids):
            bad = ids[sorted_ids[pos] != ids][:3].tolist()
            raise InputError(f"video ids not in the world's catalogue: {bad}")
        return self._video_order[pos]

    def cohort(self, user_ids, log_rows, history_length=1):
        return Cohort(self, np.sort(np.asarray(user_ids, np.int64)), log_rows, history_length)

    # -- the day's visits -----------------------------------------------------------------------
    def visits(self, user_ids, day):
        """``(count [n], nominal start ms [n, max], tab [n, max])`` of the users' visits on
        ``day`` (0 = the first day after the log): the k-th column is the k-th earliest start."""
        user_ids = np.asarray(user_ids, np.int64)
        count = crn.Stream(self.seed, VISITS, user_ids, day).poisson(self.visit_rate[user_ids])
        most = int(count.max()) if len(count) else 0
        j = np.arange(most)[None, :]
        s = crn.Stream(self.seed, VISIT_TIME, user_ids[:, None], day, j)
        u = s.random((3, s.origin.size)).reshape(3, len(user_ids), most)
        hour = np.minimum(np.searchsorted(self._hour_cdf, u[0], side="right"), 23)
        nominal = self.first_day_ms + day * DAY_MS + hour * 3_600_000 + np.floor(u[1] * 3_600_000).astype(np.int64)
        nominal = np.where(j < count[:, None], nominal, np.iinfo(np.int64).max)
        order = np.argsort(nominal, 1, kind="stable")
        tab = TAB_VALUES[np.minimum(np.searchsorted(self._tab_cdf, u[2], side="right"), len(TAB_VALUES) - 1)]
        return count, np.take_along_axis(nominal, order, 1), np.take_along_axis(tab, order, 1)

    # -- one impression ---------------------------------------------------------------------------
    def react(self, pop_rows, user_ids, videos, streak, videos_in_visit, keys):
        """The users' reactions to ``videos`` shown now, given the streak before them.

        ``keys``: (day, visit, position) of the impressions. Returns ``(outcome, truth, skipped,
        leave, swipe_ms, p_leave)``; ``outcome`` as ``behaviour.draw_outcomes`` gives it."""
        stream = crn.Stream(self.seed, REACTION, user_ids, *keys)
        cat = self.catalogue
        duration = cat.duration_ms[videos]
        match = self.population.match(pop_rows, videos)
        p_skip = behaviour.skip_probability(self.beh, behaviour.skip_logit_static(self.beh, match, duration), streak)
        skipped = stream.random(len(stream)) < p_skip
        engage = self.population.author_affinity(pop_rows, videos)
        outcome = behaviour.draw_outcomes(self.beh, stream, match, duration, skipped, engage)
        truth = behaviour.truth(self.beh, match, duration, p_skip, engage)
        truth["match"] = match
        play = outcome["play_time_ms"]
        long_view = compute_labels(play, duration)["long"]
        new_streak = np.where(skipped, streak + 1, 0)
        p_leave = leave_probability(self.leave, new_streak, videos_in_visit, long_view)
        leave = stream.random(len(stream)) < p_leave
        swipe = stream.integers(1000, 4000, len(stream))
        return outcome, truth, skipped, leave, swipe, p_leave

    # -- driving a cohort ---------------------------------------------------------------------------
    def serve(self, cohort, policy, days, page_size=10, on_day=None, first_day=0):
        """Drive ``cohort`` through ``days`` days with ``policy``; returns :class:`Served`.

        ``policy.recommend(page)`` returns ``(videos [b, size] catalogue indices, is_rand [b, size]
        or None)``. ``on_day(day, users)`` is called after each day (progress). ``first_day``: the
        first day driven (0 = the first day after the log); the daily loop serves one day at a
        time, each with its own day's draws."""
        served = Served()
        n = len(cohort)
        for day in range(first_day, first_day + days):
            count, nominal, tab = self.visits(cohort.user_ids, day)
            for visit in range(nominal.shape[1]):
                rows = np.flatnonzero(count > visit)
                start = np.maximum(nominal[rows, visit], cohort.clock[rows] + PAUSE_MS)
                self._visit(cohort, policy, rows, start, tab[rows, visit], day, visit, page_size, served)
            if on_day is not None:
                on_day(day, n)
        return served

    def _visit(self, cohort, policy, rows, start, tab, day, visit, page_size, served):
        t = start.astype(np.int64).copy()
        streak = np.zeros(len(rows), np.int64)
        seen_count = np.zeros(len(rows), np.int64)
        in_visit = np.ones(len(rows), bool)
        position = 0
        max_videos = int(self.leave.max_videos)
        while in_visit.any() and position < max_videos:
            act = np.flatnonzero(in_visit)
            page = Page(cohort, rows[act], cohort.user_ids[rows[act]], t[act].copy(), tab[act], streak[act].copy(),
                        day, visit, position, page_size)
            videos, is_rand = policy.recommend(page)
            videos = np.asarray(videos, np.int64)
            if videos.shape != (len(act), page_size):
                raise ValueError(f"policy {policy.name!r} returned shape {videos.shape}, "
                                 f"expected {(len(act), page_size)}")
            is_rand = np.zeros(videos.shape, bool) if is_rand is None else np.asarray(is_rand, bool)
            there = self.available(day)[videos]
            if not there.all():
                raise ValueError(f"policy {policy.name!r} served videos not uploaded by day {day}: "
                                 f"{self.catalogue.video_id[videos[~there]][:3].tolist()}")
            page_rows = np.zeros((len(act), page_size, len(LOG_COLUMNS)), np.int64)
            shown = np.zeros((len(act), page_size), bool)
            alive = np.ones(len(act), bool)
            for i in range(min(page_size, max_videos - position)):
                s = np.flatnonzero(alive)
                if not len(s):
                    break
                r = rows[act[s]]
                v = videos[s, i]
                seen_count[act[s]] += 1
                outcome, truth, skipped, leave, swipe, _ = self.react(
                    cohort.pop_rows[r], cohort.user_ids[r], v, streak[act[s]], seen_count[act[s]],
                    (day, visit, position + i))
                repeat = cohort.seen[r, v]
                cohort.seen[r, v] = True
                cols = log_columns(self.population, cohort.pop_rows[r], v, t[act[s]], outcome, is_rand[s, i],
                                   tab[act[s]])
                served.add(cols, truth, {"cohort_row": r, "repeat": repeat, "video": v,
                                         "day": np.full(len(s), day), "visit": np.full(len(s), visit),
                                         "position": np.full(len(s), position + i)})
                page_rows[s, i] = np.stack([cols[c] for c in LOG_COLUMNS], 1)
                shown[s, i] = True
                streak[act[s]] = np.where(skipped, streak[act[s]] + 1, 0)
                t[act[s]] += outcome["play_time_ms"] + swipe
                cohort.clock[r] = t[act[s]]
                alive[s[leave]] = False
            in_visit[act[~alive]] = False
            cohort.append(rows[act], page_rows, shown)
            position += page_size

    # -- assignment ---------------------------------------------------------------------------------
    def sample_users(self, count):
        """``count`` distinct user ids of the world, drawn with the seed (sorted)."""
        if count > self.num_users:
            raise InputError(f"--users {count}: the world has only {self.num_users} users")
        rng = np.random.default_rng([self.seed, 9])
        return np.sort(rng.choice(self.num_users, size=count, replace=False)).astype(np.int64)

    def hash_split(self, user_ids, arms):
        """Arm index of each user by a hash of (seed, user id), as a real A/B split."""
        return (crn.key_hash(self.seed, ASSIGN, np.asarray(user_ids, np.int64)) % np.uint64(arms)).astype(np.int64)
