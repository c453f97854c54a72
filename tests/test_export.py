"""``tfrec-kuai export``: TF Serving layout, the §8 signatures, portable = fused, and the portable
SavedModel loading where stock TF Serving would (a process that never imported tfrec_kuai)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tfrec_kuai.data import examples
from tfrec_kuai.export import saved_model as E
from tfrec_kuai.schema import BINARY_LABELS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _graph_ops(version_dir):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops, saved_model.meta_graphs[0].signature_def


@pytest.fixture(scope="module")
def requests_from_examples(kuai_exports, tiny_examples_dir):
    """Real eval examples as inputs for every signature (4 users, rank over 30 corpus videos)."""
    serialized = examples.read_serialized_examples(tiny_examples_dir, "eval", 4)
    history_length = json.load(open(os.path.join(tiny_examples_dir, "metadata.json")))["history_length"]
    features = E.parse_examples(serialized, history_length)
    corpus = examples.read_corpus(tiny_examples_dir)
    candidates = {k: v[:30] for k, v in corpus.items()}
    return {
        "recommend": E.user_inputs(features),
        "retrieve": E.user_inputs(features),
        "rank": E.rank_inputs(features, candidates),
        "examples": {"inputs": np.array(serialized, dtype=object)},
        "examples_score": {"inputs": np.array(serialized, dtype=object)},
    }, corpus


def _run_all(version_dir, requests):
    loaded = tf.saved_model.load(version_dir)
    return {name: {k: v.numpy() for k, v in loaded.signatures[name](
        **{key: tf.constant(value) for key, value in inputs.items()}).items()} for name, inputs in requests.items()}


def test_tf_serving_layout_and_warmup(kuai_exports):
    from tensorflow_serving.apis import prediction_log_pb2
    for variant in ("fused", "portable"):
        version_dir = kuai_exports[variant]
        assert os.path.basename(version_dir) == "1"
        assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
        assert os.path.isdir(os.path.join(version_dir, "variables"))
        logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
                tf.data.TFRecordDataset(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests"))]
        kinds = {log.WhichOneof("log_type") for log in logs}
        assert kinds == {"predict_log", "classify_log", "regress_log"}
        signatures = {log.predict_log.request.model_spec.signature_name for log in logs if log.predict_log.request.inputs}
        assert signatures == {"recommend", "rank", "retrieve", "recommend_excluding", "retrieve_excluding"}
        # The *_excluding requests carry the extra input (one corpus id and the -1 padding).
        excluding = [tf.make_ndarray(log.predict_log.request.inputs["exclude_video_id"]) for log in logs
                     if log.predict_log.request.model_spec.signature_name.endswith("_excluding")]
        assert len(excluding) == 6 and all(e.shape[1] == 2 and (e[:, 1] == -1).all() for e in excluding)
        # One rank request per user-group size of the XLA path (shared_history.USER_GROUPS).
        assert sorted(log.predict_log.request.inputs["user_id"].tensor_shape.dim[0].size for log in logs
                      if log.predict_log.request.model_spec.signature_name == "rank") == [1, 4, 8]
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    from serving.batching import BatchingOptions
    from serving.model_config import BATCHING_PARAMETERS
    config = text_format.Parse(open(os.path.join(kuai_exports["base"], "models.config")).read(),
                               model_server_config_pb2.ModelServerConfig())
    served = {c.name: c.base_path for c in config.model_config_list.config}
    assert served == {"kuai_portable": os.path.join(os.path.abspath(kuai_exports["base"]), "kuai_portable")}
    # The server's shipped batching parameters, one set for the whole project.
    written = BatchingOptions.from_file(os.path.join(kuai_exports["base"], "batching_parameters.txt"))
    assert vars(written) == vars(BatchingOptions.from_file(BATCHING_PARAMETERS))
    info = json.load(open(os.path.join(kuai_exports["fused"], "assets.extra", "export_info.json")))
    # Which rank path the export chose: the shared-history one only when it matched model(features).
    assert info["rank_path"].startswith(("shared-history path matches", "shared-history path failed",
                                         "shared-history path differs")), info["rank_path"]
    assert not [n for n in os.listdir(os.path.join(kuai_exports["base"], "kuai")) if n.startswith(".tmp")]
    # XLA by default where only this project's server runs the export, not in the portable one.
    portable_info = json.load(open(os.path.join(kuai_exports["portable"], "assets.extra", "export_info.json")))
    assert (info["xla"], portable_info["xla"]) == (True, False)
    assert (info["exclude_history"], portable_info["exclude_history"]) == (True, True)


def test_bucket_sizes_are_few_and_pad_little():
    """XLA compiles once per shape: ``bucket_size`` maps every size to one of a few per octave."""
    from tfrec_kuai.export.shared_history import bucket_size
    n = np.arange(1, 2049)
    for steps in (4, 8):
        sizes = bucket_size(tf.constant(n), steps).numpy()
        assert (sizes >= n).all() and (np.diff(sizes) >= 0).all()
        assert (sizes - n < np.maximum(1, 2 ** np.floor(np.log2(n)) / steps)).all()  # under one step
        assert len(set(sizes[n >= 64])) <= steps * 5 + 1                               # 64..2048: 5 octaves
        assert set(bucket_size(tf.constant(sizes), steps).numpy()) == set(sizes)      # a bucket is its own bucket
    assert int(bucket_size(tf.constant(200))) == 208 and int(bucket_size(tf.constant(100))) == 104
    assert int(bucket_size(tf.constant(0))) == 1


def test_next_version_increases(tmp_path):
    assert E.next_version(str(tmp_path / "missing")) == 1
    for name in ("1", "7", "notes", ".tmp-9-x"):
        (tmp_path / name).mkdir()
    assert E.next_version(str(tmp_path)) == 8


def test_signatures_inputs_are_example_feature_names(kuai_exports):
    from tfrec_kuai import schema
    _, signature_defs = _graph_ops(kuai_exports["portable"])
    assert set(signature_defs) >= set(E.SIGNATURES)
    serving_names = set(schema.SERVING_FEATURE_NAMES)
    for name in ("recommend", "retrieve", "rank", "serving_default"):
        assert set(signature_defs[name].inputs) <= serving_names, name
    assert set(signature_defs["rank"].inputs) >= {"video_id", "author_id", "tag", "duration_s", "hist_video_id"}
    assert [d.size for d in signature_defs["rank"].inputs["video_id"].tensor_shape.dim] == [-1, -1]
    assert set(signature_defs["recommend"].outputs) == set(E.RANK_OUTPUTS) | {"video_id", "retrieval_score"}
    assert set(signature_defs["examples"].outputs) == {"classes", "scores"}
    assert set(signature_defs["examples_score"].outputs) == {"outputs"}


def test_portable_has_no_custom_op_fused_has_it(kuai_exports):
    portable_ops, _ = _graph_ops(kuai_exports["portable"])
    fused_ops, _ = _graph_ops(kuai_exports["fused"])
    assert "FeedbackWeightedAttention" not in portable_ops
    assert "FeedbackWeightedAttention" in fused_ops


def test_portable_and_fused_outputs_match(kuai_exports, requests_from_examples):
    requests, corpus = requests_from_examples
    fused = _run_all(kuai_exports["fused"], requests)
    portable = _run_all(kuai_exports["portable"], requests)
    for signature, outputs in fused.items():
        for key, value in outputs.items():
            if value.dtype.kind in "OSU":
                assert (value == portable[signature][key]).all(), (signature, key)
            else:
                np.testing.assert_allclose(value, portable[signature][key], rtol=1e-4, atol=1e-5,
                                           err_msg=f"{signature}/{key}")
    recommend = fused["recommend"]
    assert recommend["video_id"].shape == (4, 10)
    assert set(recommend["video_id"].ravel()) <= set(corpus["video_id"].tolist())
    assert (np.diff(recommend["score"], axis=1) <= 1e-6).all()  # best first
    for objective in BINARY_LABELS:
        p = recommend[f"p_{objective}"]
        assert ((p >= 0) & (p <= 1)).all()
    assert fused["rank"]["score"].shape == (4, 30) and fused["retrieve"]["video_id"].shape == (4, 50)
    assert fused["examples"]["scores"].shape == (4, 9)
    # recommend's scores are the ranking model's scores of the retrieved videos.
    row_of = {int(v): i for i, v in enumerate(corpus["video_id"])}
    rows = np.vectorize(row_of.get)(recommend["video_id"])
    rank_request = dict(requests["recommend"], **{k: corpus[k][rows] for k in E.CANDIDATE_FEATURES})
    reranked = _run_all(kuai_exports["fused"], {"rank": rank_request})["rank"]
    np.testing.assert_allclose(reranked["score"], recommend["score"], rtol=1e-4, atol=1e-5)


FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, inputs_file, out_file = sys.argv[1:]
loaded = tf.saved_model.load(path)
data = np.load(inputs_file, allow_pickle=True)
out = {}
for signature in ("recommend", "rank"):
    kwargs = {k.split("/", 1)[1]: tf.constant(data[k]) for k in data.files if k.startswith(signature + "/")}
    for key, value in loaded.signatures[signature](**kwargs).items():
        out[f"{signature}/{key}"] = value.numpy()
np.savez(out_file, **out)
assert not any(m == "tfrec_kuai" or m.startswith("tfrec_kuai.") for m in sys.modules), "tfrec_kuai was imported"
print("modules-ok")
"""


