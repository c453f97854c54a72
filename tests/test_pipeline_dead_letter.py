"""Every kind of bad row ends in dead_letter/ with its reason, is counted, and the job finishes."""
import glob
import json

import pytest

from beam_pipelines import build_examples
from tfrec_kuai.schema import LOG_COLUMNS

VIDEOS = ("video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
          "server_height,music_id,music_type,tag\n10,500,NORMAL,2022-04-01,Web,0.0,5000.0,720.0,1280.0,1,9.0,7\n"
          "11,501,NORMAL,2022-04-01,Web,0.0,,720.0,1280.0,1,9.0,\n")
USERS = "user_id,user_active_degree,is_video_author\n1,full_active,0\n2,UNKNOWN,1\n"


def row(**kw):
    vals = dict.fromkeys(LOG_COLUMNS, "0")
    vals.update(user_id="1", video_id="10", date="20220408", hourmin="1000", time_ms="1000", play_time_ms="4000",
                duration_ms="5000", tab="1")
    vals.update({k: str(v) for k, v in kw.items()})
    return ",".join(vals[c] for c in LOG_COLUMNS)


GOOD = [row(), row(time_ms=2000, video_id=11), row(user_id=2, time_ms=3000, date=20220409),
        '"1",10,20220409,1000,4000,0,0,0,0,0,0,0,4000,5000,0,0,0,0,1',   # quoted numbers are fine
        row(time_ms=5000, play_time_ms="4000.0")]                          # so is a whole float
BAD = {
    "not_utf8": [row(time_ms=6000).encode().replace(b"20220408", b"2022\xff\xfe08")],
    "broken_quoting": ['1,"10,20220408,1000,7000,0,0,0,0,0,0,0,4000,5000,0,0,0,0,1',
                       '1,10",20220408,1000,7000,0,0,0,0,0,0,0,4000,5000,0,0,0,0,1'],
    "empty_row": [""],
    "wrong_column_count": [row(time_ms=8000) + ",0", "1,10,20220408"],
    "bad_duration": [row(time_ms=9000, duration_ms=0), row(time_ms=9100, duration_ms="")],
    "missing_field": [row(time_ms=9200, play_time_ms="")],
    "non_numeric": [row(time_ms=9300, video_id="abc"), row(time_ms=9400, play_time_ms="1.5")],
    "negative_time": [row(time_ms=-5), row(time_ms=9500, play_time_ms=-1)],
    "out_of_range": [row(time_ms=9600, is_like=2), row(time_ms=9700, date=20221340), row(time_ms=9800, hourmin=2460),
                     row(time_ms=9810, video_id=99999999999999999999)],
    "unknown_video": [row(time_ms=9900, video_id=999)],
    "unknown_user": [row(time_ms=10000, user_id=999)],
    "duplicate_event": [row()],  # the first GOOD row again
}


@pytest.fixture(scope="module")
def dead_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dead")
    (root / "videos.csv").write_text(VIDEOS)
    (root / "users.csv").write_text(USERS)
    lines = [",".join(LOG_COLUMNS).encode()] + [g.encode() for g in GOOD]
    for reason, rows in BAD.items():
        lines += [r if isinstance(r, bytes) else r.encode() for r in rows]
    (root / "log.csv").write_bytes(b"\n".join(lines) + b"\n")
    meta, result = build_examples.run(
        ["--input", str(root / "log.csv"), "--output", str(root / "out"), "--video_features", str(root / "videos.csv"),
         "--user_features", str(root / "users.csv"), "--history_length", "4"], return_result=True)
    dead = [json.loads(line) for f in glob.glob(str(root / "out" / "dead_letter" / "*"))
            for line in open(f) if line.strip()]
    return meta, result, dead


def test_every_reason_in_dead_letter(dead_run):
    meta, _, dead = dead_run
    expected = {reason: len(rows) for reason, rows in BAD.items()}
    got = {}
    for d in dead:
        got[d["reason"]] = got.get(d["reason"], 0) + 1
    assert got == expected
    assert meta["rows"]["dead_letter_by_reason"] == expected


def test_rows_reconcile(dead_run):
    meta, _, _ = dead_run
    rows = meta["rows"]
    n_bad = sum(len(v) for v in BAD.values())
    assert rows["input"] == len(GOOD) + n_bad
    assert rows["used"] == len(GOOD)
    assert rows["input"] == rows["used"] + rows["dead_letter"]
    assert rows["train_examples"] + rows["eval_examples"] == len(GOOD)


def test_dead_letter_keeps_row_and_source(dead_run):
    _, _, dead = dead_run
    by_reason = {d["reason"]: d for d in dead}
    assert "\\xff\\xfe" in by_reason["not_utf8"]["row"]
    assert by_reason["unknown_video"]["row"].split(",")[1] == "999"
    assert by_reason["duplicate_event"]["row"].startswith("1,10,20220408,1000,1000,")
    assert all(":" in d["source"] and d["source"].split(":")[0].endswith("log.csv") for d in dead)


def test_counters_per_reason(dead_run):
    _, result, _ = dead_run
    counters = build_examples.counters(result)
    for reason, rows in BAD.items():
        assert counters.get(f"dead_letter_{reason}") == len(rows), reason
    assert counters["rows_in"] == len(GOOD) + sum(len(v) for v in BAD.values())


def test_user_side_table_features(dead_run):
    meta, _, _ = dead_run
    assert meta["user_feature_names"] == ["user_active_degree", "user_is_video_author"]
    assert meta["user_feature_codes"] == {"user_active_degree": ["UNKNOWN", "full_active"]}
    assert meta["features"]["user_active_degree"] == {"dtype": "int64", "shape": []}
