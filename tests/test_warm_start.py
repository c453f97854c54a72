"""Warm start (continual training, ``tfrec-kuai train --warm_start``): yesterday's model, its
vocabularies grown by the new day's ids, trained on the new day's examples.

The days are the shared tiny simulated log (``tests/fixtures_data.py``) cut by date
(``tests/log_rows.split_by_date``): "yesterday" is the full job over the first two dates,
"today" the incremental job on the third with the first two as history (the loop's mode), so
today's vocabularies hold the videos first seen on the third date. What is checked is what the
training run itself sees when ``fit`` begins (a callback reads the model then), not a copy made
aside.
"""
import json
import os
import shutil

import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf

from beam_pipelines import build_examples
from tests.fixtures_model import tiny_config
from tests.log_rows import split_by_date
from tfrec_kuai import cli
from tfrec_kuai.errors import InputError
from tfrec_kuai.models import OUTPUT_NAMES
from tfrec_kuai.schema import CORPUS_FEATURES, VOCAB_FEATURES
from tfrec_kuai.train import training

L = 10
QUIET = dict(verbose=0, log=lambda *a: None)


def _job(log_dir, out, inputs, *extra):
    build_examples.run(
        ["--input", ",".join(inputs), "--output", str(out),
         "--video_features", os.path.join(log_dir, "video_features_basic_sim.csv"),
         "--user_features", os.path.join(log_dir, "user_features_sim.csv"),
         "--history_length", str(L), "--eval_days", "0", *extra])
    return str(out)


@pytest.fixture(scope="module")
def days(tiny_log_dir, tmp_path_factory):
    """(yesterday's examples, today's examples): dates 1-2 in full; date 3 with 1-2 as history."""
    root = tmp_path_factory.mktemp("warm_start_days")
    split = split_by_date([os.path.join(tiny_log_dir, f) for f in ("log_standard_sim.csv", "log_random_sim.csv")],
                          str(root / "days"))
    paths = [p for _, p in split]
    yesterday = _job(tiny_log_dir, root / "ex_yesterday", paths[:2])
    today = _job(tiny_log_dir, root / "ex_today", paths[2:3], "--history_input", ",".join(paths[:2]))
    return yesterday, today


def _config(stage, **train):
    return tiny_config(stage, **{"epochs": 2, "steps_per_epoch": 3, "validation": "none", **train})


@pytest.fixture(scope="module")
def yesterday(days, tmp_path_factory):
    """Trained models of both stages on yesterday's examples."""
    root = tmp_path_factory.mktemp("warm_start_models")
    dirs = {}
    for stage in ("ranking", "retrieval"):
        dirs[stage] = str(root / f"yesterday_{stage}")
        training.train(days[0], dirs[stage], _config(stage, epochs=1), **QUIET)
    return dirs


class AtTrainBegin(tf.keras.callbacks.Callback):
    """Calls ``look(model)`` when ``fit`` begins: after the warm start's copy (and, resuming,
    after the backup's restore, which comes first in the callback list)."""

    def __init__(self, look):
        super().__init__()
        self.look = look

    def on_train_begin(self, logs=None):
        self.look(self.model)


def _tables(model):
    return {name: layer.embedding.embeddings.numpy() for name, layer in training._id_embeddings(model).items()}


def _batch(examples_dir, size=32):
    batch = next(iter(training.shuffled_batches(examples_dir, "train", size, seed=1, repeat=False)))
    return {k: v for k, v in batch.items() if not k.startswith("label_")}


def _predictions(model, batch, stage):
    if stage == "ranking":
        out = model(batch)
        return {k: out[k].numpy() for k in OUTPUT_NAMES}
    return {"query": model.query_tower(batch).numpy(),
            "candidate": model.candidate_tower({k: batch[k] for k in CORPUS_FEATURES}).numpy()}


