"""The Beam job on inputs it did not make: bad globs and files, re-runs, reordered headers, dates,
picture posts and real-log quirks, damaged gzip, side tables with gaps, CLI misuse.

Every case is a real DirectRunner run (or the launcher's checks before one) on hand-built files in
tmp_path. A bad input must stop the job with one line naming it and leave an existing ``--output``
exactly as it was; a bad row must land in the dead letter with its reason, every row counted.
"""
import gzip
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from beam_pipelines import InputError, build_examples
from beam_pipelines.side_tables import UserTable, VideoTable
from tests.log_rows import DAY_MS, HEADER, T0, log_row, read_records
from tfrec_kuai.schema import LOG_COLUMNS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOUR = 3_600_000
VIDEOS_HEADER = ("video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
                 "server_height,music_id,music_type,tag")


def good_rows(n=12, users=3):
    """``n`` valid rows over two dates (the second date is the eval split)."""
    return [log_row(user_id=i % users, video_id=10 + i % 5, time_ms=T0 + (i // (n // 2)) * DAY_MS + i * 1000)
            for i in range(n)]


def write_log(path, rows, header=HEADER, newline="\n"):
    text = newline.join(([header] if header else []) + rows) + newline
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def run(log, out, *extra):
    return build_examples.run(["--input", str(log), "--output", str(out), "--history_length", "3", *extra])


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture
def existing_output(tmp_path):
    """An examples folder that must survive a failed run untouched."""
    out = tmp_path / "examples"
    (out / "train").mkdir(parents=True)
    (out / "train" / "part-00000-of-00001.tfrecord.gz").write_bytes(b"old shard")
    (out / "metadata.json").write_text('{"old": true}\n')
    return out


def assert_untouched(out, before):
    assert snapshot(out) == before
    assert [p for p in os.listdir(os.path.dirname(out)) if ".building-" in p] == []  # no staging left


# --- 1: nothing to read ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["no_match", "directory", "empty", "header_only", "bom_header_crlf", "blank_lines"])
def test_nothing_to_read_stops_and_keeps_output(tmp_path, existing_output, case):
    logs = tmp_path / "logs"
    logs.mkdir()
    files = {"empty": b"", "header_only": (HEADER + "\n").encode(),
             "bom_header_crlf": ("\ufeff" + HEADER + "\r\n\r\n").encode(), "blank_lines": b"\n\n \n"}
    if case == "no_match":
        pattern, named = str(logs / "log_*.csv"), str(logs / "log_*.csv")
    elif case == "directory":
        pattern = named = str(logs)
    else:
        (logs / "log_a.csv").write_bytes(files[case])
        pattern, named = str(logs / "*.csv"), str(logs / "log_a.csv")
    before = snapshot(existing_output)
    with pytest.raises(InputError) as err:
        run(pattern, existing_output, "--overwrite")  # even with --overwrite
    assert named in str(err.value)
    assert_untouched(existing_output, before)


def test_an_empty_file_beside_good_ones_is_recorded(tmp_path):
    write_log(tmp_path / "log_a.csv", good_rows())
    (tmp_path / "log_b.csv").write_text(HEADER + "\n")
    meta = run(tmp_path / "log_*.csv", tmp_path / "out")
    assert meta["rows"]["input"] == 12
    assert meta["inputs"] == {"files": [str(tmp_path / "log_a.csv")], "empty_files": [str(tmp_path / "log_b.csv")]}


def test_all_rows_rejected_keeps_output_and_names_the_dead_letter(tmp_path, existing_output):
    log = write_log(tmp_path / "log.csv", [log_row(play_time_ms="x"), log_row(date=20990101)])
    before = snapshot(existing_output)
    with pytest.raises(InputError, match="no train example: of 2 rows, 2 were rejected") as err:
        run(log, existing_output, "--overwrite")
    assert snapshot(existing_output) == before
    staging = str(err.value).rsplit("folder (dead letters included) is ", 1)[1].strip("'")
    dead = [json.loads(line) for name in os.listdir(os.path.join(staging, "dead_letter"))
            for line in open(os.path.join(staging, "dead_letter", name))]
    assert sorted(d["reason"] for d in dead) == ["date_mismatch", "non_numeric"]


# --- 2: re-runs --------------------------------------------------------------------------------
def test_rerun_refused_without_overwrite_and_replaced_whole_with_it(tmp_path):
    out = tmp_path / "examples"
    first = run(write_log(tmp_path / "big.csv", good_rows(40, users=5)), out, "--encode_batch", "4")
    old_train = read_records(str(out), "train")
    assert len(old_train) == first["rows"]["train_examples"] > 0
    small = write_log(tmp_path / "small.csv", good_rows(8, users=2))
    before = snapshot(out)
    with pytest.raises(InputError, match="is not empty .*pass --overwrite"):
        run(small, out)
    assert snapshot(out) == before
    meta = run(small, out, "--overwrite")
    with open(out / "metadata.json") as f:
        assert json.load(f) == meta
    for split in ("train", "eval"):
        records = read_records(str(out), split)
        assert len(records) == meta["rows"][f"{split}_examples"], split
    assert meta["rows"]["train_examples"] + meta["rows"]["eval_examples"] == 8
    assert [p for p in os.listdir(tmp_path) if ".building-" in p] == []


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(InputError, match="is a file"):
        run(write_log(tmp_path / "log.csv", good_rows()), tmp_path / "out", "--overwrite")


# --- 3: columns by the header's names ----------------------------------------------------------
def test_header_order_headerless_and_crlf_give_the_same_examples(tmp_path):
    rows = good_rows(12)
    write_log(tmp_path / "canonical.csv", rows)
    perm = list(reversed(range(len(LOG_COLUMNS))))  # user_id last, duration before play time...
    reordered = [",".join(np.array(r.split(","))[perm]) for r in rows]
    write_log(tmp_path / "reordered.csv", reordered, header=",".join(np.array(LOG_COLUMNS)[perm]), newline="\r\n")
    write_log(tmp_path / "headerless.csv", rows, header=None)
    results = {}
    for name in ("canonical", "reordered", "headerless"):
        meta = run(tmp_path / f"{name}.csv", tmp_path / f"out_{name}")
        assert meta["rows"]["dead_letter"] == 0, name
        results[name] = {s: read_records(str(tmp_path / f"out_{name}"), s) for s in ("train", "eval", "corpus")}
    assert results["reordered"] == results["canonical"] == results["headerless"]
    assert len(results["canonical"]["train"]) == 6


@pytest.mark.parametrize("header,named", [
    (HEADER.replace(",tab", ""), "missing column(s) 'tab'"),
    (HEADER.replace("play_time_ms", "play_ms"), "unknown column(s) 'play_ms'"),
    (HEADER.replace("is_rand", "user_id"), "repeated column(s) 'user_id'"),
])
def test_header_missing_or_unknown_column_is_named(tmp_path, existing_output, header, named):
    log = write_log(tmp_path / "log.csv", good_rows(), header=header)
    before = snapshot(existing_output)
    with pytest.raises(InputError) as err:
        run(log, existing_output, "--overwrite")
    assert named in str(err.value) and log in str(err.value)
    assert_untouched(existing_output, before)


# --- 4: dates against time_ms; the split by time_ms's Beijing date --------------------------------
def test_date_checks_and_the_split_boundary(tmp_path):
    apr10 = T0 - 10 * HOUR + 2 * DAY_MS  # 2022-04-10 00:00 Beijing
    rows = [
        log_row(time_ms=T0, video_id=1),                                              # train
        log_row(time_ms=apr10 - 51 * 60_000, date=20220410, hourmin=0, video_id=2),   # 23:09 logged as next day's 0h
        log_row(time_ms=apr10 - 1, date=20220409, hourmin=2300, video_id=3),          # last ms of the 9th: train
        log_row(time_ms=apr10, video_id=4),                                           # first ms of the 10th: eval
        log_row(time_ms=apr10 + 10 * 60_000, video_id=5),                             # eval
        log_row(time_ms=T0 + 5000, date=20990101, video_id=6),                        # not the eval split
        log_row(time_ms=T0 + 6000, date=20220408, hourmin=1200, video_id=7),          # 2 h off
        log_row(time_ms=T0 + 7000, date=20220231, video_id=8),                        # no such day
        log_row(time_ms=T0 + 8000, play_time_ms=2 * DAY_MS, video_id=9),              # absurd play time
    ]
    meta = run(write_log(tmp_path / "log.csv", rows), tmp_path / "out")
    assert meta["rows"]["dead_letter_by_reason"] == {"date_mismatch": 2, "out_of_range": 1, "too_long": 1}
    assert meta["date_split"]["eval_dates"] == [20220410]
    assert meta["date_split"]["train_dates"] == [20220408, 20220409]
    from tfrec_kuai.data import examples as data
    splits = {}
    for split in ("train", "eval"):
        batch = next(iter(data.make_dataset(str(tmp_path / "out"), split, batch_size=10)))
        splits[split] = dict(zip(batch["video_id"].numpy().tolist(), batch["date"].numpy().tolist()))
    assert splits["train"] == {1: 20220408, 2: 20220410, 3: 20220409}  # the logged date is kept as a feature
    assert splits["eval"] == {4: 20220410, 5: 20220410}


# --- 5: picture posts and real-log quirks --------------------------------------------------------
def test_picture_posts_are_history_and_quirks_are_kept(tmp_path):
    videos = "\n".join([VIDEOS_HEADER,
                        "10,500,NORMAL,2022-04-01,Web,0.0,5000.0,720.0,1280.0,1,9.0,7",
                        "11,-124,NORMAL,2022-04-01,Web,0.0,-124,720.0,1280.0,1,9.0,-124",   # missing codes
                        "12,502,NORMAL,2022-04-01,PictureSet,0.0,,720.0,1280.0,1,9.0,3",
                        "13,503,NORMAL,2022-04-01,Web,0.0,2000.0,720.0,1280.0,1,9.0,4",
                        "13,999,NORMAL,2022-04-01,Web,0.0,9000.0,720.0,1280.0,1,9.0,4",     # duplicate id
                        "x,1,broken", ""])
    (tmp_path / "videos.csv").write_text(videos)
    rows = [
        log_row(time_ms=T0, video_id=10, play_time_ms=1000),
        log_row(time_ms=T0 + 1000, video_id=12, duration_ms=0, play_time_ms=5000, is_like=1),   # picture post
        log_row(time_ms=T0 + 2000, video_id=13, duration_ms=2000, play_time_ms=9000),          # replays
        log_row(time_ms=T0 + 3000, video_id=11, duration_ms=60000, play_time_ms=2000, is_click=1),  # click < 7 s
        log_row(time_ms=T0 + 4000, video_id=10, comment_stay_time=12, is_comment=0),
        log_row(time_ms=T0 + DAY_MS, video_id=13, user_id=2),
        log_row(time_ms=T0 + DAY_MS + 1, video_id=999, user_id=3),  # a video the table lacks: kept
    ]
    meta = run(write_log(tmp_path / "log.csv", rows), tmp_path / "out",
               "--video_features", str(tmp_path / "videos.csv"))
    r = meta["rows"]
    assert r["dead_letter"] == 0 and r["history_only_by_reason"] == {"picture_post": 1}
    assert r["input"] == r["used"] + r["dead_letter"] == 7
    assert r["train_examples"] + r["eval_examples"] + r["history_only"] == r["used"]
    side = meta["side_information"]["video_features"]
    assert side["rows_skipped"] == {"broken_row": 1, "duplicate_row": 1} and side["videos"] == 4
    assert side["log_rows_not_in_table"] == 1
    from tfrec_kuai.data import examples as data
    batch = next(iter(data.make_dataset(str(tmp_path / "out"), "train", batch_size=10)))
    cols = {k: v.numpy() for k, v in batch.items()}
    order = np.argsort(cols["time_ms"])
    cols = {k: v[order] for k, v in cols.items()}
    assert cols["video_id"].tolist() == [10, 13, 11, 10]  # the picture post is no target
    last = cols["hist_video_id"][-1].tolist()
    assert last == [11, 13, 12]  # ...but in the history, with its play time and no duration
    assert cols["hist_duration_s"][-1][2] == 0.0 and cols["hist_play_s"][-1][2] == 5.0
    assert cols["hist_feedback"][-1][2] == 16  # like only: skip / valid / long / complete need a duration
    assert cols["label_complete"][1] == 1 and cols["label_watch_ratio"][1] == pytest.approx(4.5)
    assert cols["label_skip"][2] == 1 and cols["label_valid"][2] == 0  # the log's is_click is not copied
    assert cols["author_id"][2] == -1 and cols["tag"][2] == -1  # -124: missing, not a value
    assert 12 in data.read_vocabulary(str(tmp_path / "out"), "video_id")
    evals = {k: v.numpy().tolist() for k, v in next(iter(data.make_dataset(str(tmp_path / "out"), "eval", 10))).items()}
    assert dict(zip(evals["video_id"], evals["author_id"])) == {13: 503, 999: -1}
    corpus = next(iter(data.make_corpus_dataset(str(tmp_path / "out"), 10)))
    assert 11 in corpus["video_id"].numpy().tolist()  # duration from the log: -124 in the table is missing


# --- 6: compressed and odd files -----------------------------------------------------------------
@pytest.mark.parametrize("rows", [20, 3000], ids=["cut_in_the_head", "cut_in_the_pipeline"])
def test_truncated_gzip_fails_naming_the_file(tmp_path, existing_output, rows):
    data = gzip.compress((HEADER + "\n" + "\n".join(good_rows(rows, users=7)) + "\n").encode())
    log = tmp_path / "log.csv.gz"
    log.write_bytes(data[: len(data) * 2 // 3])
    before = snapshot(existing_output)
    with pytest.raises(InputError, match="truncated gzip file") as err:
        run(log, existing_output, "--overwrite")
    assert str(log) in str(err.value)
    assert_untouched(existing_output, before)


def test_gzip_without_gz_name_is_read_as_gzip(tmp_path):
    (tmp_path / "log.csv").write_bytes(gzip.compress((HEADER + "\n" + "\n".join(good_rows()) + "\n").encode()))
    meta = run(tmp_path / "log.csv", tmp_path / "out")
    assert meta["rows"]["input"] == 12 and meta["rows"]["dead_letter"] == 0


@pytest.mark.parametrize("name,content,message", [
    ("log.bin", bytes(range(256)) * 8, "a binary file"),
    ("log.csv.gz", (HEADER + "\n").encode() + b"1,2,3\n", "not one"),
    ("log.csv", b"\xff\xfeuser_id,video_id\n1,2\n", "not UTF-8"),
])
def test_binary_or_misnamed_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        run(tmp_path / name, tmp_path / "out")
    assert str(tmp_path / name) in str(err.value)
    assert not os.path.exists(tmp_path / "out")


# --- 7: side tables --------------------------------------------------------------------------------
def test_side_table_without_header_names_file_and_column(tmp_path):
    (tmp_path / "videos.csv").write_text("10,500,NORMAL,2022-04-01,Web,0.0,5000.0,720.0,1280.0,1,9.0,7\n")
    (tmp_path / "users.csv").write_text("1,full_active,0\n")
    with pytest.raises(InputError, match=r"videos.csv: the video table has no column 'video_id', 'author_id'"):
        VideoTable.load(str(tmp_path / "videos.csv"))
    log = write_log(tmp_path / "log.csv", good_rows())
    with pytest.raises(InputError, match=r"users.csv: the user table has no column 'user_id'"):
        run(log, tmp_path / "out", "--user_features", str(tmp_path / "users.csv"))
    assert not os.path.exists(tmp_path / "out")


def test_user_table_missing_code_duplicates_and_broken_rows(tmp_path):
    (tmp_path / "users.csv").write_text("user_id,user_active_degree,follow_user_num\n"
                                        "1,full_active,-124\n2,-124,7\n2,high_active,8\n3,only two\nabc,x,1\n")
    table = UserTable.load(str(tmp_path / "users.csv"))
    assert table.user_id.tolist() == [1, 2]
    assert table.columns["user_follow_user_num"].tolist() == [-1, 7]
    assert table.columns["user_active_degree"].tolist() == [0, -1]
    assert table.codes["user_active_degree"] == ["full_active"]
    assert table.problems == {"broken_row": 2, "duplicate_row": 1}


# --- 8, 9: logs alone, on the default runner -------------------------------------------------------
def test_logs_alone_on_the_local_direct_runner(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    meta = run(write_log(tmp_path / "log.csv", good_rows()), tmp_path / "out")
    assert meta["side_information"] == {"video_features": None, "user_features": None}
    assert meta["vocab_sizes"]["author_id"] == 0 and meta["vocab_sizes"]["tag"] == 0
    assert (tmp_path / "out" / "vocab" / "author_id.txt").read_text() == ""
    assert meta["rows"]["train_examples"] == 6
    assert meta["pipeline_options"]["runner"] == "DirectRunner"
    assert not [r.getMessage() for r in caplog.records if "prism" in r.getMessage().lower()]


# --- 10, 11: the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--history_length", "0"], "--history_length must be >= 1, got 0"),
    (["--history_length", "abc"], "argument --history_length: invalid int value: 'abc'"),
    (["--eval_days", "-1"], "--eval_days must be >= 0"),
    (["--histroy_length", "5"], "unrecognized arguments: --histroy_length 5"),
    (["--video_features", "/no/such/videos.csv"], "--video_features '/no/such/videos.csv': no such file"),
])
def test_cli_misuse_is_one_line(tmp_path, capsys, flags, message):
    log = write_log(tmp_path / "log.csv", good_rows())
    assert build_examples.main(["--input", log, "--output", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("build_examples: error: ") and message in err[0], err
    assert not os.path.exists(tmp_path / "out")


def test_cli_entry_point_quiet_and_without_traceback(tmp_path):
    """The real ``python -m`` entry: one error line and exit 2 for a truncated gzip file (raised in a
    worker), and the quiet TF_CPP_MIN_LOG_LEVEL set before TensorFlow could load, unless the user
    set one or passed --verbose (then the package default, 1, or the user's stays)."""
    data = gzip.compress((HEADER + "\n" + "\n".join(good_rows(3000, users=7)) + "\n").encode())
    (tmp_path / "log.csv.gz").write_bytes(data[: len(data) // 2])
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFREC_KUAI_TF_LOG_DEFAULTED")}
    proc = subprocess.run([sys.executable, "-m", "beam_pipelines.build_examples", "--input",
                           str(tmp_path / "log.csv.gz"), "--output", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"build_examples: error: {tmp_path / 'log.csv.gz'}: truncated gzip file (the compressed "
                      "stream ends early: Compressed file ended before the end-of-stream marker was reached); "
                      "the file is not read as a shorter one"]
    probe = ("import os, runpy, sys\n"
             "for argv, preset in ((['--input', 'x', '--verbose'], None), (['--input', 'x'], None),"
             " (['--input', 'x'], '0')):\n"
             "    os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None)\n"
             "    os.environ.pop('TFREC_KUAI_TF_LOG_DEFAULTED', None)\n"
             "    if preset: os.environ['TF_CPP_MIN_LOG_LEVEL'] = preset\n"
             "    sys.argv = ['build_examples'] + argv\n"
             "    try: runpy.run_module('beam_pipelines.build_examples', run_name='__main__')\n"
             "    except SystemExit as e: print('exit', e.code, os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    from tfrec_kuai.quiet import QUIET_LEVEL
    assert proc.stdout.split("\n")[:3] == ["exit 2 1", f"exit 2 {QUIET_LEVEL}", "exit 2 0"], proc.stderr
