"""benchmarks/ple_gate_usage.py reads a trained model's PLE gates from outside the layer: check that
its walk through the levels is the layer's own forward pass, and that its CKA is the CKA."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import ple_gate_usage
from skip_gap_analysis import model_inputs

from tests.fixtures_model import tiny_config
from tfrec_kuai.data import examples
from tfrec_kuai.train import training
from tfrec_kuai.models.ranking import TASK_GROUPS


def test_linear_cka_is_one_for_a_rotation_and_small_for_unrelated_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert ple_gate_usage.linear_cka(x, 3.0 * x @ rotation + 1.0) == pytest.approx(1.0)
    assert ple_gate_usage.linear_cka(x, rng.normal(size=(2000, 8))) < 0.05
    half = np.concatenate([x[:, :4], rng.normal(size=(2000, 4))], 1)
    assert 0.2 < ple_gate_usage.linear_cka(x, half) < 0.8


def test_gate_statistics_follow_the_layers_forward_pass(tiny_examples_dir):
    model = training.build_model(tiny_config("ranking"), training.read_vocabularies(tiny_examples_dir))
    batch = model_inputs(next(iter(examples.make_dataset(tiny_examples_dir, "train", 64))))
    levels, outputs = ple_gate_usage.gate_statistics(model, batch)
    expected = model.bottom(model.features_vector(batch))
    assert len(levels) == model.model_config.ple_levels and len(outputs) == len(TASK_GROUPS)
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    for stats in levels:
        assert set(stats) == set(TASK_GROUPS)
        for own, entropy in stats.values():
            assert own.shape == entropy.shape == (64,)
            assert np.all((own > 0) & (own < 1)) and np.all((entropy > 0) & (entropy <= 1 + 1e-6))
