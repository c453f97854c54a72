"""The vectorised / native tf.train.Example writers produce what TensorFlow parses back exactly."""
import numpy as np
import pytest

import tfrec_kuai  # noqa: F401
import tensorflow as tf

from beam_pipelines import example_encoder
from tfrec_kuai.schema import example_feature_spec

IMPLS = ["numpy"] + (["native"] if example_encoder.native_available() else [])


def _columns(n, L, seed):
    rng = np.random.default_rng(seed)
    spec = example_feature_spec(L, [("user_active_degree", "int64"), ("user_score", "float32")])
    cols = {}
    for name, d in spec.items():
        shape = (n,) + tuple(d.shape)
        if d.dtype == "int64":  # ids of every varint size, negatives (10 bytes), extremes
            cols[name] = rng.choice([-1, 0, 1, 127, 128, 16383, 16384, 2**35, 2**63 - 1, -(2**63)], size=shape)
        else:
            cols[name] = rng.normal(0, 1e3, shape).astype(np.float32)
    return spec, cols


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("n,L", [(1, 1), (37, 5), (300, 50)])
def test_parse_back_equal(implementation, n, L):
    spec, cols = _columns(n, L, seed=n + L)
    records = example_encoder.encode_examples(cols, spec, implementation=implementation)
    assert len(records) == n and all(isinstance(r, bytes) for r in records)
    tf_spec = {k: tf.io.FixedLenFeature(d.shape, tf.int64 if d.dtype == "int64" else tf.float32)
               for k, d in spec.items()}
    parsed = tf.io.parse_example(records, tf_spec)
    for k in spec:
        np.testing.assert_array_equal(parsed[k].numpy(), cols[k], err_msg=k)
    # the strict proto parser agrees too
    ex = tf.train.Example.FromString(records[0])
    assert set(ex.features.feature) == set(spec)


@pytest.mark.skipif(len(IMPLS) < 2, reason="tfrec_kuai._native not built")
def test_native_bytes_equal_numpy():
    spec, cols = _columns(64, 7, seed=3)
    assert example_encoder.encode_examples(cols, spec, "native") == example_encoder.encode_examples(cols, spec, "numpy")


def test_empty_batch():
    spec, cols = _columns(0, 3, seed=0)
    assert list(example_encoder.encode_examples(cols, spec)) == []


@pytest.mark.parametrize("implementation", IMPLS)
def test_unpickled_column_views_encode(implementation):
    """A user's rows cross a Beam shuffle pickled, and the int columns are strided views of that
    [n, 19] block: their int64 dtype is an equal but not identical object, which a contiguous copy
    keeps and the native writer once refused."""
    import pickle

    spec, cols = _columns(5, 3, seed=4)
    ints = [k for k, d in spec.items() if d.dtype == "int64" and not d.shape]
    block = pickle.loads(pickle.dumps(np.stack([cols[k] for k in ints], axis=1)))
    moved = dict(cols, **{k: block[:, i] for i, k in enumerate(ints)})
    assert moved["user_id"].dtype is not np.dtype(np.int64) and not moved["user_id"].flags["C_CONTIGUOUS"]
    assert example_encoder.encode_examples(moved, spec, implementation) == \
        example_encoder.encode_examples(cols, spec, implementation)
