"""The ranking score re-blended by a model arm (``savedmodel:DIR?watch=..&skip=..&hate=..&engage=..``):
the query is checked when the arm is parsed, the default blend is the exported score, an arm
with ``?`` alone serves what the export serves, a single-objective blend orders by that objective,
and the served path re-blends as the in-process one does."""
import os

import numpy as np
import pytest

from tfrec_kuai import cli
from tfrec_kuai.errors import InputError
from tfrec_kuai.online.abtest import run_abtest
from tfrec_kuai.online.policies import Blend, SavedModelPolicy, make_policy, split_blend
from tfrec_kuai.online.worldlog import read_world_log
from tfrec_kuai.sim.world import World

WATCH_ONLY = "?skip=0&hate=0&engage=0"


def test_the_query_names_the_blend():
    assert split_blend("/exports/kuai") == ("/exports/kuai", None)
    assert split_blend("/exports/kuai?") == ("/exports/kuai", Blend())
    assert split_blend("kuai?skip=2.5&engage=0") == ("kuai", Blend(skip=2.5, engage=0.0))
    assert Blend().text() == "watch=1&skip=1&hate=2&engage=1"


@pytest.mark.parametrize("query", ["x=1", "skip=-1", "skip=a", "skip=1&skip=2", "skip=inf", "skip"])
def test_a_malformed_blend_is_refused(query):
    with pytest.raises(InputError, match="expected \\?engage=X&hate=X&skip=X&watch=X"):
        split_blend(f"/exports/kuai?{query}")


def test_a_malformed_blend_is_one_line_at_parse_time(capsys, tiny_log_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["abtest", "--world", tiny_log_dir, "--output", str(tmp_path / "o"),
                  "--arm", "a=random", "--arm", "b=savedmodel:/nowhere?skip=x"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "skip='x'" in err, err
    assert not (tmp_path / "o").exists()


def test_the_blend_scores_pad_ids_last():
    out = {name: np.full((1, 3), 0.1) for name in Blend.OUTPUTS}
    out["watch_s"] = np.array([[5.0, 9.0, 7.0]])
    out["video_id"] = np.array([[4, -1, 6]])
    score = Blend().score(out)
    assert np.isneginf(score[0, 1]) and score[0, 2] > score[0, 0]


def _page_inputs(policy, world, log):
    """The inputs of the first page the logging policy serves 20 users (a real request)."""
    pages = []

    class Recording(type(make_policy("logging", world, log))):
        def recommend(self, page):
            pages.append(policy.inputs(page))
            return super().recommend(page)

    cohort = world.cohort(np.arange(min(20, world.num_users)), log, policy.history_length)
    world.serve(cohort, Recording("logging", world), days=1)
    return pages[0]


@pytest.mark.slow
def test_the_default_blend_is_the_exported_score(kuai_exports, tiny_log_dir):
    """``Blend()`` on the model's predictions gives the ``score`` output of ``recommend``: the
    re-ranking formula and the exported one are the same function."""
    world, log = World(tiny_log_dir, seed=2), read_world_log(tiny_log_dir)
    policy = SavedModelPolicy("m", world, kuai_exports["fused"] + "?")
    inputs = _page_inputs(policy, world, log)
    import tensorflow as tf

    out = {k: v.numpy() for k, v in policy.signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    valid = out["video_id"] >= 0
    assert valid.sum() > 20
    np.testing.assert_allclose(Blend().score(out)[valid], out["score"][valid], rtol=2e-5, atol=1e-6)


@pytest.mark.slow
def test_blended_arms_serve_in_process_and_over_grpc(kuai_exports, tiny_log_dir, tmp_path):
    """``?`` alone serves exactly the export's feed; ``?skip=0&hate=0&engage=0`` orders every page by
    the model's E[watch] and changes the feed; the served arm re-blends as the in-process one."""
    export = os.path.join(kuai_exports["base"], "kuai")
    arms = [("plain", f"savedmodel:{export}"), ("default", f"savedmodel:{export}?"),
            ("watch", f"savedmodel:{export}{WATCH_ONLY}"), ("watch_grpc", f"served:{export}{WATCH_ONLY}")]
    out = run_abtest(tiny_log_dir, arms, users=8, days=1, seed=3, output=str(tmp_path), paired=True,
                     progress=False, replicates=50)
    metrics = {name: {k: v for k, v in m.items() if k != "policy"} for name, m in out["arms"].items()}
    assert metrics["plain"] == metrics["default"] and metrics["plain"]["impressions"] > 0
    assert metrics["watch"] == metrics["watch_grpc"] and metrics["watch_grpc"]["failed_requests"] == 0
    # Model arms leave out every video the user has seen, as the baselines do (recommend_excluding).
    assert all(m["repeat_rate"] == 0.0 for m in metrics.values())
    logs = [(tmp_path / "arms" / name / "log_standard_abtest.csv").read_text() for name in ("plain", "watch")]
    assert logs[0] != logs[1], "ordering by E[watch] alone serves another feed than the blend"


def test_seen_ids_lists_each_users_seen_videos_padded():
    from tfrec_kuai.online.policies import seen_ids

    class Catalogue:
        video_id = np.array([10, 11, 12, 13])

    class FakeWorldIds:          # only the catalogue's ids are read
        catalogue = Catalogue()

    seen = np.array([[True, False, True, False], [False, False, False, False], [True, True, True, True]])
    np.testing.assert_array_equal(seen_ids(FakeWorldIds(), seen),
                                  [[10, 12, -1, -1], [-1, -1, -1, -1], [10, 11, 12, 13]])
