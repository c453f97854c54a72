"""The A/B test's profiles in metrics.json and its HTML page, rendered in headless Chromium.

The profiles (by day, by position in the visit, visit lengths) are checked against hand-counted
impressions and against the arm's own totals; the page against the metrics.json it was written
from; the render against a real browser (``tests/chromium.py``). The tests on the A/B run are
slow: it serves three arms, then Chromium starts twice per page check."""
import json
import os
import re

import numpy as np
import pytest

from tests.chromium import check_page
from tfrec_kuai import cli
from tfrec_kuai.online.metrics import POSITION_EDGES, Profile, bucket_labels

ARMS = (("random", "random"), ("popular", "popular"), ("oracle", "oracle"))
USERS, DAYS = 80, 2


@pytest.fixture(scope="module")
def abtest_dir(world300, tmp_path_factory):
    """``tfrec-kuai abtest --paired`` of random, popular and oracle over two days, run by its CLI."""
    out = str(tmp_path_factory.mktemp("abtest_page") / "out")
    argv = ["abtest", "--world", world300, "--output", out, "--users", str(USERS), "--days", str(DAYS),
            "--seed", "3", "--paired", "--bootstrap", "200", "--no_progress"]
    for name, spec in ARMS:
        argv += ["--arm", f"{name}={spec}"]
    assert cli.main(argv) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        return out, json.load(f)


