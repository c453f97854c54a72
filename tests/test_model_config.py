"""The server's config files as ``tfrec-kuai export`` and the A/B test write them."""
import os

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.batching import BatchingOptions, BatchingParameters, shipped_knobs
from serving.model_config import BATCHING_PARAMETERS, pinned_versions, write_model_config, write_serving_configs


def _read(path):
    return text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())


def test_pinned_versions_serve_exactly_their_folder(tmp_path):
    config = _read(write_model_config(str(tmp_path / "models.config"),
                                      pinned_versions({"a": str(tmp_path / "x" / "a" / "3"), "b": "rel/b/12/"})))
    a, b = config.model_config_list.config
    assert (a.name, a.base_path, list(a.model_version_policy.specific.versions)) == (
        "a", str(tmp_path / "x" / "a"), [3])
    assert (b.name, b.base_path, list(b.model_version_policy.specific.versions)) == (
        "b", os.path.abspath("rel/b"), [12])
    assert a.model_platform == "tensorflow"


def test_an_export_base_gets_the_latest_version_and_the_shipped_batching(tmp_path):
    models, batching = write_serving_configs(str(tmp_path), "kuai")
    (entry,) = _read(models).model_config_list.config
    assert entry.base_path == str(tmp_path / "kuai") and entry.model_version_policy.latest.num_versions == 1
    assert vars(BatchingOptions.from_file(batching)) == vars(BatchingOptions.from_file(BATCHING_PARAMETERS))
    os.makedirs(tmp_path / "unbatched")
    assert not os.path.exists(write_serving_configs(str(tmp_path / "unbatched"), "kuai", batching=False)[1])


def test_the_shipped_file_is_the_one_source_of_the_batching_defaults():
    """``BatchingOptions()``, a knob left out of a parameters file or of the constructor: all are
    the shipped file's values, read from it (no second copy of the numbers in code)."""
    params = text_format.Parse(open(BATCHING_PARAMETERS).read(), BatchingParameters())
    shipped = {name: getattr(params, name).value for name in
               ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")}
    assert shipped_knobs() == shipped
    assert {k: vars(BatchingOptions())[k] for k in shipped} == shipped
    partial = BatchingOptions.from_text("max_batch_size { value: 8 }")
    assert {k: vars(partial)[k] for k in shipped} == dict(shipped, max_batch_size=8)
    assert vars(BatchingOptions(num_batch_threads=3))["num_batch_threads"] == 3