@pytest.mark.slow
def test_portable_loads_in_a_fresh_process_without_tfrec_kuai(kuai_exports, requests_from_examples, tmp_path):
    requests, _ = requests_from_examples
    inputs_file = tmp_path / "inputs.npz"
    np.savez(inputs_file, **{f"{s}/{k}": v for s in ("recommend", "rank") for k, v in requests[s].items()})
    out_file = tmp_path / "out.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, kuai_exports["portable"], str(inputs_file),
                             str(out_file)], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "modules-ok" in result.stdout
    fresh = np.load(out_file)
    expected = _run_all(kuai_exports["fused"], {s: requests[s] for s in ("recommend", "rank")})
    for signature, outputs in expected.items():
        for key, value in outputs.items():
            np.testing.assert_allclose(fresh[f"{signature}/{key}"], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_saved_model_cli_lists_named_inputs_and_outputs(kuai_exports):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--dir", kuai_exports["portable"], "--all"], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    for signature in E.SIGNATURES:
        assert f"signature_def['{signature}']" in text
    for name in ("inputs['hist_video_id']", "inputs['video_id']", "outputs['p_skip']", "outputs['video_id']",
                 "outputs['retrieval_score']", "outputs['classes']", "outputs['scores']", "outputs['outputs']"):
        assert name in text, name


@pytest.mark.parametrize("xla", [False, True])
def test_shared_history_rank_path_is_used_only_when_it_matches(tiny_examples_dir, export_model_dirs, xla):
    """shared_history.verify decides (and, the path being the model's own history encoder with
    ``repeat``, it must pick the shared path); rank's outputs are model(features)'s, with the
    XLA-compiled parts too, for batches and candidate counts that are and are not bucket sizes."""
    from tfrec_kuai.export import shared_history
    from tfrec_kuai.train import training
    ranking = training.load_ranking_model(export_model_dirs[0], attention_implementation="composite")
    retrieval = training.load_retrieval_model(export_model_dirs[1], attention_implementation="composite")
    corpus = {k: v[:50] for k, v in examples.read_corpus(tiny_examples_dir).items()}
    L = int(ranking.model_config.history_length)
    module = E.ServingModule(ranking, retrieval, corpus, L, top_n=5, retrieve_k=20, xla=xla)
    assert module.shared_history, module.rank_path_note
    # Under XLA: 17 candidates padded to 18; 13 users = groups of 8, 4 and 1; 3 users = three of
    # one; and the empty requests.
    for users, candidates in ((13, 17), (3, 1), (2, 0), (0, 4)):
        user, cand = shared_history.sample_request(corpus, L, users=users, candidates=candidates, seed=3)
        user = {k: tf.constant(v) for k, v in user.items()}
        cand = {k: tf.constant(v) for k, v in cand.items()}
        served = module._rank_rows(user, cand)
        reference = module._rank_rows_plain(user, cand)
        for name in E.RANK_OUTPUTS:
            assert served[name].shape == (users, candidates)
            np.testing.assert_allclose(served[name].numpy(), reference[name].numpy(), rtol=1e-4, atol=1e-5)
    # One traced ranking function per group size (one in all without XLA), though verify, each
    # request shape above and both ranking signatures call it: a trace goes through every Keras
    # layer and takes seconds, and the SavedModel keeps one copy of each.
    module.signatures()
    assert len(module.rank_programs) == (len(shared_history.USER_GROUPS) if xla else 1)
    assert [p.experimental_get_tracing_count() for p in module.rank_programs.values()] == [1] * len(module.rank_programs)
    user, cand = shared_history.sample_request(corpus, L, users=2, candidates=5, seed=3)
    user = {k: tf.constant(v) for k, v in user.items()}
    cand = {k: tf.constant(v) for k, v in cand.items()}
    reference = module._rank_rows_plain(user, cand)
    # ... and the reference is literally the model on one row per (user, candidate) pair.
    row = {k: v[1:2] for k, v in user.items()}
    row.update({k: v[1, 2:3] for k, v in cand.items()})
    direct = ranking(row)
    np.testing.assert_allclose(reference["score"].numpy()[1, 2], direct["score"].numpy()[0], rtol=1e-4, atol=1e-5)
