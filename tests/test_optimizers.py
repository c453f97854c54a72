"""LazyAdam: a sparse gradient moves only the rows it touched, by Adam's rule; dense weights get Adam;
``train.optimizer`` / ``--optimizer`` pick it, and a bad value is one line."""
import json
import os

import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf

from tests.fixtures_model import tiny_config
from tests.test_cli_errors import one_line, run_cli
from tfrec_kuai.config import Config
from tfrec_kuai.errors import InputError
from tfrec_kuai.train import training
from tfrec_kuai.train.optimizers import LazyAdam, make_optimizer

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-7


def _lookup_step(optimizer, table, ids, upstream):
    """One step on ``sum(upstream * table[ids])``: the gradient is IndexedSlices, duplicates included."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, ids) * upstream)
    gradient = tape.gradient(loss, table)
    assert isinstance(gradient, tf.IndexedSlices)
    optimizer.apply_gradients([(gradient, table)])


def _reference(steps, rows, dim, start):
    """NumPy lazy Adam: per step, each touched row's summed gradient updates its m, v and weights
    (the hyperparameters rounded to float32, as Keras holds them)."""
    lr, b1, b2 = (float(np.float32(x)) for x in (LR, B1, B2))
    w, m, v = start.copy(), np.zeros((rows, dim)), np.zeros((rows, dim))
    for t, (ids, upstream) in enumerate(steps, start=1):
        grad = {}
        for i, g in zip(ids, upstream):
            grad[i] = grad.get(i, 0) + g
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, g in grad.items():
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            w[i] -= alpha * m[i] / (np.sqrt(v[i]) + EPS)
    return w, m, v


def test_sparse_steps_match_the_per_row_reference_and_leave_other_rows_alone():
    rng = np.random.default_rng(0)
    rows, dim = 10, 3
    start = rng.normal(size=(rows, dim))
    steps = [([1, 4, 4, 7], rng.normal(size=(4, dim))),   # row 4 twice: the gradients add up
             ([2, 7], rng.normal(size=(2, dim))),
             ([1], rng.normal(size=(1, dim)))]
    table = tf.Variable(start, dtype=tf.float64)
    optimizer = LazyAdam(LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    for ids, upstream in steps:
        _lookup_step(optimizer, table, tf.constant(ids), tf.constant(upstream))
    w, m, v = _reference(steps, rows, dim, start)
    np.testing.assert_allclose(table.numpy(), w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(optimizer._momentums[0].numpy(), m, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(optimizer._velocities[0].numpy(), v, rtol=1e-10, atol=1e-12)
    untouched = [0, 3, 5, 6, 8, 9]
    np.testing.assert_array_equal(table.numpy()[untouched], start[untouched])
    # Row 4 was touched only in step 1; tf-keras's Adam keeps moving it in steps 2 and 3 (its
    # moments decay over the whole table), the lazy one does not: the two rules really differ.
    dense_rule = tf.Variable(start, dtype=tf.float64)
    adam = tf.keras.optimizers.Adam(LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    for ids, upstream in steps:
        _lookup_step(adam, dense_rule, tf.constant(ids), tf.constant(upstream))
    assert not np.allclose(dense_rule.numpy()[4], table.numpy()[4])
    np.testing.assert_array_equal(dense_rule.numpy()[untouched], start[untouched])


def test_dense_gradients_get_exactly_adams_update():
    rng = np.random.default_rng(1)
    start = rng.normal(size=(4, 5)).astype("float32")
    lazy, plain = tf.Variable(start), tf.Variable(start)
    lazy_opt, adam = LazyAdam(LR), tf.keras.optimizers.Adam(LR)
    for _ in range(3):
        grad = tf.constant(rng.normal(size=(4, 5)).astype("float32"))
        lazy_opt.apply_gradients([(grad, lazy)])
        adam.apply_gradients([(grad, plain)])
    np.testing.assert_array_equal(lazy.numpy(), plain.numpy())
    assert not np.allclose(lazy.numpy(), start)


def test_make_optimizer_names_and_refusals():
    assert type(make_optimizer("adam", 1e-3)) is tf.keras.optimizers.Adam
    assert isinstance(make_optimizer("lazy_adam", 1e-3), LazyAdam)
    with pytest.raises(ValueError, match="lazy_adam"):
        make_optimizer("sgd", 1e-3)
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)
    bad = Config().override("train", optimizer="adagrad")
    with pytest.raises(InputError, match="train config: optimizer must be one of"):
        training.check_model_config(bad)


def test_a_bad_optimizer_is_one_line_on_the_command_line_and_in_a_config_file(capsys, tiny_examples_dir, tmp_path):
    model_dir = str(tmp_path / "m")
    status, err = run_cli(capsys, "train", "--examples", tiny_examples_dir, "--model_dir", model_dir,
                          "--optimizer", "sgd")
    assert status == 2 and "argument --optimizer: invalid choice: 'sgd'" in one_line(err)
    path = str(tmp_path / "config.json")
    config = tiny_config("ranking").to_dict()
    config["train"]["optimizer"] = "LazyAdam"
    with open(path, "w") as f:
        json.dump(config, f)
    status, err = run_cli(capsys, "train", "--examples", tiny_examples_dir, "--model_dir", model_dir,
                          "--config", path)
    assert status == 2 and one_line(err).startswith("tfrec-kuai train: error: train config: optimizer must be one "
                                                    "of ('adam', 'lazy_adam'), got 'LazyAdam'"), err
    assert not os.path.exists(model_dir)
