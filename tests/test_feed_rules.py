"""The feed rules of the export (docs/design.md §8): ``recommend`` / ``retrieve`` never return a video of
the request's history (unless exported with ``--no_exclude_history``) nor one of the extra ids of
``recommend_excluding`` / ``retrieve_excluding``; fused = portable; served = in-process."""
import json
import os

import grpc
import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf

from tfrec_kuai.data import examples
from tfrec_kuai.export import saved_model as E
from tfrec_kuai.schema import BINARY_LABELS
from tests.test_serving_export import _predict, kuai_server, kuai_stub  # noqa: F401  (module fixtures)


@pytest.fixture(scope="module")
def flag_off_export(export_model_dirs, tiny_examples_dir, tmp_path_factory):
    """``tfrec-kuai export --portable --no_exclude_history`` of the same models as ``kuai_exports``."""
    from tfrec_kuai import cli
    ranking_dir, retrieval_dir = export_model_dirs
    base = str(tmp_path_factory.mktemp("flag_off_export"))
    assert cli.main(["export", "--ranking_dir", ranking_dir, "--retrieval_dir", retrieval_dir, "--examples",
                     tiny_examples_dir, "--export_base", base, "--top_n", "10", "--retrieve_k", "50", "--portable",
                     "--no_exclude_history", "--warmup_examples", "0"]) == 0
    return os.path.join(base, "kuai", "1")


@pytest.fixture(scope="module")
def loaded(kuai_exports, flag_off_export):
    """{"fused", "portable", "off"}: the loaded SavedModels' signatures."""
    return {"fused": tf.saved_model.load(kuai_exports["fused"]).signatures,
            "portable": tf.saved_model.load(kuai_exports["portable"]).signatures,
            "off": tf.saved_model.load(flag_off_export).signatures}


@pytest.fixture(scope="module")
def base_request(tiny_examples_dir):
    serialized = examples.read_serialized_examples(tiny_examples_dir, "eval", 4)
    history_length = json.load(open(os.path.join(tiny_examples_dir, "metadata.json")))["history_length"]
    return E.user_inputs(E.parse_examples(serialized, history_length)), examples.read_corpus(tiny_examples_dir)


