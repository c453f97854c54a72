"""The server's config files as ``tfrec-kuai export`` and the A/B test write them."""
import os

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.batching import BatchingOptions
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