def test_the_profile_of_a_hand_made_cohort():
    """Two users, two days: visit lengths, position buckets and per-day sums counted by hand."""
    # user 0: day 0 a visit of 12 videos (positions 0..11), day 1 a visit of 1; user 1: day 1 two visits of 2
    rows = [(0, 0, 0, p) for p in range(12)] + [(0, 1, 0, 0)] + [(1, 1, v, p) for v in (0, 1) for p in (0, 1)]
    r, day, visit, position = (np.array(c, np.int64) for c in zip(*rows))
    play = np.where(position % 2 == 0, 1_000, 20_000)          # even positions: a 1 s play of a 20 s video
    cols = {"play_time_ms": play, "duration_ms": np.full(len(r), 20_000)}
    profile = Profile.of_cohort(2, r, cols, {"day": day, "visit": visit, "position": position}, days=2)
    assert profile.visit_lengths.tolist() == [0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    impressions, watch, skips, visits = np.moveaxis(profile.by_day, 2, 0)
    assert impressions.tolist() == [[12, 1], [0, 4]] and visits.tolist() == [[1, 1], [0, 2]]
    assert skips.tolist() == [[6, 1], [0, 2]]
    np.testing.assert_allclose(watch, [[6 * 1 + 6 * 20, 1], [0, 2 * 1 + 2 * 20]])
    labels = bucket_labels(POSITION_EDGES)
    assert labels[:2] == ["1", "2"] and labels[10] == "11–20" and labels[-1] == "≥101"
    by_bucket = dict(zip(labels, profile.by_position.sum(0).tolist()))
    assert by_bucket["1"] == [4, 4] and by_bucket["2"] == [3, 0] and by_bucket["11–20"] == [2, 1]
    assert by_bucket["10"] == [1, 0] and by_bucket["21–30"] == [0, 0]
    both = Profile.concatenate([profile, Profile.of_cohort(1, r[:1], {k: v[:1] for k, v in cols.items()},
                                                           {"day": day[:1], "visit": visit[:1],
                                                            "position": position[:1]}, days=2)], days=2)
    assert both.by_day.shape == (3, 2, 4) and both.visit_lengths.tolist()[:3] == [0, 2, 2]


@pytest.mark.slow
def test_the_profiles_add_up_to_the_arms_totals(abtest_dir):
    _, out = abtest_dir
    for name, arm in out["arms"].items():
        days = arm["by_day"]
        assert [d["day"] for d in days] == list(range(DAYS))
        assert sum(d["watch_time_per_user_day"] for d in days) / DAYS == pytest.approx(arm["watch_time_per_user_day"],
                                                                                        rel=1e-5)
        assert sum(d["visits_per_user_day"] for d in days) / DAYS == pytest.approx(arm["visits_per_user_day"], rel=1e-5)
        for d in days:
            assert d["low"] <= d["watch_time_per_user_day"] <= d["high"], name
        positions = arm["skip_rate_by_position"]
        assert sum(p["impressions"] for p in positions) == arm["impressions"]
        skips = sum(p["skip_rate"] * p["impressions"] for p in positions)
        assert skips / arm["impressions"] == pytest.approx(arm["skip_rate"], rel=1e-4)
        assert [p["first"] for p in positions] == sorted(p["first"] for p in positions)
        assert positions[0]["positions"] == "1"
        # every visit shows a first video: the first bucket counts the visits
        lengths = arm["visit_lengths"]
        assert positions[0]["impressions"] == lengths["visits"] == round(arm["visits_per_user_day"] * USERS * DAYS)
        assert sum(int(k) * c for k, c in lengths["counts"].items()) == arm["impressions"]
        assert lengths["mean"] == pytest.approx(arm["impressions"] / lengths["visits"], rel=1e-5)
    # the oracle's feed is skipped less at the start of a visit, and its visits last longer
    oracle, random = out["arms"]["oracle"], out["arms"]["random"]
    assert oracle["skip_rate_by_position"][0]["high"] < random["skip_rate_by_position"][0]["low"]
    assert oracle["visit_lengths"]["mean"] > random["visit_lengths"]["mean"]


@pytest.mark.slow
def test_the_page_shows_the_setup_every_metric_and_marks_the_lifts_that_exclude_zero(abtest_dir):
    folder, out = abtest_dir
    page = open(os.path.join(folder, "index.html"), encoding="utf-8").read()
    assert "<title>tfrec-kuai abtest: random vs popular vs oracle</title>" in page
    for text in ("paired: every arm replays the same users", os.path.abspath(out["setup"]["world"]),
                 "random (control)", "<code>oracle</code>", "<td>200</td>"):
        assert text in page, text
    for metric in ("watch_time_per_user_day", "skip_rate", "hates_per_1000", "distinct_authors", "failed_requests"):
        assert f"<td>{metric}</td>" in page
    row = re.search(r"<tr><td>watch_time_per_user_day</td>(.*?)</tr>", page).group(1)
    lift = out["lift"]["oracle"]["watch_time_per_user_day"]
    assert lift["low"] > 0
    assert (f'<span class="lift excludes-zero">{lift["value"]:+.1%} [{lift["low"]:+.1%}, {lift["high"]:+.1%}]'
            in row)
    # paired, every arm has the same visits: a lift of exactly 0, not marked
    row = re.search(r"<tr><td>visits_per_user_day</td>(.*?)</tr>", page).group(1)
    assert row.count('<span class="lift">+0.0% [+0.0%, +0.0%]</span>') == 2 and "excludes-zero" not in row
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images == ["watch_by_day.png", "skip_by_position.png", "visit_lengths.png"]
    for image in images:
        with open(os.path.join(folder, image), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(os.path.join(folder, image)) > 10_000


@pytest.mark.slow
def test_the_page_renders_in_chromium_with_its_plots(abtest_dir, tmp_path):
    folder, _ = abtest_dir
    check_page(os.path.join(folder, "index.html"), images=3, min_colours=800, tmp=str(tmp_path))


@pytest.mark.slow
def test_the_chromium_check_fails_a_page_whose_plot_is_missing(abtest_dir, tmp_path):
    """The check can fail: the same page beside only two of its three PNGs."""
    folder, _ = abtest_dir
    for name in ("index.html", "watch_by_day.png", "skip_by_position.png"):
        with open(os.path.join(folder, name), "rb") as src, open(tmp_path / name, "wb") as dst:
            dst.write(src.read())
    with pytest.raises(AssertionError, match="not every image"):
        check_page(str(tmp_path / "index.html"), images=3, tmp=str(tmp_path))


def test_an_arm_without_users_still_gets_its_page(world300, tmp_path):
    """A hash split of two users over three arms leaves arms empty: their profiles are empty, their
    cells "—", and the page and its three plots are still written."""
    from tfrec_kuai.online.abtest import run_abtest

    out = run_abtest(world300, list(ARMS), users=2, days=1, seed=0, output=str(tmp_path), progress=False,
                     replicates=50)
    empty = [name for name, arm in out["arms"].items() if arm["users"] == 0]
    assert empty
    for name in empty:
        arm = out["arms"][name]
        assert arm["skip_rate_by_position"] == [] and arm["visit_lengths"] == {"visits": 0, "mean": None,
                                                                                "median": None, "counts": {}}
        assert arm["by_day"][0]["watch_time_per_user_day"] is None and arm["by_day"][0]["low"] is None
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<td>—" in page and "hash split: each user goes to one arm" in page
    for image in ("watch_by_day.png", "skip_by_position.png", "visit_lengths.png"):
        assert (tmp_path / image).stat().st_size > 5000
