"""A KuaiRand-format interaction-log simulator whose truth is known.

No interaction log can be downloaded here, so the project learns from a simulated one that
behaves like Kuaishou's feed (see ``tfrec_kuai/sim/behaviour.py`` for the behaviour model and
docs/data.md for the parameters). What it writes into the output folder:

* ``log_standard_sim.csv`` / ``log_random_sim.csv``: KuaiRand's exact 19 columns (docs/design.md §3),
  the second one the ``is_rand=1`` random exposures, as KuaiRand ships them;
* ``video_features_basic_sim.csv`` and ``user_features_sim.csv``: the side tables (real
  KuaiRand-Pure rows by default);
* ``ground_truth.csv``: per impression, keyed by ``user_id, video_id, time_ms``, the true skip /
  depth / engagement probabilities and the expected watch time, for the oracle;
* ``params.json``: every parameter, the seed and the row counts.

The log is produced a chunk of users at a time and appended to the files, so memory stays flat
from 1 k to 10 M impressions; the same seed gives byte-identical files.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from tfrec_kuai.schema import LOG_COLUMNS, LONG_MS, VALID_MS, local_calendar
from tfrec_kuai.sim import behaviour
from tfrec_kuai.sim.catalogue import (NEW_AUTHOR_SHARE, concatenate, draw_like, generate_catalogue,
                                      load_pure_catalogue, user_table)
from tfrec_kuai.sim.leave import LeaveParams

TRUTH_COLUMNS = ("user_id", "video_id", "time_ms", "p_skip", "p_valid", "p_long", "p_complete", "p_like",
                 "p_follow", "p_comment", "p_forward", "p_hate", "expected_watch_s", "match")
STANDARD_LOG = "log_standard_sim.csv"
RANDOM_LOG = "log_random_sim.csv"
VIDEO_TABLE = "video_features_basic_sim.csv"
USER_TABLE = "user_features_sim.csv"
TRUTH_FILE = "ground_truth.csv"
PARAMS_FILE = "params.json"
BEIJING = _dt.timezone(_dt.timedelta(hours=8))  # KuaiRand's dates and hours are Beijing time
# Diurnal shape of session starts (hour 0..23), evening peak as in short-video apps.
HOUR_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 4, 5, 5, 5, 6, 7, 6, 5, 5, 6, 7, 8, 9, 10, 10, 8, 5], np.float64)
TAB_VALUES = np.array([0, 1, 2, 3, 4, 5, 6, 7])
TAB_WEIGHTS = np.array([0.30, 0.35, 0.10, 0.05, 0.10, 0.03, 0.03, 0.04])


@dataclass
class SimParams:
    impressions: int = 100_000
    seed: int = 0
    users: int = 0                   # 0: impressions / impressions_per_user
    impressions_per_user: float = 150.0
    activity_sigma: float = 0.8      # log-normal spread of user activity (heavy users)
    catalogue: str = "kuairand_pure"  # or "generated"
    generated_videos: int = 8000
    generated_topics: int = 40
    # Catalogue size: 0 keeps the catalogue as loaded or generated; more grows it with videos drawn
    # like it (catalogue.draw_like: its tags and durations, authors with several videos), uploaded
    # before the log starts — KuaiRand-1K's millions of videos on the Pure catalogue's shape.
    videos: int = 0
    start_date: str = "2022-04-08"
    days: int = 14
    random_share: float = 0.10       # is_rand=1 impressions: uniformly random videos
    # Latent interests
    like_topics: tuple = (2, 4)      # inclusive range of liked topics per user
    dislike_topics: tuple = (2, 4)
    like_strength: tuple = (1.0, 2.0)
    dislike_strength: tuple = (1.2, 2.2)
    background_sd: float = 0.3
    leniency_sd: float = 0.3
    # Affinity for particular authors (low-rank user x author factors), a second driver of likes,
    # follows, comments, forwards and profile visits that skips and watch depth do not follow.
    # 0 = off (the default world: engagement follows the topic match alone).
    author_affinity_sd: float = 0.0
    author_factors: int = 4
    # Logging policy: softmax over topics of strength * (affinity + noise) + log topic share
    policy_strength: float = 0.5
    policy_noise: float = 1.0
    popularity_strength: float = 1.0
    session_mean: float = 12.0       # mean impressions per session
    chunk_impressions: int = 200_000
    behaviour: behaviour.BehaviourParams = field(default_factory=behaviour.BehaviourParams)
    # When a visit ends: used by the world as an environment (tfrec_kuai.sim.world), not by the
    # offline log, whose sessions have a fixed mean length (session_mean).
    leave: LeaveParams = field(default_factory=LeaveParams)
    # Uploads (the world only): new videos that appear at the start of each world day, drawn like
    # the catalogue's (catalogue.draw_like), for upload_days days; the offline log never shows them.
    uploads_per_day: int = 0
    upload_days: int = 30

    def to_dict(self):
        out = asdict(self)
        out["behaviour"] = self.behaviour.to_dict()
        out["leave"] = self.leave.to_dict()
        return out

    @classmethod
    def from_dict(cls, values):
        """The parameters as ``params.json`` records them (``to_dict``); keys it lacks keep their
        defaults, so a folder written before a parameter existed still loads."""
        values = dict(values)
        nested = {"behaviour": behaviour.BehaviourParams, "leave": LeaveParams}
        for key, kind in nested.items():
            values[key] = kind(**values[key]) if key in values else kind()
        for key, default in asdict(cls()).items():
            if isinstance(default, tuple) and key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def grow_catalogue(rng, cat, videos, start_date, upload_span_days=365, videos_per_new_author=4.0):
    """``cat`` and ``videos - len(cat)`` videos drawn like it, uploaded over the year before
    ``start_date``. A drawn video's author is a base one or (``NEW_AUTHOR_SHARE``) one of a pool of
    new authors sized for ``videos_per_new_author`` each: a chosen shape (KuaiRand-Pure, a sample
    of a larger catalogue, has 1.2 videos per author), so that a big catalogue has authors with
    several videos, as the real one does."""
    count = videos - len(cat.video_id)
    dates = start_date.toordinal() - rng.integers(1, upload_span_days + 1, count)
    new_authors = int(round(count * NEW_AUTHOR_SHARE / videos_per_new_author))
    return concatenate(cat, draw_like(rng, cat, count, int(cat.video_id.max()) + 1, dates, new_authors=new_authors))


def _allocate(rng, total, weights):
    """Integer impressions per user summing exactly to ``total``, at least 1 each."""
    n = len(weights)
    share = weights / weights.sum() * (total - n)
    counts = np.floor(share).astype(np.int64)
    remainder = total - n - counts.sum()
    counts[np.argsort(-(share - counts), kind="stable")[:remainder]] += 1
    return counts + 1


class Population:
    """Catalogue, users and policy tables: everything that is fixed before the log starts.

    The offline log (:func:`simulate`) and the world as an environment (``tfrec_kuai.sim.world``)
    both stand on it, so the same parameters and seed give the same videos and users in both."""

    def __init__(self, params):
        p = params
        rng = np.random.default_rng([p.seed, 0])
        self.catalogue = (load_pure_catalogue(rng) if p.catalogue == "kuairand_pure"
                          else generate_catalogue(rng, p.generated_videos, p.generated_topics))
        if p.videos > len(self.catalogue.video_id):
            self.catalogue = grow_catalogue(np.random.default_rng([p.seed, 4]), self.catalogue, p.videos,
                                            _dt.date.fromisoformat(p.start_date))
        cat = self.catalogue
        num_users = p.users or max(2, int(round(p.impressions / p.impressions_per_user)))
        num_users = min(num_users, p.impressions)
        self.user_header, self.user_rows = user_table(rng, num_users, use_pure=p.catalogue == "kuairand_pure")
        self.user_ids = np.arange(num_users, dtype=np.int64)
        self.counts = _allocate(rng, p.impressions, np.exp(rng.normal(0.0, p.activity_sigma, num_users)))
        K = cat.num_topics
        primary = cat.tags[:, 0]
        topic_share = np.bincount(primary, minlength=K) + 1.0
        self.log_topic_share = np.log(topic_share / topic_share.sum())
        # Latent interests: a few liked and disliked topics (more often popular ones) on a background.
        aff = rng.normal(0.0, p.background_sd, (num_users, K))
        pick = np.sqrt(topic_share) / np.sqrt(topic_share).sum()
        for u in range(num_users):
            n_like = rng.integers(p.like_topics[0], p.like_topics[1] + 1)
            n_dis = rng.integers(p.dislike_topics[0], p.dislike_topics[1] + 1)
            chosen = rng.choice(K, size=min(K, n_like + n_dis), replace=False, p=pick)
            aff[u, chosen[:n_like]] = rng.uniform(*p.like_strength, len(chosen[:n_like]))
            aff[u, chosen[n_like:]] = -rng.uniform(*p.dislike_strength, len(chosen[n_like:]))
        self.affinity = aff
        self.leniency = rng.normal(0.0, p.leniency_sd, num_users)
        # What the logging policy believes: the truth, blurred.
        self.policy_logits = p.policy_strength * (aff + rng.normal(0.0, p.policy_noise, aff.shape)) + \
            self.log_topic_share
        # Videos grouped by primary topic, popularity-weighted cumulative shares per topic segment.
        order = np.argsort(primary, kind="stable")
        weight = np.exp(p.popularity_strength * cat.quality + rng.normal(0.0, 0.5, len(primary)))[order]
        seg_start = np.searchsorted(primary[order], np.arange(K))
        seg_end = np.searchsorted(primary[order], np.arange(K), side="right")
        cum = np.zeros(len(order))
        for t in range(K):
            w = weight[seg_start[t]:seg_end[t]]
            cum[seg_start[t]:seg_end[t]] = t + np.cumsum(w) / w.sum()
        self.video_order, self.video_cum = order, cum
        # Uploads come after every base draw, from a stream of their own: the base world and its
        # offline log are the same with or without them.
        self.base_videos = len(cat.video_id)
        self.upload_day = np.full(self.base_videos, -1, np.int64)   # -1: there before the world starts
        if p.uploads_per_day > 0:
            day = np.repeat(np.arange(p.upload_days, dtype=np.int64), p.uploads_per_day)
            first = _dt.date.fromisoformat(p.start_date) + _dt.timedelta(days=p.days)
            uploads = draw_like(np.random.default_rng([p.seed, 3]), cat, len(day), int(cat.video_id.max()) + 1,
                                first.toordinal() + day)
            self.catalogue = cat = concatenate(cat, uploads)
            self.upload_day = np.concatenate([self.upload_day, day])
        tag_valid = cat.tags >= 0
        self.tag_count = np.maximum(tag_valid.sum(1), 1)
        self.tag_valid = tag_valid
        # Drawn from a stream of its own, so that with the default 0 every other draw, and so the
        # whole log, is the same as before the knob existed.
        self.author_affinity_sd = float(p.author_affinity_sd)
        if self.author_affinity_sd > 0:
            author_rng = np.random.default_rng([p.seed, 2])
            _, self.author_of_video = np.unique(cat.author_id, return_inverse=True)
            k = max(1, int(p.author_factors))
            self.user_author_factors = author_rng.normal(0.0, 1.0, (num_users, k)) / np.sqrt(k)
            self.author_factors = author_rng.normal(0.0, 1.0, (int(self.author_of_video.max()) + 1, k))

    def match(self, user_rows, videos):
        """Latent match of (user row, video index) pairs: mean topic affinity + quality + leniency."""
        cat = self.catalogue
        tags = cat.tags[videos]
        aff = self.affinity[user_rows[:, None], np.maximum(tags, 0)] * self.tag_valid[videos]
        return aff.sum(1) / self.tag_count[videos] + cat.quality[videos] + self.leniency[user_rows]

    def author_affinity(self, user_rows, videos):
        """The engagement shift of (user row, video index) pairs: ~N(0, author_affinity_sd²), 0 when off."""
        if self.author_affinity_sd <= 0:
            return np.zeros(len(user_rows))
        authors = self.author_of_video[videos]
        return self.author_affinity_sd * np.einsum("nk,nk->n", self.user_author_factors[user_rows],
                                                   self.author_factors[authors])

    def pick_videos(self, rng, user_rows, is_rand):
        """Videos shown: policy topic, then a popularity-weighted video of it; random share uniform."""
        n = len(user_rows)
        logits = self.policy_logits[user_rows]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        cum = np.cumsum(probs, 1)
        topic = (cum < (rng.random(n) * cum[:, -1])[:, None]).sum(1)
        topic = np.minimum(topic, cum.shape[1] - 1)
        pos = np.searchsorted(self.video_cum, topic + rng.random(n), side="right")
        pos = np.clip(pos, 0, len(self.video_cum) - 1)
        videos = self.video_order[pos]
        uniform = rng.integers(0, len(self.video_order), n)
        return np.where(is_rand, uniform, videos)


def _simulate_chunk(world, params, chunk_index, user_rows):
    """All impressions of a chunk of users: (log columns dict, truth dict), ordered by user, time."""
    p, beh = params, params.behaviour
    rng = np.random.default_rng([p.seed, 1, chunk_index])
    counts = world.counts[user_rows]
    order = np.argsort(-counts, kind="stable")       # longest first: active users are a prefix
    user_rows, counts = user_rows[order], counts[order]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n = int(counts.sum())
    row_of = np.repeat(user_rows, counts)
    pos_of = np.arange(n) - np.repeat(offsets, counts)
    is_rand = rng.random(n) < p.random_share
    videos = world.pick_videos(rng, row_of, is_rand)
    cat = world.catalogue
    duration = cat.duration_ms[videos]
    match = world.match(row_of, videos)
    static = behaviour.skip_logit_static(beh, match, duration)
    session_start = (rng.random(n) < 1.0 / p.session_mean) | (pos_of == 0)
    # The one sequential part: consecutive skips within a session raise the next skip's chance.
    draws = rng.random(n)
    p_skip = np.empty(n)
    skipped = np.empty(n, dtype=bool)
    streak = np.zeros(len(user_rows), dtype=np.int64)
    # counts are descending: the users with count > q are the first active[q]
    active = len(counts) - np.searchsorted(counts[::-1], np.arange(int(counts.max())), side="right")
    for q in range(int(counts.max())):
        k = int(active[q])
        idx = offsets[:k] + q
        st = np.where(session_start[idx], 0, streak[:k])
        ps = behaviour.skip_probability(beh, static[idx], st)
        s = draws[idx] < ps
        p_skip[idx] = ps
        skipped[idx] = s
        streak[:k] = np.where(s, st + 1, 0)
    engage = world.author_affinity(row_of, videos)
    outcome = behaviour.draw_outcomes(beh, rng, match, duration, skipped, engage)
    time_ms = _timestamps(rng, p, row_of, counts, session_start, outcome["play_time_ms"])
    truth = behaviour.truth(beh, match, duration, p_skip, engage)
    tab = rng.choice(TAB_VALUES, size=n, p=TAB_WEIGHTS)
    cols = log_columns(world, row_of, videos, time_ms, outcome, is_rand, tab)
    truth["match"] = match
    final = np.lexsort((cols["time_ms"], cols["user_id"]))
    return {k: v[final] for k, v in cols.items()}, {k: np.asarray(v)[final] for k, v in truth.items()}


def log_columns(world, row_of, videos, time_ms, outcome, is_rand, tab):
    """The 19 KuaiRand columns (int64 arrays) of impressions: (user row, video index) pairs shown
    at ``time_ms`` with the reactions ``outcome`` of :func:`behaviour.draw_outcomes`. One mapping
    from a reaction to a log row, for the offline log and for the world's served impressions."""
    cat = world.catalogue
    duration = cat.duration_ms[videos]
    play = outcome["play_time_ms"]
    date, hourmin = local_calendar(time_ms)
    complete = play >= duration
    cols = {
        "user_id": world.user_ids[row_of], "video_id": cat.video_id[videos], "date": date, "hourmin": hourmin,
        "time_ms": time_ms,
        "is_click": np.where(duration <= VALID_MS, complete, play > VALID_MS),
        "is_like": outcome["is_like"], "is_follow": outcome["is_follow"], "is_comment": outcome["is_comment"],
        "is_forward": outcome["is_forward"], "is_hate": outcome["is_hate"],
        "long_view": np.where(duration <= LONG_MS, complete, play >= LONG_MS),
        "play_time_ms": play, "duration_ms": duration,
        "profile_stay_time": outcome["profile_stay_time"], "comment_stay_time": outcome["comment_stay_time"],
        "is_profile_enter": outcome["is_profile_enter"], "is_rand": is_rand, "tab": tab,
    }
    return {k: np.asarray(v).astype(np.int64) for k, v in cols.items()}


