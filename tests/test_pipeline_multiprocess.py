"""The DirectRunner in multi-process mode, with several read ranges and heavy users cut into pieces,
gives exactly the in-process result."""
import json
import os

import pytest

from beam_pipelines import build_examples
from tests.log_rows import read_records
from tfrec_kuai.schema import VOCAB_FEATURES


@pytest.mark.slow
def test_multi_processing_equals_in_process(tiny_log_dir, tiny_examples_dir, tmp_path):
    out = str(tmp_path / "mp")
    meta = build_examples.run([
        "--input", os.path.join(tiny_log_dir, "log_*.csv"), "--output", out,
        "--video_features", os.path.join(tiny_log_dir, "video_features_basic_sim.csv"),
        "--user_features", os.path.join(tiny_log_dir, "user_features_sim.csv"),
        "--history_length", "50", "--eval_days", "1", "--read_range_mb", "0.05",  # several ranges
        "--encode_batch", "64",  # users cut into pieces
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with open(os.path.join(tiny_examples_dir, "metadata.json")) as f:
        ref = json.load(f)
    for key in ("rows", "date_split", "vocab_sizes", "features"):
        assert meta[key] == ref[key], key
    for split in ("train", "eval"):  # float sums in another order
        assert meta["label_rates"][split] == pytest.approx(ref["label_rates"][split], rel=1e-6)
    for split in ("train", "eval", "corpus"):
        assert read_records(out, split) == read_records(tiny_examples_dir, split), split
    for feature in VOCAB_FEATURES:
        with open(os.path.join(out, "vocab", f"{feature}.txt")) as a, \
                open(os.path.join(tiny_examples_dir, "vocab", f"{feature}.txt")) as b:
            assert a.read() == b.read()
    assert meta["pipeline_options"]["direct_running_mode"] == "multi_processing"