def _call(signatures, name, inputs):
    return {k: v.numpy() for k, v in signatures[name](**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _with_history(request, corpus, ids_per_row):
    """``request`` with each row's history replaced by ``ids_per_row`` (the corpus's columns for them)."""
    request = {k: v.copy() for k, v in request.items()}
    row_of = {int(v): i for i, v in enumerate(corpus["video_id"])}
    L = request["hist_video_id"].shape[1]
    for b, ids in enumerate(ids_per_row):
        ids = list(ids)[:L]
        rows = [row_of[int(v)] for v in ids]
        n = len(rows)
        for name, column, pad in (("hist_video_id", "video_id", -1), ("hist_author_id", "author_id", -1),
                                  ("hist_tag", "tag", -1), ("hist_duration_s", "duration_s", 0)):
            request[name][b] = pad
            request[name][b, :n] = corpus[column][rows]
        request["hist_play_s"][b] = 0
        request["hist_play_s"][b, :n] = corpus["duration_s"][rows]   # watched to the end
        request["hist_age_s"][b] = 0
        request["hist_age_s"][b, :n] = 60.0 * np.arange(1, n + 1)
        request["hist_feedback"][b] = 0
        request["hist_len"][b] = n
    return request


def _history_sets(request):
    return [set(request["hist_video_id"][b, :request["hist_len"][b]].tolist()) for b in range(len(request["hist_len"]))]


def test_history_is_excluded_by_default_and_returned_with_the_flag_off(loaded, base_request, flag_off_export):
    request, corpus = base_request
    info = json.load(open(os.path.join(flag_off_export, "assets.extra", "export_info.json")))
    assert info["exclude_history"] is False
    # A history made of what the unexcluded recommend returns: put its top videos in the history
    # until the unexcluded answer holds a history video (the top-1 among them), row by row.
    history = [[] for _ in request["hist_len"]]
    for _ in range(4):
        probe = _with_history(request, corpus, history)
        top = _call(loaded["off"], "recommend", probe)["video_id"]
        if all(top[b, 0] in set(h) for b, h in enumerate(history)):
            break
        history = [list(dict.fromkeys([int(top[b, 0])] + h)) for b, h in enumerate(history)]
    off = {name: _call(loaded["off"], name, probe) for name in ("recommend", "retrieve")}
    seen = _history_sets(probe)
    assert sum(off["recommend"]["video_id"][b, 0] in seen[b] for b in range(len(seen))) >= 1, \
        "the request never made a history video the unexcluded top-1"
    assert any(set(off["retrieve"]["video_id"][b].tolist()) & seen[b] for b in range(len(seen)))
    for variant in ("fused", "portable"):
        for name in ("recommend", "retrieve"):
            out = _call(loaded[variant], name, probe)
            for b in range(len(seen)):
                assert not set(out["video_id"][b].tolist()) & seen[b], (variant, name, b)
                assert (out["video_id"][b] >= 0).all()      # the corpus still holds enough videos
            # The videos both answers return score the same: masking changes what is left, not scores.
            for b in range(len(seen)):
                on = dict(zip(out["video_id"][b].tolist(), out["score"][b].tolist()))
                for v, s in zip(off[name]["video_id"][b].tolist(), off[name]["score"][b].tolist()):
                    if v in on:
                        np.testing.assert_allclose(on[v], s, rtol=1e-4, atol=1e-5)
    # Positions past hist_len are padding, not history: they exclude nothing.
    short = {k: v.copy() for k, v in probe.items()}
    short["hist_len"][:] = 0
    np.testing.assert_array_equal(_call(loaded["portable"], "recommend", short)["video_id"],
                                  _call(loaded["off"], "recommend", short)["video_id"])


def test_extra_ids_are_never_returned_and_n_ids_remain(loaded, base_request):
    request, corpus = base_request
    first = _call(loaded["fused"], "recommend", request)["video_id"]
    extra = np.full((len(first), 5), -1, np.int64)
    extra[:, :3] = first[:, :3]                                  # each row's own top 3, then padding
    extra[0, 3] = 10 ** 12                                       # an id the corpus does not hold: no effect
    results = {}
    for variant in ("fused", "portable"):
        for name in ("recommend", "retrieve"):
            out = _call(loaded[variant], f"{name}_excluding", dict(request, exclude_video_id=extra))
            results[variant, name] = out
            for b in range(len(first)):
                assert not set(out["video_id"][b].tolist()) & set(extra[b, :3].tolist()), (variant, name, b)
            assert (out["video_id"] >= 0).all() and np.isfinite(out["score"]).all()
    assert results["fused", "recommend"]["video_id"].shape == first.shape
    for name in ("recommend", "retrieve"):
        np.testing.assert_array_equal(results["fused", name]["video_id"], results["portable", name]["video_id"])
        np.testing.assert_allclose(results["fused", name]["score"], results["portable", name]["score"],
                                   rtol=1e-4, atol=1e-5)
    # With nothing extra (a single -1 column) the *_excluding signatures answer as recommend does.
    none = _call(loaded["fused"], "recommend_excluding", dict(request, exclude_video_id=np.full((len(first), 1), -1)))
    np.testing.assert_array_equal(none["video_id"], first)


def test_fewer_videos_left_than_asked_pads_with_minus_one(loaded, base_request):
    request, corpus = base_request
    ids = corpus["video_id"]
    history = set().union(*_history_sets(request))
    keep = [int(v) for v in ids if int(v) not in history][:3]
    extra = np.tile(np.array([v for v in ids if int(v) not in keep], np.int64)[None], (len(request["hist_len"]), 1))
    for variant in ("fused", "portable"):
        for name, size in (("recommend", 10), ("retrieve", 50)):
            out = _call(loaded[variant], f"{name}_excluding", dict(request, exclude_video_id=extra))
            assert out["video_id"].shape[1] == size
            for b in range(len(request["hist_len"])):
                assert set(out["video_id"][b, :3].tolist()) == set(keep), (variant, name, b)
                assert (out["video_id"][b, 3:] == -1).all()
                assert np.isfinite(out["score"][b, :3]).all() and (out["score"][b, 3:] == -np.inf).all()
            if name == "recommend":
                assert (out["retrieval_score"][:, 3:] == -np.inf).all()
                for key in [f"p_{o}" for o in BINARY_LABELS] + ["watch_s"]:
                    assert (out[key][:, 3:] == 0).all(), key


def test_served_feed_rules_match_in_process(kuai_stub, loaded, base_request):  # noqa: F811
    stub, _ = kuai_stub
    request, _ = base_request
    first = _call(loaded["fused"], "recommend", request)["video_id"]
    extra = np.concatenate([first[:, :2], np.full((len(first), 1), -1)], 1).astype(np.int64)
    for model, variant in (("kuai", "fused"), ("kuai_portable", "portable")):
        for name, inputs in (("recommend", request), ("retrieve", request),
                             ("recommend_excluding", dict(request, exclude_video_id=extra)),
                             ("retrieve_excluding", dict(request, exclude_video_id=extra))):
            served = _predict(stub, model, name, inputs)
            local = _call(loaded[variant], name, inputs)
            np.testing.assert_array_equal(served["video_id"], local["video_id"], err_msg=f"{model}/{name}")
            np.testing.assert_allclose(served["score"], local["score"], rtol=1e-4, atol=1e-5)
            seen = _history_sets(request)
            for b in range(len(first)):
                assert not set(served["video_id"][b].tolist()) & seen[b]
    # An exclude id below -1 is a broken request: INVALID_ARGUMENT naming the input, then the server serves.
    bad = extra.copy()
    bad[1, 2] = -2
    with pytest.raises(grpc.RpcError) as info:
        _predict(stub, "kuai", "recommend_excluding", dict(request, exclude_video_id=bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exclude_video_id" in info.value.details() and ">= -1" in info.value.details()
    assert _predict(stub, "kuai", "recommend_excluding", dict(request, exclude_video_id=extra))["video_id"].shape == \
        first.shape


def test_client_command_passes_extra_ids(kuai_server, tiny_examples_dir, capsys):  # noqa: F811
    """``python -m serving.client --signature recommend_excluding --feature exclude_video_id=...``."""
    from serving import client
    target = ["--server", f"127.0.0.1:{kuai_server[0]}", "--examples", tiny_examples_dir, "--count", "1"]
    assert client.main(target + ["--signature", "recommend"]) == 0
    table = capsys.readouterr().out.splitlines()[1:]              # past the "model ... signature" line
    assert client.main(target + ["--signature", "recommend_excluding", "--feature", "exclude_video_id=-1"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == table
    def ids(lines):
        return [line.split()[1] for line in lines if line.split()[:1] and line.split()[0].isdigit()]
    first = ids(table)[0]
    assert client.main(target + ["--signature", "recommend_excluding", "--feature", f"exclude_video_id={first},-1"]) == 0
    assert first not in ids(capsys.readouterr().out.splitlines()[1:])
