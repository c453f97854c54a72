"""``serving.client``'s building blocks with explicit arguments, on a real examples folder; the
request path against a running server is in test_serving_export.py and test_serving_faults.py."""
import numpy as np
import pytest
import tensorflow as tf

from serving import client
from tfrec_kuai.data import examples


def test_example_features_are_what_the_reader_parses(tiny_examples_dir):
    record, = examples.read_serialized_examples(tiny_examples_dir, "eval", 1)
    spec = examples.feature_spec(examples.load_metadata(tiny_examples_dir))
    parsed = {k: v.numpy()[0] for k, v in tf.io.parse_example([record], spec).items()}
    rows = client.example_features(record)
    assert set(rows) == set(parsed)
    for name, value in parsed.items():
        np.testing.assert_allclose(np.asarray(rows[name]).reshape(np.shape(value)), value, rtol=1e-6)


def test_candidates_by_id_or_the_first_of_the_corpus(tiny_examples_dir):
    corpus = examples.read_corpus(tiny_examples_dir)
    first = client.pick_candidates(corpus, count=3)
    assert first["video_id"] == corpus["video_id"][:3].tolist()
    wanted = [int(corpus["video_id"][5]), int(corpus["video_id"][1])]
    picked = client.pick_candidates(corpus, wanted)
    assert picked["video_id"] == wanted and picked["tag"] == [corpus["tag"][5].item(), corpus["tag"][1].item()]
    with pytest.raises(SystemExit, match="not in the corpus"):
        client.pick_candidates(corpus, [-5])


def test_an_examples_folder_without_examples_is_one_line_before_any_request(tmp_path):
    # No server listens at port 9 of 127.0.0.1: had the client sent a request first, the answer
    # would be gRPC UNAVAILABLE.
    with pytest.raises(SystemExit) as info:
        client.main(["--server", "127.0.0.1:9", "--examples", str(tmp_path), "--timeout", "2"])
    message = str(info.value)
    assert str(tmp_path) in message and "has no train examples" in message and "\n" not in message
