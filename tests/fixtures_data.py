"""Session-scoped data fixtures: a tiny simulated log and the examples folder built from it.

Other areas (model, serving) build on ``tiny_examples_dir`` instead of writing their own data:
it is the real pipeline (simulator -> Beam DirectRunner in-process -> TFRecords) at a size that
takes a few seconds, with the default history length 50, one eval day and both side tables.
``world300`` is a world for the online A/B tests, with enough users for a hash split.
"""
import os

import pytest

TINY_IMPRESSIONS = 3000
TINY_SEED = 11


@pytest.fixture(scope="session")
def tiny_log_dir(tmp_path_factory):
    """Folder with log_standard_sim.csv, log_random_sim.csv, side tables, ground_truth.csv, params.json."""
    from tfrec_kuai.sim.simulator import SimParams, simulate

    out = tmp_path_factory.mktemp("tiny_log")
    simulate(str(out), SimParams(impressions=TINY_IMPRESSIONS, seed=TINY_SEED, users=20, days=4), progress=False)
    return str(out)


@pytest.fixture(scope="session")
def world300(tmp_path_factory):
    """A simulate folder of 300 users and 30,000 impressions over 3 days, for the A/B tests (the
    tiny log's 20 users are too few for a hash split)."""
    from tfrec_kuai.sim.simulator import SimParams, simulate

    out = str(tmp_path_factory.mktemp("world300"))
    simulate(out, SimParams(impressions=30_000, users=300, days=3, seed=2), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_examples_dir(tiny_log_dir, tmp_path_factory):
    """The docs/design.md §6 folder (train/, eval/, vocab/, corpus/, dead_letter/, metadata.json)."""
    from beam_pipelines import build_examples

    out = tmp_path_factory.mktemp("tiny_examples")
    build_examples.run([
        "--input", os.path.join(tiny_log_dir, "log_*.csv"), "--output", str(out),
        "--video_features", os.path.join(tiny_log_dir, "video_features_basic_sim.csv"),
        "--user_features", os.path.join(tiny_log_dir, "user_features_sim.csv"),
        "--history_length", "50", "--eval_days", "1",
    ])
    return str(out)
