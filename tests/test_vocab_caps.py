"""Ids at scale (docs/data.md): per id feature a vocabulary cap (``max_vocab_size``), a minimum
train count (``min_count``) and ``K`` hashed out-of-vocabulary buckets (``oov_buckets``).

The data are the shared tiny examples (``tests/fixtures_data.py``), whose ``vocab/`` the real
Beam job wrote with the counts beside the ids; the warm start uses the two days of
``tests/test_warm_start.py``. What is checked is what the model holds (its lookup and tables), the
exported SavedModel's answers, and the command's one-line refusals.
"""
import json
import os
import shutil

import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf

from tests.fixtures_model import tiny_config
from tests.test_cli_errors import one_line, run_cli
from tests.test_warm_start import AtTrainBegin, _config, _tables, days  # noqa: F401  (days: a fixture)
from tfrec_kuai import cli
from tfrec_kuai.data import examples
from tfrec_kuai.errors import InputError
from tfrec_kuai.layers import IdEmbedding
from tfrec_kuai.layers.embeddings import describe_tables, format_bytes, table_bytes
from tfrec_kuai.schema import VOCAB_FEATURES
from tfrec_kuai.train import training

QUIET = dict(verbose=0, log=lambda *a: None)


def _counts(examples_dir, feature):
    ids, counts = examples.read_vocabulary(examples_dir, feature, with_counts=True)
    assert counts is not None and len(counts) == len(ids)
    return ids, counts


def test_the_pipeline_writes_counts_beside_the_ids_most_frequent_first(tiny_examples_dir):
    for feature in VOCAB_FEATURES:
        ids, counts = _counts(tiny_examples_dir, feature)
        assert ids == examples.read_vocabulary(tiny_examples_dir, feature)     # the ids file as before
        assert all(c >= 1 for c in counts)
        # most frequent first, ties by the smaller id
        assert all((a > b) or (a == b and i < j) for (i, a), (j, b) in zip(zip(ids, counts), zip(ids[1:], counts[1:])))
    ids, counts = _counts(tiny_examples_dir, "video_id")
    assert counts[0] > counts[-1], "the tiny log's videos all have one count: min_count shows nothing"


def test_cap_and_min_count_keep_the_most_frequent_ids(tiny_examples_dir):
    ids, counts = _counts(tiny_examples_dir, "video_id")
    least = sorted(set(counts))[1]                     # the second-smallest count: some ids are below it
    frequent = training.read_vocabularies(tiny_examples_dir, {"video_id": least})
    assert frequent["video_id"] == [v for v, c in zip(ids, counts) if c >= least]
    assert 0 < len(frequent["video_id"]) < len(ids)
    for name in ("user_id", "author_id", "tag"):     # features without a min_count keep every id
        assert frequent[name] == examples.read_vocabulary(tiny_examples_dir, name)
    capped = training.grown_vocabularies({n: [] for n in VOCAB_FEATURES}, frequent, {"video_id": 5, "tag": 2})
    assert capped["video_id"] == frequent["video_id"][:5]
    assert capped["tag"] == frequent["tag"][:2] and capped["author_id"] == frequent["author_id"]
    # a cap larger than the vocabulary keeps it whole
    assert training.grown_vocabularies({n: [] for n in VOCAB_FEATURES}, frequent, {"user_id": 10 ** 9}) == frequent


def test_min_count_on_a_folder_without_counts_is_refused(tiny_examples_dir, tmp_path):
    old = str(tmp_path / "examples")
    shutil.copytree(tiny_examples_dir, old)
    os.remove(os.path.join(old, "vocab", "video_id.counts.txt"))
    assert training.read_vocabularies(old)["video_id"] == examples.read_vocabulary(tiny_examples_dir, "video_id")
    with pytest.raises(InputError, match=r"--min_count video_id=2 needs the id counts of .*video_id\.counts\.txt, "
                                         "which this examples folder lacks"):
        training.read_vocabularies(old, {"video_id": 2})


def test_grown_vocabulary_with_a_cap_keeps_yesterday_as_its_prefix():
    old = {"user_id": [3, 1], "video_id": [9, 7, 8], "author_id": [], "tag": [5, 6, 4]}
    new = {"user_id": [1, 2, 3], "video_id": [7, 4, 6, 2], "author_id": [2, 1], "tag": [1]}
    grown = training.grown_vocabularies(old, new, {"video_id": 5, "author_id": 1, "tag": 2})
    assert grown == {"user_id": [3, 1, 2], "video_id": [9, 7, 8, 4, 6], "author_id": [2],
                     # a cap below yesterday's size: yesterday's ids all stay, nothing is added
                     "tag": [5, 6, 4]}


