"""build_examples on hand-written logs whose examples are known: labels, histories, the date split."""
import gzip
import json
import os

import numpy as np
import pytest

from beam_pipelines import build_examples
from tfrec_kuai.data import examples as data
from tests.log_rows import T0
from tfrec_kuai.schema import LOG_COLUMNS

VIDEOS = """video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,server_height,music_id,music_type,tag
10,500,NORMAL,2022-04-01,Web,0.0,5000.0,720.0,1280.0,1,9.0,"7,8"
11,501,NORMAL,2022-04-01,Web,0.0,8000.0,720.0,1280.0,1,9.0,3
12,502,NORMAL,2022-04-01,Web,0.0,,720.0,1280.0,1,9.0,
13,503,NORMAL,2022-04-01,Web,0.0,2000.0,720.0,1280.0,1,9.0,4
14,504,NORMAL,2022-04-01,Web,0.0,,720.0,1280.0,1,9.0,4
"""
DAY2 = 90_000_000  # 25 h after T0 (2022-04-08 10:00 Beijing): the 9th, 11:00, logged as hour 10


def row(user, video, date, time_ms, play, dur, like=0, hate=0, is_rand=0, tab=1):
    vals = dict.fromkeys(LOG_COLUMNS, 0)
    vals.update(user_id=user, video_id=video, date=date, hourmin=1000, time_ms=T0 + time_ms, play_time_ms=play,
                duration_ms=dur, is_like=like, is_hate=hate, is_rand=is_rand, tab=tab)
    return ",".join(str(vals[c]) for c in LOG_COLUMNS)


ROWS = [
    row(1, 10, 20220408, 1000, 1000, 5000),              # skip (1 s < 3 s)
    row(1, 12, 20220408, 2000, 20000, 60000),            # valid, long, not complete; same time as next
    row(1, 11, 20220408, 2000, 8000, 8000, like=1),      # valid, long, complete, like
    row(1, 13, 20220409, DAY2, 2999, 2000, hate=1),      # not a skip: a 2 s video played 3 s; complete
    row(2, 10, 20220409, DAY2 + 5, 100, 5000, is_rand=1, tab=4),
]


@pytest.fixture(scope="module")
def known_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    (root / "videos.csv").write_text(VIDEOS)
    header = ",".join(LOG_COLUMNS)
    # a header behind a UTF-8 byte-order mark, Windows line ends
    (root / "log_a.csv").write_bytes(("\ufeff" + header + "\r\n" + "\r\n".join(ROWS[:3]) + "\r\n").encode("utf-8"))
    with gzip.open(root / "log_b.csv.gz", "wt") as f:  # gzip input, no header line
        f.write("\n".join(ROWS[3:]) + "\n")
    out = root / "examples"
    meta = build_examples.run(["--input", str(root / "log_*"), "--output", str(out), "--video_features",
                               str(root / "videos.csv"), "--history_length", "3", "--eval_days", "1"])
    return str(out), meta


def _read(out, split):
    batches = list(data.make_dataset(out, split, batch_size=100))
    cols = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
    order = np.lexsort((cols["video_id"], cols["time_ms"], cols["user_id"]))
    return {k: v[order] for k, v in cols.items()}


def test_counts_and_date_split(known_dir):
    out, meta = known_dir
    assert meta["rows"]["input"] == 5 and meta["rows"]["used"] == 5 and meta["rows"]["dead_letter"] == 0
    assert meta["date_split"] == {"train_dates": [20220408], "eval_dates": [20220409], "eval_days": 1}
    train, evals = _read(out, "train"), _read(out, "eval")
    assert train["video_id"].tolist() == [10, 11, 12] and set(train["date"]) == {20220408}
    assert evals["video_id"].tolist() == [13, 10] and evals["user_id"].tolist() == [1, 2]
    assert meta["rows"]["train_examples"] == 3 and meta["rows"]["eval_examples"] == 2