@pytest.fixture(scope="module")
def today_ranking(days, yesterday, tmp_path_factory):
    """Today's ranking model warm-started from yesterday's, and the tables ``fit`` began with."""
    out = str(tmp_path_factory.mktemp("warm_start_today") / "ranking")
    seen = {}
    training.train(days[1], out, _config("ranking"), warm_start=yesterday["ranking"],
                   extra_callbacks=[AtTrainBegin(lambda m: seen.update(_tables(m)))], **QUIET)
    return out, seen


@pytest.mark.slow
def test_old_ids_keep_their_rows_and_new_ids_get_fresh_ones(days, yesterday, today_ranking):
    today, begun = today_ranking
    old = training._read_model_vocabularies(yesterday["ranking"])
    grown = training._read_model_vocabularies(today)
    todays = training.read_vocabularies(days[1])
    with open(os.path.join(today, "examples.json")) as f:
        record = json.load(f)["warm_start"]
    assert record["model_dir"] == os.path.abspath(yesterday["ranking"])
    for name in VOCAB_FEATURES:
        # yesterday's ids in yesterday's order, then today's new ones in the examples' order
        assert grown[name][:len(old[name])] == old[name]
        new = [v for v in todays[name] if v not in set(old[name])]
        assert grown[name][len(old[name]):] == new
        assert record["new_ids"][name] == len(new)
    assert record["new_ids"]["video_id"] > 0, "the third date brings no new video: the test shows nothing"

    before = _tables(training.load_ranking_model(yesterday["ranking"], attention_implementation="composite"))
    tf.keras.utils.set_random_seed(_config("ranking").train.seed)
    fresh = _tables(training.build_model(training.load_config_from_model_dir(today), grown))
    for name in VOCAB_FEATURES:
        n = len(old[name]) + 1                         # the OOV row and every old id
        np.testing.assert_array_equal(begun[name][:n], before[name], err_msg=name)
        np.testing.assert_array_equal(begun[name][n:], fresh[name][n:], err_msg=name)
    # The new videos are in the model's lookup, past the old rows (not OOV).
    model = training.load_ranking_model(today, attention_implementation="composite")
    new_videos = grown["video_id"][len(old["video_id"]):]
    index = model.item_embedding.video.index(tf.constant(new_videos, tf.int64)).numpy()
    assert index.tolist() == list(range(len(old["video_id"]) + 1, len(grown["video_id"]) + 1))
    # ...and today's training moved the table away from what it began with.
    assert not np.allclose(_tables(model)["video_id"], begun["video_id"])

    with open(os.path.join(today, "history.json")) as f:
        history = json.load(f)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))