def test_oov_ids_hash_into_buckets_deterministically_and_spread():
    K = 8
    vocabulary = [70, 0, 42]
    layer = IdEmbedding(vocabulary, dim=3, oov_buckets=K)
    assert layer.vocabulary_size == len(vocabulary) + K
    known = layer.index(np.array(vocabulary)).numpy()
    np.testing.assert_array_equal(known, [K, K + 1, K + 2])             # the vocabulary after the buckets
    unknown = np.arange(1000, 1400, dtype=np.int64)
    buckets = layer.index(unknown).numpy()
    assert buckets.min() >= 0 and buckets.max() < K
    np.testing.assert_array_equal(buckets, unknown % K)                 # IntegerLookup's rule: floormod(id, K)
    np.testing.assert_array_equal(np.bincount(buckets, minlength=K), [len(unknown) // K] * K)  # spread evenly
    again = IdEmbedding.from_config(layer.get_config())
    np.testing.assert_array_equal(again.index(unknown).numpy(), buckets)   # deterministic, rebuilt the same
    assert again.oov_buckets == K
    assert int(layer.index(np.array([-1])).numpy()[0]) == K - 1          # padding: the last bucket
    # an empty vocabulary (examples without a video table) hashes by the same rule
    empty = IdEmbedding([], dim=3, oov_buckets=K)
    np.testing.assert_array_equal(empty.index(unknown).numpy(), buckets)
    assert empty(np.array([5, -1])).shape == (2, 3)
    # the default is today's single OOV row 0
    np.testing.assert_array_equal(IdEmbedding(vocabulary, 3).index(np.array([70, 5, -1])).numpy(), [1, 0, 0])
    with pytest.raises(ValueError, match="oov_buckets must be >= 1"):
        IdEmbedding(vocabulary, 3, oov_buckets=0)


def test_copy_rows_takes_every_oov_bucket_and_refuses_other_bucket_counts():
    a, b = IdEmbedding([1, 2], 2, oov_buckets=3, name="a"), IdEmbedding([1, 2, 5], 2, oov_buckets=3, name="b")
    c = IdEmbedding([1, 2, 5], 2, oov_buckets=1, name="c")
    for layer in (a, b, c):
        layer(tf.constant([1]))
    fresh = b.embedding.embeddings.numpy()
    b.copy_rows_from(a)
    np.testing.assert_array_equal(b.embedding.embeddings.numpy()[:5], a.embedding.embeddings.numpy())
    np.testing.assert_array_equal(b.embedding.embeddings.numpy()[5], fresh[5])
    with pytest.raises(ValueError, match="is not a prefix"):
        c.copy_rows_from(a)


def test_the_memory_line_is_rows_times_dim_times_four_bytes():
    assert table_bytes(7584, 32) == (7584 * 32 * 4, 3 * 7584 * 32 * 4)
    assert [format_bytes(n) for n in (336, 2048, 3 * 1024 ** 2, 500 * 1024 ** 2)] == ["336 B", "2.0 KiB", "3.0 MiB", "0.5 GiB"]
    assert describe_tables([("video", 7584, 32), ("tag", 10, 4)]) == (
        "embedding tables: video 7,584×32 (0.9 MiB, 2.8 MiB with Adam), tag 10×4 (160 B, 480 B with Adam); "
        "total 0.9 MiB, 2.8 MiB with Adam")


def _capped_config(stage, **train):
    return tiny_config(stage, **train).override(
        "model", max_vocab_size={"video_id": 40, "author_id": 10}, min_count={"user_id": 2},
        oov_buckets={"video_id": 16, "author_id": 4, "tag": 2})


def test_padding_is_harmless_with_buckets(tiny_examples_dir):
    """Positions past ``hist_len`` are masked: whatever ids (and so buckets) they hold, the
    prediction is the same."""
    config = _capped_config("ranking").override("model", history_length=50, attention_implementation="composite")
    tf.keras.utils.set_random_seed(0)
    model = training.build_model(config, training.grown_vocabularies(
        {n: [] for n in VOCAB_FEATURES}, training.read_vocabularies(tiny_examples_dir, config.model.min_count),
        config.model.max_vocab_size))
    batch = next(iter(training.shuffled_batches(tiny_examples_dir, "train", 16, seed=1, repeat=False)))
    batch = {k: v.numpy() for k, v in batch.items() if not k.startswith("label_")}
    short = batch["hist_len"] < 50
    assert short.any()
    padded = np.arange(50)[None, :] >= batch["hist_len"][:, None]
    assert (batch["hist_video_id"][padded] == -1).all()
    other = dict(batch)
    for name in ("hist_video_id", "hist_author_id", "hist_tag"):
        other[name] = np.where(padded, 1_000_003, batch[name])        # another bucket than −1's
    before, after = model(batch), model(other)
    for key in before:
        np.testing.assert_allclose(after[key].numpy(), before[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_a_capped_model_trains_exports_and_recommends(tiny_examples_dir, tmp_path):
    from tests.test_export import FRESH_PROCESS, _graph_ops
    import subprocess
    import sys
    from tfrec_kuai.export import saved_model as E
    dirs, lines = {}, []
    for stage in ("ranking", "retrieval"):
        dirs[stage] = str(tmp_path / stage)
        config = _capped_config(stage, validation="none", epochs=1, steps_per_epoch=4)
        training.train(tiny_examples_dir, dirs[stage], config, verbose=0, log=lines.append)
    vocab = training._read_model_vocabularies(dirs["ranking"])
    full = training.read_vocabularies(tiny_examples_dir)
    assert vocab["video_id"] == full["video_id"][:40] and len(full["video_id"]) > 40
    assert vocab["author_id"] == full["author_id"][:10] and vocab["tag"] == full["tag"]
    user_ids, user_counts = _counts(tiny_examples_dir, "user_id")
    assert vocab["user_id"] == [u for u, c in zip(user_ids, user_counts) if c >= 2]
    with open(os.path.join(dirs["ranking"], "examples.json")) as f:
        record = json.load(f)["vocabularies"]
    assert record["video_id"] == {"examples_ids": len(full["video_id"]), "model_ids": 40, "oov_buckets": 16}
    # the training-start line: each table's rows (cap + buckets) × dim
    tables = [line for line in lines if line.startswith("embedding tables: ")]
    assert len(tables) == 2
    assert f"video {40 + 16}×8 ({format_bytes(56 * 8 * 4)}, {format_bytes(3 * 56 * 8 * 4)} with Adam)" in tables[0]
    assert f"author {10 + 4}×4 " in tables[0] and f"tag {len(full['tag']) + 2}×4 " in tables[0]
    model = training.load_retrieval_model(dirs["retrieval"], attention_implementation="composite")
    assert model.item_embedding.video.embedding.embeddings.shape == (56, 8)
    probability = model.candidate_probability.numpy()       # q: one entry per table row, OOV buckets counted
    assert probability.shape == (56,) and abs(probability.sum() - 1) < 1e-4
    assert probability[:16].max() > 1.0 / len(probability)  # the many videos past the cap are in the buckets

    base = str(tmp_path / "serving")
    assert cli.main(["export", "--ranking_dir", dirs["ranking"], "--retrieval_dir", dirs["retrieval"],
                     "--examples", tiny_examples_dir, "--export_base", base, "--portable", "--top_n", "10",
                     "--warmup_examples", "0"]) == 0
    version = os.path.join(base, "kuai", "1")
    ops, _ = _graph_ops(version)
    assert "FeedbackWeightedAttention" not in ops
    # recommend on the exported SavedModel, in a process that never imports tfrec_kuai (stock TF
    # Serving's view: only stock ops)
    serialized = examples.read_serialized_examples(tiny_examples_dir, "eval", 4)
    features = E.parse_examples(serialized, examples.load_metadata(tiny_examples_dir)["history_length"])
    corpus = examples.read_corpus(tiny_examples_dir)
    requests = {"recommend": E.user_inputs(features),
                "rank": E.rank_inputs(features, {k: v[:30] for k, v in corpus.items()})}
    inputs_file, out_file = tmp_path / "inputs.npz", tmp_path / "out.npz"
    np.savez(inputs_file, **{f"{s}/{k}": v for s in requests for k, v in requests[s].items()})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, version, str(inputs_file), str(out_file)],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "modules-ok" in result.stdout, result.stderr[-3000:]
    out = np.load(out_file)
    assert out["recommend/video_id"].shape == (4, 10)
    assert set(out["recommend/video_id"].ravel().tolist()) <= set(corpus["video_id"].tolist())
    assert (np.diff(out["recommend/score"], axis=1) <= 1e-6).all() and np.isfinite(out["rank/score"]).all()


@pytest.mark.slow
def test_a_capped_warm_start_grows_to_the_cap_with_yesterday_as_prefix(days, tmp_path):  # noqa: F811
    yesterday_examples, today_examples = days
    first = training.read_vocabularies(yesterday_examples)["video_id"]
    cap = len(first) - 5                        # yesterday capped: 5 of its own videos already OOV
    config = _config("ranking", epochs=1).override("model", oov_buckets={"video_id": 4})
    yesterday = str(tmp_path / "yesterday")
    training.train(yesterday_examples, yesterday, config.override("model", max_vocab_size={"video_id": cap}), **QUIET)
    old = training._read_model_vocabularies(yesterday)["video_id"]
    assert old == first[:cap]
    # today's cap is 3 more: the 3 most frequent of today's ids yesterday's vocabulary lacks join it
    lines, seen = [], {}
    today = str(tmp_path / "today")
    training.train(today_examples, today, config.override("model", max_vocab_size={"video_id": cap + 3}),
                   warm_start=yesterday, extra_callbacks=[AtTrainBegin(lambda m: seen.update(_tables(m)))],
                   verbose=0, log=lines.append)
    grown = training._read_model_vocabularies(today)["video_id"]
    missing = [v for v in training.read_vocabularies(today_examples)["video_id"] if v not in set(old)]
    assert len(missing) > 3
    assert grown == old + missing[:3]
    with open(os.path.join(today, "examples.json")) as f:
        assert json.load(f)["warm_start"]["new_ids"]["video_id"] == 3
    assert any(f"video_id {len(old)} + 3 new ({len(missing) - 3} over the cap {cap + 3}: OOV)" in line
               for line in lines), lines
    # fit began with yesterday's 4 OOV buckets and rows, and 3 fresh rows after them
    before = _tables(training.load_ranking_model(yesterday, attention_implementation="composite"))["video_id"]
    assert seen["video_id"].shape == (len(old) + 3 + 4, 8)
    np.testing.assert_array_equal(seen["video_id"][:len(old) + 4], before)
    # another number of OOV buckets is another architecture
    with pytest.raises(InputError, match="another architecture: oov_buckets"):
        training.train(today_examples, str(tmp_path / "other"), config.override("model", oov_buckets={}),
                       warm_start=yesterday, **QUIET)


@pytest.mark.parametrize("argv, message", [
    (["--max_vocab_size", "video_id=0"], "argument --max_vocab_size: video_id: expected an integer >= 1, got '0'"),
    (["--max_vocab_size", "video_id=-5"], "argument --max_vocab_size: video_id: expected an integer >= 1, got '-5'"),
    (["--min_count", "tag=0"], "argument --min_count: tag: expected an integer >= 1, got '0'"),
    (["--oov_buckets", "video_id=0"], "argument --oov_buckets: video_id: expected an integer >= 1, got '0'"),
    (["--oov_buckets", "videos=4"], "argument --oov_buckets: expected FEATURE=N with FEATURE one of user_id, "
                                    "video_id, author_id, tag, got 'videos=4'"),
    (["--max_vocab_size", "1000000"], "argument --max_vocab_size: expected FEATURE=N"),
])
def test_bad_vocabulary_flags_are_one_line(capsys, tiny_examples_dir, tmp_path, argv, message):
    status, err = run_cli(capsys, "train", "--examples", tiny_examples_dir, "--model_dir", str(tmp_path / "m"),
                          *argv)
    assert status == 2 and message in one_line(err)
    assert not os.path.exists(tmp_path / "m")


def test_bad_vocabulary_values_in_a_config_file_are_one_line(capsys, tiny_examples_dir, tmp_path):
    model_dir = tmp_path / "m"
    os.makedirs(model_dir)
    open(model_dir / "keep", "w").close()
    for field, value, message in (
            ("max_vocab_size", {"video_id": 0}, "max_vocab_size of video_id must be an integer >= 1 (a cap of at "
                                                "least 1 id), got 0"),
            ("min_count", {"tag": 0}, "min_count of tag must be an integer >= 1 (a count of at least 1), got 0"),
            ("oov_buckets", {"author": 3}, "oov_buckets names 'author', not an id feature"),
            ("oov_buckets", {"video_id": 2.5}, "oov_buckets of video_id must be an integer >= 1")):
        path = str(tmp_path / "config.json")
        config = tiny_config("ranking").to_dict()
        config["model"][field] = value
        with open(path, "w") as f:
            json.dump(config, f)
        status, err = run_cli(capsys, "train", "--examples", tiny_examples_dir, "--model_dir", str(model_dir),
                              "--config", path, "--restart")
        line = one_line(err)
        assert status == 2 and line.startswith("tfrec-kuai train: error: model config: ") and message in line, err
        assert os.listdir(model_dir) == ["keep"]        # refused before --restart deletes anything
