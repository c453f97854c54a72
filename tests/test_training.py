"""Training: resumption ends where an unbroken run ends; model directories load back; the CLI."""
import json
import os

import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf

from tests.fixtures_model import tiny_config
from tfrec_kuai.models import OUTPUT_NAMES
from tfrec_kuai.schema import CORPUS_FEATURES
from tfrec_kuai.train import training


def _weights(model_dir, stage="ranking"):
    load = training.load_ranking_model if stage == "ranking" else training.load_retrieval_model
    model = load(model_dir, attention_implementation="composite")
    return {w.name.split("/", 1)[1]: w.numpy() for w in model.weights}   # without the instance prefix


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])   # both keep their moments in the backup
def test_killed_and_resumed_run_ends_where_an_unbroken_run_ends(tiny_examples_dir, tmp_path, optimizer):
    config = tiny_config("ranking", epochs=2, steps_per_epoch=4, backup_every_steps=2, validation="none",
                         optimizer=optimizer)
    unbroken, resumed = str(tmp_path / "unbroken"), str(tmp_path / "resumed")
    quiet = dict(verbose=0, log=lambda *a: None)
    training.train(tiny_examples_dir, unbroken, config, **quiet)
    # Killed in the second epoch, after step 7 (the last backup was at step 6).
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_examples_dir, resumed, config, extra_callbacks=[training.StopAfterSteps(7)], **quiet)
    assert training._read_train_counter(os.path.join(resumed, "backup")) == 6
    assert not os.path.exists(os.path.join(resumed, "weights"))
    messages = []
    training.train(tiny_examples_dir, resumed, config, verbose=0, log=messages.append)
    assert any("resuming" in m and "6 of 8" in m for m in messages)
    a, b = _weights(unbroken), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # ...and training moved the weights away from the (same-seed) initial ones: the comparison can fail.
    tf.keras.utils.set_random_seed(config.train.seed)
    initial = training.build_model(training.load_config_from_model_dir(unbroken),
                                   training._read_model_vocabularies(unbroken))
    c = {w.name.split("/", 1)[1]: w.numpy() for w in initial.weights}
    assert sum(not np.allclose(c[n], a[n]) for n in a) > len(a) // 2


def test_model_dir_is_self_contained_and_reloads_with_composite(tiny_ranking_model_dir, tiny_examples_dir):
    from tfrec_kuai.data import examples
    for name in ("config.json", "vocab/video_id.txt", "vocab/user_id.txt"):
        assert os.path.exists(os.path.join(tiny_ranking_model_dir, name))
    batch = next(iter(examples.make_dataset(tiny_examples_dir, "eval", 16)))
    inputs = {k: v for k, v in batch.items() if not k.startswith("label_")}
    auto = training.load_ranking_model(tiny_ranking_model_dir)(inputs)
    composite = training.load_ranking_model(tiny_ranking_model_dir, attention_implementation="composite")(inputs)
    assert sorted(auto) == sorted(OUTPUT_NAMES)
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(auto[k].numpy(), composite[k].numpy(), rtol=1e-4, atol=1e-5)
    # The trained model is not the untrained one: predictions vary across rows.
    assert np.std(auto["p_skip"].numpy()) > 1e-4


def test_retrieval_model_dir_reloads(tiny_retrieval_model_dir, tiny_examples_dir):
    from tfrec_kuai.data import examples
    model = training.load_retrieval_model(tiny_retrieval_model_dir, attention_implementation="composite")
    batch = next(iter(examples.make_dataset(tiny_examples_dir, "eval", 8)))
    q = model.query_tower(batch)
    c = model.candidate_tower({k: batch[k] for k in CORPUS_FEATURES})
    assert q.shape == (8, 8) and c.shape == (8, 8)
    probability = model.candidate_probability.numpy()
    assert abs(probability.sum() - 1) < 1e-4 and probability.max() > probability.min()   # logQ was set


def test_training_stream_is_deterministic_and_skips(tiny_examples_dir):
    config = tiny_config("ranking", steps_per_epoch=3)
    ids = lambda ds: [b["time_ms"].numpy().tolist() for b in ds]  # noqa: E731
    full = ids(training.training_stream(tiny_examples_dir, config, 3))
    assert len(full) == 6 and full == ids(training.training_stream(tiny_examples_dir, config, 3))
    assert ids(training.training_stream(tiny_examples_dir, config, 3, skip_steps=4)) == full[4:]
    assert full[0] != full[3]                       # epoch 2 is reshuffled


@pytest.mark.slow
def test_cli_train_and_evaluate(tiny_examples_dir, tiny_log_dir, tmp_path):
    from tfrec_kuai import cli
    config = tiny_config("ranking", "no_feedback", epochs=1, steps_per_epoch=2, validation="none")
    config_path = str(tmp_path / "c.json")
    config.save(config_path)
    model_dir, out = str(tmp_path / "m"), str(tmp_path / "eval")
    assert cli.main(["train", "--examples", tiny_examples_dir, "--model_dir", model_dir, "--stage", "ranking",
                     "--variant", "no_feedback", "--config", config_path, "--verbose", "0"]) == 0
    assert training.load_config_from_model_dir(model_dir).model.variant == "no_feedback"
    assert cli.main(["evaluate", "--examples", tiny_examples_dir, "--model_dir", model_dir, "--output", out,
                     "--ground_truth", os.path.join(tiny_log_dir, "ground_truth.csv")]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    for key in ("auc_skip", "auc_valid", "auc_long", "auc_complete", "auc_like", "gauc_skip", "xauc_watch",
                "mae_watch_s"):
        assert isinstance(metrics[key], float), key
        assert isinstance(metrics["oracle"][key], float), key
    assert metrics["oracle"]["matched_examples"] == metrics["eval_examples"]
    assert metrics["oracle"]["auc_skip"] > 0.6            # the truth does know the skips
    assert os.path.exists(os.path.join(out, "calibration.png"))


def test_early_stopping_state_is_kept(tiny_ranking_model_dir):
    with open(os.path.join(tiny_ranking_model_dir, "training_state.json")) as f:
        state = json.load(f)
    assert state["last_epoch"] == 1 and state["best_epoch"] in (0, 1) and 0 < state["best"] <= 1
    with open(os.path.join(tiny_ranking_model_dir, "history.json")) as f:
        assert len(json.load(f)["val_auc_skip"]) == 2


def test_evaluate_retrieval(tiny_retrieval_model_dir, tiny_examples_dir, tmp_path):
    from tfrec_kuai.evaluate import evaluation
    m = evaluation.evaluate(tiny_examples_dir, tiny_retrieval_model_dir, str(tmp_path), log=lambda *a: None)
    assert 0.0 <= m["recall_at_50"] <= m["recall_at_100"] <= 1.0
    assert m["eval_queries"] > 0 and m["corpus_size"] > 50
    assert os.path.exists(os.path.join(tmp_path, "recall_at_k.png"))