def _timestamps(rng, p, row_of, counts, session_start, play):
    """Epoch ms of every impression: sessions at diurnal times over ``days``, never overlapping,
    impressions inside a session back to back (play time + a 1-4 s swipe)."""
    n = len(row_of)
    step = play + rng.integers(1000, 4000, n)
    cs = np.concatenate([[0], np.cumsum(step)[:-1]])
    sess_id = np.cumsum(session_start) - 1
    sess_first = np.flatnonzero(session_start)
    elapsed = cs - cs[sess_first][sess_id]
    n_sess = len(sess_first)
    sess_len = np.diff(np.concatenate([cs[sess_first], [cs[-1] + step[-1]]]))
    sess_user_rank = np.repeat(np.arange(len(counts)), counts)[sess_first]
    hour = rng.choice(24, size=n_sess, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    nominal = (rng.integers(0, p.days, n_sess) * 86_400_000 + hour * 3_600_000 +
               rng.integers(0, 3_600_000, n_sess)).astype(np.int64)
    by_user = np.lexsort((nominal, sess_user_rank))   # sessions are already grouped by user
    # k-th session of a user (impression order) takes the user's k-th earliest start; a start so
    # late that the session would run past the last day is pulled back to end inside it.
    nominal = np.minimum(nominal[by_user], p.days * 86_400_000 - 1 - sess_len - 60_000)
    nominal = np.maximum(nominal, 0)
    # Push a session later when the previous one of the user has not ended (+1 min pause):
    # start_k = C_k + max_{j<=k}(nominal_j - C_j), C = per-user prefix of (length + pause).
    total = sess_len + 60_000
    c_all = np.concatenate([[0], np.cumsum(total)[:-1]])
    first_of_user = np.concatenate([[True], sess_user_rank[1:] != sess_user_rank[:-1]])
    user_base = c_all[np.flatnonzero(first_of_user)][np.cumsum(first_of_user) - 1]
    c = c_all - user_base
    big = np.int64(1) << 41
    running = np.maximum.accumulate(nominal - c + sess_user_rank * big) - sess_user_rank * big
    start = c + running
    # A user whose last session runs past the final day is shifted earlier (as far as the first
    # day allows), so the last date holds a full day of traffic for the date split.
    firsts = np.flatnonzero(first_of_user)
    last_end = np.maximum.reduceat(start + sess_len, firsts)
    overflow = np.maximum(0, last_end - (p.days * 86_400_000 - 1))
    start = start - np.minimum(overflow, start[firsts])[np.cumsum(first_of_user) - 1]
    start0 = int(_dt.datetime.fromisoformat(p.start_date).replace(tzinfo=BEIJING).timestamp() * 1000)
    return start0 + start[sess_id] + elapsed


def write_csv_rows(handle, array, fmt):
    np.savetxt(handle, array, fmt=fmt, delimiter=",")


def simulate(output_dir, params, progress=True):
    """Write the simulated log, side tables, ground truth and params into ``output_dir``."""
    from tqdm import tqdm

    os.makedirs(output_dir, exist_ok=True)
    world = Population(params)
    cat = world.catalogue
    cat.write_table(os.path.join(output_dir, VIDEO_TABLE), range(world.base_videos))  # uploads: in the world, later
    with open(os.path.join(output_dir, USER_TABLE), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(world.user_header)
        w.writerows(world.user_rows)
    num_users = len(world.user_ids)
    cum = np.cumsum(world.counts)
    bounds = [0]
    while bounds[-1] < num_users:
        target = (cum[bounds[-1] - 1] if bounds[-1] else 0) + params.chunk_impressions
        bounds.append(max(bounds[-1] + 1, int(np.searchsorted(cum, target, side="right"))))
        bounds[-1] = min(bounds[-1], num_users)
    rows = {"standard": 0, "random": 0}
    rates = np.zeros(4)
    header = ",".join(LOG_COLUMNS) + "\n"
    truth_fmt = ["%d", "%d", "%d"] + ["%.6g"] * (len(TRUTH_COLUMNS) - 3)
    paths = [os.path.join(output_dir, name) for name in (STANDARD_LOG, RANDOM_LOG, TRUTH_FILE)]
    with open(paths[0], "w") as std, open(paths[1], "w") as rnd, open(paths[2], "w") as gt, \
            tqdm(total=params.impressions, unit="imp", desc="simulate", disable=not progress) as bar:
        std.write(header)
        rnd.write(header)
        gt.write(",".join(TRUTH_COLUMNS) + "\n")
        for chunk_index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            cols, truth = _simulate_chunk(world, params, chunk_index, np.arange(lo, hi))
            table = np.stack([cols[c] for c in LOG_COLUMNS], 1)
            rand = cols["is_rand"] == 1
            write_csv_rows(std, table[~rand], "%d")
            write_csv_rows(rnd, table[rand], "%d")
            gt_table = np.column_stack([cols["user_id"], cols["video_id"], cols["time_ms"]] +
                                       [truth[c] for c in TRUTH_COLUMNS[3:]])
            write_csv_rows(gt, gt_table, truth_fmt)
            rows["standard"] += int((~rand).sum())
            rows["random"] += int(rand.sum())
            skip = cols["play_time_ms"] < np.minimum(3000, cols["duration_ms"])
            rates += [skip.sum(), cols["is_click"].sum(), cols["long_view"].sum(), cols["is_like"].sum()]
            bar.update(len(table))
            del cols, truth, table, gt_table  # keep one chunk alive at a time: memory stays flat
    summary = dict(zip(("skip_rate", "valid_rate", "long_rate", "like_rate"), (rates / params.impressions).round(4)))
    info = {
        "params": params.to_dict(),
        "rows": rows,
        "users": num_users,
        "videos": world.base_videos,
        "uploads": len(cat.video_id) - world.base_videos,
        "topics": cat.num_topics,
        "label_rates": {k: float(v) for k, v in summary.items()},
        "files": {"logs": [STANDARD_LOG, RANDOM_LOG], "video_features": VIDEO_TABLE, "user_features": USER_TABLE,
                  "ground_truth": TRUTH_FILE},
        "ground_truth_columns": list(TRUTH_COLUMNS),
    }
    with open(os.path.join(output_dir, PARAMS_FILE), "w") as f:
        json.dump(info, f, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return info
