"""The experiment table's statistics: the Student-t interval it puts on paired seed differences
decides whether docs/experiments.md may call a difference a result, so it is checked against
published t tables and against run folders written the way benchmarks/run_experiments.sh writes them."""
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import experiment_table

# Two-sided 90 % and 95 % critical values of Student's t (any statistics textbook's table).
T_TABLE = {1: (6.314, 12.706), 2: (2.920, 4.303), 3: (2.353, 3.182), 4: (2.132, 2.776), 5: (2.015, 2.571),
           6: (1.943, 2.447), 10: (1.812, 2.228), 30: (1.697, 2.042)}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_published_table(df):
    t90, t95 = T_TABLE[df]
    assert experiment_table.t_quantile(0.90, df) == pytest.approx(t90, abs=1e-3)
    assert experiment_table.t_quantile(0.95, df) == pytest.approx(t95, abs=1e-3)


def test_t_tends_to_the_normal_and_is_a_distribution():
    assert experiment_table.t_quantile(0.90, 5000) == pytest.approx(1.6449, abs=1e-3)
    for df in (1, 2, 7, 8):
        values = [experiment_table.t_within(t, df) for t in (0.0, 0.5, 1.0, 3.0, 30.0)]
        assert values[0] == 0.0 and values == sorted(values) and values[-1] < 1.0


def _write_seed(out_dir, seed, metrics_by_variant):
    for variant, metrics in metrics_by_variant.items():
        folder = os.path.join(out_dir, f"seed_{seed}", f"eval_ranking_{variant}")
        os.makedirs(folder)
        with open(os.path.join(folder, "metrics.json"), "w") as f:
            json.dump(metrics, f)


def test_paired_interval_from_run_folders(tmp_path):
    # full − shared_bottom on skip AUC: +0.001, +0.003, +0.002 → mean 0.002, sd 0.001.
    skip = {0: (0.750, 0.749), 1: (0.752, 0.749), 2: (0.751, 0.749)}
    for seed, (full, shared) in skip.items():
        _write_seed(str(tmp_path), seed, {"full": {"auc_skip": full, "xauc_watch": 0.61},
                                          "shared_bottom": {"auc_skip": shared, "xauc_watch": 0.61 + seed / 1000}})
    runs = [(label, *experiment_table.read_run(path)) for label, path in experiment_table.seed_dirs(str(tmp_path))]
    n, mean, sd, low, high = experiment_table.paired_difference(runs, "shared_bottom", "auc_skip")
    half = 2.920 * 0.001 / math.sqrt(3)
    assert (n, mean, sd) == (3, pytest.approx(0.002), pytest.approx(0.001))
    assert (low, high) == (pytest.approx(0.002 - half, abs=1e-6), pytest.approx(0.002 + half, abs=1e-6))
    text = experiment_table.table(str(tmp_path))
    assert "full − shared_bottom, auc_skip: +0.0020" in text and "full better" in text
    # XAUC differences 0, −0.001, −0.002: the interval straddles 0.
    assert "full − shared_bottom, xauc_watch: -0.0010" in text and "not separated" in text


def test_one_seed_gives_no_interval(tmp_path):
    _write_seed(str(tmp_path), 0, {"full": {"auc_skip": 0.75}, "shared_bottom": {"auc_skip": 0.74}})
    runs = [(label, *experiment_table.read_run(path)) for label, path in experiment_table.seed_dirs(str(tmp_path))]
    assert experiment_table.paired_difference(runs, "shared_bottom", "auc_skip") is None
    assert "Paired differences" not in experiment_table.table(str(tmp_path))
