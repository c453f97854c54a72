"""`simulate --videos N`: a catalogue of KuaiRand-1K shape grown from the Pure one, whose side
table is written from arrays (no per-video strings), with the default world unchanged."""
import csv
import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pytest

from tfrec_kuai.sim.catalogue import PURE_VIDEOS
from tfrec_kuai.sim.simulator import Population, SimParams, simulate
from tfrec_kuai.sim.world import World

GROWN = 30_000


def _table(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("grown"))
    info = simulate(out, SimParams(impressions=5000, seed=2, videos=GROWN), progress=False)
    return out, info


def test_the_side_table_has_every_video_once_and_the_pure_rows_verbatim(grown):
    out, info = grown
    header, rows = _table(os.path.join(out, "video_features_basic_sim.csv"))
    pure_header, pure_rows = _table(PURE_VIDEOS)
    assert header == pure_header and info["videos"] == GROWN == len(rows)
    assert rows[:len(pure_rows)] == pure_rows
    col = {name: i for i, name in enumerate(header)}
    ids = [int(r[col["video_id"]]) for r in rows]
    assert len(set(ids)) == GROWN
    drawn = rows[len(pure_rows):]
    start = dt.date.fromisoformat(SimParams().start_date)
    dates = {dt.date.fromisoformat(r[col["upload_dt"]]) for r in drawn}
    assert max(dates) < start and min(dates) >= start - dt.timedelta(days=365) and len(dates) > 300
    assert all(float(r[col["video_duration"]]) >= 1000 for r in drawn)


def test_drawn_videos_keep_the_pure_tag_and_duration_distributions(grown):
    out, _ = grown
    header, rows = _table(os.path.join(out, "video_features_basic_sim.csv"))
    col = {name: i for i, name in enumerate(header)}
    pure = rows[:7583]
    drawn = rows[7583:]

    def tag_share(part):
        tags = [t for r in part for t in r[col["tag"]].split(",") if t]
        values, counts = np.unique(tags, return_counts=True)
        return dict(zip(values, counts / counts.sum()))

    base, new = tag_share(pure), tag_share(drawn)
    assert set(new) <= set(base)
    top = sorted(base, key=base.get, reverse=True)[:5]
    for tag in top:
        assert abs(new[tag] - base[tag]) < 0.02, tag

    def median_duration(part):
        return np.median([float(r[col["video_duration"]]) for r in part if r[col["video_duration"]]])

    assert median_duration(drawn) == pytest.approx(median_duration(pure), rel=0.1)


def test_authors_of_drawn_videos_have_several_videos(grown):
    out, _ = grown
    header, rows = _table(os.path.join(out, "video_features_basic_sim.csv"))
    col = {name: i for i, name in enumerate(header)}
    authors = [int(r[col["author_id"]]) for r in rows]
    pure_authors = set(authors[:7583])
    new = [a for a in authors[7583:] if a not in pure_authors]
    per_new = np.unique(new, return_counts=True)[1]
    assert 0.2 < len(new) / (GROWN - 7583) < 0.4
    assert 3.5 < per_new.mean() < 6 and np.median(per_new) >= 3 and per_new.max() >= 10
    assert len(np.unique(authors[7583:])) < 0.5 * (GROWN - 7583)


def test_the_log_shows_grown_videos_and_the_world_rebuilds_them(grown):
    out, info = grown
    log = np.loadtxt(os.path.join(out, "log_standard_sim.csv"), delimiter=",", skiprows=1, dtype=np.int64)
    world = World(out, seed=1)
    assert world.population.base_videos == GROWN
    index = world.video_index(log[:, 1])
    assert (index >= 7583).mean() > 0.3       # the drawn videos are served like the Pure ones


def test_a_million_video_catalogue_keeps_one_string_row_per_pure_video():
    """The per-video memory is the catalogue's arrays; the string rows stay the Pure table's."""
    population = Population(SimParams(impressions=2000, seed=0, videos=1_000_000))
    cat = population.catalogue
    assert len(cat.video_id) == 1_000_000 and len(cat.base_rows) == 7583
    per_video = sum(getattr(cat, name).nbytes for name in
                    ("video_id", "author_id", "duration_ms", "tags", "quality", "row_source", "upload_ordinal"))
    assert per_video / 1_000_000 < 100
    rows = list(cat.table_rows(range(999_998, 1_000_000)))
    assert [int(r[0]) for r in rows] == cat.video_id[999_998:].tolist()


def test_simulate_refuses_a_negative_catalogue_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfrec_kuai.cli", "simulate", "--output", str(tmp_path / "x"),
                           "--videos", "-5"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--videos" in proc.stderr