@pytest.mark.slow
def test_the_warm_started_models_train_through_the_command_and_export(days, yesterday, today_ranking, tmp_path):
    today_examples = days[1]
    config_path = str(tmp_path / "retrieval.json")
    _config("retrieval", epochs=1).save(config_path)
    retrieval = str(tmp_path / "retrieval")
    assert cli.main(["train", "--examples", today_examples, "--model_dir", retrieval, "--stage", "retrieval",
                     "--config", config_path, "--warm_start", yesterday["retrieval"], "--verbose", "0"]) == 0
    with open(os.path.join(retrieval, "history.json")) as f:
        assert all(np.isfinite(json.load(f)["loss"]))
    model = training.load_retrieval_model(retrieval, attention_implementation="composite")
    probability = model.candidate_probability.numpy()     # q of the logQ correction: today's counts
    assert probability.shape == (len(model.vocabularies["video_id"]) + 1,) and abs(probability.sum() - 1) < 1e-4
    base = str(tmp_path / "serving")
    assert cli.main(["export", "--ranking_dir", today_ranking[0], "--retrieval_dir", retrieval,
                     "--examples", today_examples, "--export_base", base, "--portable",
                     "--warmup_examples", "0"]) == 0
    loaded = tf.saved_model.load(os.path.join(base, "kuai", "1"))
    assert "serving_default" in loaded.signatures


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ranking", "retrieval"])
def test_a_warm_start_without_new_ids_changes_nothing_before_training(stage, days, yesterday, tmp_path):
    source = yesterday[stage]
    batch = _batch(days[0])
    expected = _predictions(training._load(source, stage, "composite"), batch, stage)
    tf.keras.utils.set_random_seed(0)
    config = _config(stage, epochs=1, steps_per_epoch=1).override("model", attention_implementation="composite")
    untrained = _predictions(training.build_model(config.override("model", history_length=L),
                                                  training._read_model_vocabularies(source)), batch, stage)
    seen = {}
    out = str(tmp_path / "today")
    training.train(days[0], out, config, warm_start=source,
                   extra_callbacks=[AtTrainBegin(lambda m: seen.update(_predictions(m, batch, stage)))], **QUIET)
    assert training._read_model_vocabularies(out) == training._read_model_vocabularies(source)
    for k, v in expected.items():
        np.testing.assert_allclose(seen[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    # the check can fail: a fresh model of the same seed predicts otherwise
    assert any(not np.allclose(untrained[k], v, atol=1e-4) for k, v in expected.items())


@pytest.mark.slow
def test_a_killed_warm_start_resumes_and_ends_where_an_unbroken_one_ends(days, yesterday, today_ranking, tmp_path):
    out = str(tmp_path / "today")
    config = _config("ranking")
    with pytest.raises(KeyboardInterrupt):
        training.train(days[1], out, config, warm_start=yesterday["ranking"],
                       extra_callbacks=[training.StopAfterSteps(4)], **QUIET)
    assert training._read_train_counter(os.path.join(out, "backup")) == 3
    # the unfinished run is a warm start's: resuming it as a run from scratch is refused
    with pytest.raises(InputError, match="holds an unfinished run of a warm start from .*asked for a run "
                                                  "from scratch: pass --restart"):
        training.train(days[1], out, config, **QUIET)
    messages = []
    training.train(days[1], out, config, warm_start=yesterday["ranking"], verbose=0, log=messages.append)
    assert any("resuming" in m and "3 of 6" in m for m in messages)
    unbroken = training.load_ranking_model(today_ranking[0], attention_implementation="composite")
    resumed = training.load_ranking_model(out, attention_implementation="composite")
    assert len(unbroken.weights) == len(resumed.weights)
    for a, b in zip(unbroken.weights, resumed.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)


# ----------------------------------------------------------------------------- refusals

@pytest.fixture(scope="module")
def saved(tiny_examples_dir, tmp_path_factory):
    """Saved (untrained) model folders on the tiny examples (L = 50), as ``tfrec-kuai train``
    writes them, and the tiny config file they match."""
    vocabularies = training.read_vocabularies(tiny_examples_dir)
    root = tmp_path_factory.mktemp("warm_start_refusals")
    dirs = {}
    for key, config in {"ranking": tiny_config("ranking"), "no_feedback": tiny_config("ranking", "no_feedback"),
                        "retrieval": tiny_config("retrieval"),
                        "L10": tiny_config("ranking").override("model", history_length=10),
                        "wide": tiny_config("ranking").override("model", video_dim=16)}.items():
        if key != "L10":
            config = config.override("model", history_length=50)
        dirs[key] = str(root / key)
        training.save_model_dir(training.build_model(config, vocabularies), config, dirs[key])
    dirs["unfinished"] = str(root / "unfinished")
    shutil.copytree(dirs["ranking"], dirs["unfinished"])
    shutil.rmtree(os.path.join(dirs["unfinished"], "weights"))
    dirs["config"] = str(root / "config.json")
    tiny_config("ranking").save(dirs["config"])
    return dirs


def _refused(capsys, examples_dir, config, model_dir, warm_start, *more):
    try:
        status = cli.main(["train", "--examples", examples_dir, "--model_dir", model_dir, "--config", config,
                           "--warm_start", warm_start, "--verbose", "0", *more])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("tfrec-kuai train: error: --warm_start")
    return lines[0][len("tfrec-kuai train: error: "):]


def test_a_warm_start_from_another_stage_variant_or_l_is_refused(capsys, tiny_examples_dir, saved, tmp_path):
    out = str(tmp_path / "today")
    run = lambda source, *more: _refused(capsys, tiny_examples_dir, saved["config"], out, source, *more)  # noqa: E731
    assert run(saved["retrieval"]) == f"--warm_start: {saved['retrieval']} holds a retrieval model, not a ranking one"
    assert run(saved["no_feedback"]) == (f"--warm_start: {saved['no_feedback']} holds the ranking variant "
                                         "'no_feedback', not 'full'")
    assert run(saved["L10"]).startswith(f"--warm_start: history length mismatch: the model in {saved['L10']} "
                                        "was trained with L = 10, the examples have L = 50")
    assert run(saved["wide"]) == (f"--warm_start {saved['wide']} holds a model of another architecture: "
                                  f"video_dim 16 (asked: 8); pass its config (--config "
                                  f"{os.path.join(saved['wide'], 'config.json')}) or train from scratch")
    assert not os.path.exists(out)


def test_a_warm_start_from_a_missing_or_unfinished_folder_is_refused(capsys, tiny_examples_dir, saved, tmp_path):
    out = str(tmp_path / "today")
    run = lambda source, *more: _refused(capsys, tiny_examples_dir, saved["config"], out, source, *more)  # noqa: E731
    missing, empty = str(tmp_path / "nothing"), str(tmp_path / "empty")
    os.makedirs(empty)
    assert run(missing).startswith(f"--warm_start: {missing} is not a model folder: it does not exist")
    assert run(empty).startswith(f"--warm_start: {empty} is not a model folder: it has no config.json")
    assert run(saved["unfinished"]) == (f"--warm_start {saved['unfinished']} holds no finished model (no weights "
                                        "yet, or a run in progress): finish its training first (re-run its "
                                        "command) or warm start from another folder")


def test_a_warm_start_into_its_own_folder_is_refused_and_restart_deletes_nothing(capsys, tiny_examples_dir, saved,
                                                                                   tmp_path):
    source = str(tmp_path / "model")
    shutil.copytree(saved["ranking"], source)
    before = sorted(os.listdir(source))
    for model_dir in (source, os.path.join(source, "weights"), str(tmp_path)):
        message = _refused(capsys, tiny_examples_dir, saved["config"], model_dir, source, "--restart")
        assert message == (f"--warm_start {source} and --model_dir {model_dir} are one folder or one holds the "
                           "other: a warm start writes a new model folder beside yesterday's, pass another "
                           "--model_dir")
    assert sorted(os.listdir(source)) == before
    # a refused warm start with --restart leaves today's folder as it was, too
    today = str(tmp_path / "today")
    os.makedirs(today)
    open(os.path.join(today, "keep"), "w").close()
    _refused(capsys, tiny_examples_dir, saved["config"], today, saved["retrieval"], "--restart")
    assert os.listdir(today) == ["keep"]


def test_grown_vocabularies_keep_the_old_order_and_append_the_new_ids():
    old = {"user_id": [3, 1], "video_id": [9, 7, 8], "author_id": [], "tag": [5]}
    new = {"user_id": [1, 2, 3], "video_id": [7, 4, 6], "author_id": [2, 1], "tag": []}
    assert training.grown_vocabularies(old, new) == {
        "user_id": [3, 1, 2], "video_id": [9, 7, 8, 4, 6], "author_id": [2, 1], "tag": [5]}


def test_copy_rows_refuses_a_table_that_is_not_a_prefix():
    from tfrec_kuai.layers import IdEmbedding
    a, b = IdEmbedding([1, 2], 4, name="a"), IdEmbedding([2, 1, 3], 4, name="b")
    a(tf.constant([1])), b(tf.constant([1]))
    with pytest.raises(ValueError, match="is not a prefix"):
        b.copy_rows_from(a)
    c = IdEmbedding([1, 2, 3], 4, name="c")
    c(tf.constant([1]))
    fresh = c.embedding.embeddings.numpy()
    c.copy_rows_from(a)
    np.testing.assert_array_equal(c.embedding.embeddings.numpy()[:3], a.embedding.embeddings.numpy())
    np.testing.assert_array_equal(c.embedding.embeddings.numpy()[3], fresh[3])
