"""Uploads: new videos that appear in the world day by day (``--uploads_per_day``), the cold start
the daily loop must handle. The offline log does not change with them; every policy serves only
what is there that day; the loop's corpus grows with each day's uploads."""
import csv
import filecmp
import json
import os

import numpy as np
import pytest

from tfrec_kuai import cli
from tfrec_kuai.online.policies import OraclePolicy, PopularPolicy, RandomPolicy, LoggingPolicy
from tfrec_kuai.online.worldlog import read_world_log
from tfrec_kuai.sim.simulator import PARAMS_FILE, SimParams, simulate
from tfrec_kuai.sim.world import World

PER_DAY, DAYS = 40, 5


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The same small world simulated without and with uploads."""
    out = {}
    for uploads in (0, PER_DAY):
        folder = str(tmp_path_factory.mktemp(f"uploads{uploads}"))
        simulate(folder, SimParams(impressions=6000, users=60, days=3, seed=4, uploads_per_day=uploads,
                                   upload_days=DAYS), progress=False)
        out[uploads] = folder
    return out


def test_uploads_leave_the_offline_log_and_tables_as_they_were(worlds):
    plain, grown = worlds[0], worlds[PER_DAY]
    for name in sorted(os.listdir(plain)):
        if name != PARAMS_FILE:
            assert filecmp.cmp(os.path.join(plain, name), os.path.join(grown, name), shallow=False), name
    info = json.load(open(os.path.join(grown, PARAMS_FILE)))
    assert info["uploads"] == PER_DAY * DAYS and info["videos"] == json.load(open(os.path.join(plain, PARAMS_FILE)))["videos"]


def test_uploaded_videos_look_like_the_catalogue(worlds):
    world = World(worlds[PER_DAY], seed=1)
    pop, cat = world.population, world.catalogue
    base, new = np.arange(pop.base_videos), np.arange(pop.base_videos, len(cat.video_id))
    assert len(new) == PER_DAY * DAYS and np.all(pop.upload_day[new] == np.repeat(np.arange(DAYS), PER_DAY))
    assert set(cat.video_id[new]).isdisjoint(cat.video_id[base])
    assert set(cat.duration_ms[new]) <= set(cat.duration_ms[base])          # the base's durations
    assert {tuple(t) for t in cat.tags[new]} <= {tuple(t) for t in cat.tags[base]}
    existing = np.isin(cat.author_id[new], cat.author_id[base])
    assert 0.4 < existing.mean() < 0.95                                      # most by known authors, some new
    for day in range(DAYS):
        assert world.available(day).sum() == pop.base_videos + (day + 1) * PER_DAY


def test_the_video_table_of_a_day_holds_its_uploads(worlds, tmp_path):
    world = World(worlds[PER_DAY], seed=1)
    path = world.write_video_table(str(tmp_path / "table.csv"), 1)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ids = {int(r["video_id"]) for r in rows}
    assert ids == set(world.catalogue.video_id[world.available(1)].tolist())
    uploaded = [r for r in rows if int(r["video_id"]) >= world.catalogue.video_id[world.population.base_videos]]
    assert len(uploaded) == 2 * PER_DAY and {r["upload_dt"] for r in uploaded} == {"2022-04-11", "2022-04-12"}


def _served(world, log, policy):
    cohort = world.cohort(world.sample_users(40), log)
    _, _, extra = world.serve(cohort, policy, days=2, page_size=10).columns()
    return extra["video"], extra["day"]


@pytest.mark.parametrize("make", [lambda w: RandomPolicy("random", w), lambda w: OraclePolicy("oracle", w),
                                  lambda w: LoggingPolicy("logging", w),
                                  lambda w: PopularPolicy("popular", w, read_world_log(w.folder))],
                         ids=["random", "oracle", "logging", "popular"])
def test_policies_serve_only_what_is_there(worlds, make):
    world = World(worlds[PER_DAY], seed=1)
    policy = make(world)
    videos, days = _served(world, read_world_log(world.folder), policy)
    assert np.all(world.population.upload_day[videos] <= days)
    if not isinstance(policy, PopularPolicy):                 # popular ranks by the old log: never an upload
        assert (world.population.upload_day[videos] >= 0).any()


def test_a_policy_serving_a_video_not_uploaded_yet_is_an_error(worlds):
    world = World(worlds[PER_DAY], seed=1)

    class Future:
        name = "future"

        def recommend(self, page):
            return np.full((len(page.rows), page.size), len(world.catalogue.video_id) - 1), None

    cohort = world.cohort(world.sample_users(5), read_world_log(world.folder))
    with pytest.raises(ValueError, match="not uploaded by day 0"):
        world.serve(cohort, Future(), days=1)


@pytest.mark.parametrize("flag", ["--uploads_per_day", "--videos"])
def test_uploads_or_a_catalogue_size_with_a_world_folder_is_refused(worlds, tmp_path, capsys, flag):
    code = cli.main(["loop", "--output", str(tmp_path / "l"), "--world", worlds[0], "--days", "1", flag, "5"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and flag in err, err
    assert not (tmp_path / "l").exists()


@pytest.mark.slow
def test_the_loops_corpus_grows_with_each_days_uploads(worlds, tmp_path):
    """Day d's examples (whose export serves world day d) know the videos uploaded up to that day,
    and the day's traffic is served from them (the world refuses a video not there yet)."""
    from tests.fixtures_model import tiny_config

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config().to_dict()))
    out = tmp_path / "loop"
    assert cli.main(["loop", "--output", str(out), "--world", worlds[PER_DAY], "--days", "1", "--users", "40",
                     "--history_length", "10", "--config", str(config), "--no_progress"]) == 0
    world = World(worlds[PER_DAY], seed=0)
    for day in (0, 1):
        meta = json.load(open(out / "beam" / str(day) / "examples" / "metadata.json"))
        rows = meta["rows"]              # videos of the Pure table without a duration are left out, counted
        assert rows["corpus_videos"] + rows["corpus_videos_without_duration"] == world.available(day).sum(), day
    rows = np.concatenate([np.loadtxt(out / "days" / "1" / name, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
                           for name in ("log_standard_abtest.csv", "log_random_abtest.csv")
                           if os.path.getsize(out / "days" / "1" / name) > 200])
    uploaded = world.population.upload_day[world.video_index(rows[:, 1])]
    assert np.all(uploaded <= 0)                  # loop day 1 is world day 0