def test_labels(known_dir):
    train, evals = _read(known_dir[0], "train"), _read(known_dir[0], "eval")
    # rows in order: v10 (skip), v11 (complete+like), v12 (long, not complete)
    assert train["label_skip"].tolist() == [1, 0, 0]
    assert train["label_valid"].tolist() == [0, 1, 1]
    assert train["label_long"].tolist() == [0, 1, 1]
    assert train["label_complete"].tolist() == [0, 1, 0]
    assert train["label_like"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(train["label_watch_s"], [1.0, 8.0, 20.0])
    np.testing.assert_allclose(train["label_watch_ratio"], [0.2, 1.0, 1 / 3], rtol=1e-6)
    u1 = evals["user_id"] == 1
    assert evals["label_skip"][u1].tolist() == [0] and evals["label_complete"][u1].tolist() == [1]
    assert evals["label_hate"][u1].tolist() == [1]
    np.testing.assert_allclose(evals["label_watch_ratio"][u1], [1.4995], rtol=1e-6)
    # video side table: author, first tag; video 12 has no tag -> -1
    assert train["author_id"].tolist() == [500, 501, 502] and train["tag"].tolist() == [7, 3, -1]
    assert evals["is_rand"].tolist() == [0, 1] and evals["tab"].tolist() == [1, 4]


def test_histories_strictly_earlier_newest_first(known_dir):
    train, evals = _read(known_dir[0], "train"), _read(known_dir[0], "eval")
    assert train["hist_len"].tolist() == [0, 1, 1]
    # v11 and v12 share a timestamp: each sees only v10
    assert train["hist_video_id"].tolist() == [[-1, -1, -1], [10, -1, -1], [10, -1, -1]]
    u1 = evals["user_id"] == 1
    assert evals["hist_video_id"][u1].tolist() == [[12, 11, 10]]  # same-time tie broken by video id
    np.testing.assert_allclose(evals["hist_age_s"][u1], [[(DAY2 - 2000) / 1000, (DAY2 - 2000) / 1000,
                                                          (DAY2 - 1000) / 1000]])
    np.testing.assert_allclose(evals["hist_play_s"][u1], [[20.0, 8.0, 1.0]])
    np.testing.assert_allclose(evals["hist_duration_s"][u1], [[60.0, 8.0, 5.0]])
    # feedback bits: v12 valid|long = 6, v11 valid|long|complete|like = 30, v10 skip = 1
    assert evals["hist_feedback"][u1].tolist() == [[6, 30, 1]]
    assert evals["hist_author_id"][u1].tolist() == [[502, 501, 500]]
    assert evals["hist_tag"][u1].tolist() == [[-1, 3, 7]]
    # user 2 has no earlier event; no other user's events leak in
    assert evals["hist_len"][~u1].tolist() == [0]
    # no history event at or after the target's time, anywhere
    for cols in (train, evals):
        valid = np.arange(3)[None, :] < cols["hist_len"][:, None]
        assert np.all(cols["hist_age_s"][valid] > 0)


def test_vocab_corpus_and_metadata(known_dir):
    out, meta = known_dir
    # vocabularies count the train split only, most frequent first
    assert data.read_vocabulary(out, "video_id") == [10, 11, 12]
    assert data.read_vocabulary(out, "user_id") == [1]
    assert data.read_vocabulary(out, "tag") == [3, 7]
    corpus = list(data.make_corpus_dataset(out, batch_size=10))[0]
    # video 12 has no table duration but the log gives one (60 s); video 14 has neither: left out
    assert corpus["video_id"].numpy().tolist() == [10, 11, 12, 13]
    np.testing.assert_allclose(corpus["duration_s"].numpy(), [5.0, 8.0, 60.0, 2.0])
    assert meta["rows"]["corpus_videos_without_duration"] == 1
    assert meta["command"].startswith("python -m beam_pipelines.build_examples --input")
    assert meta["label_rates"]["train"]["label_skip"] == pytest.approx(1 / 3)
    with open(os.path.join(out, "metadata.json")) as f:
        assert json.load(f)["history_length"] == 3
