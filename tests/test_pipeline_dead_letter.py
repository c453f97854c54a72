"""Every kind of bad row ends in dead_letter/ with its reason, is counted, and the job finishes."""
import glob
import json

import pytest

from beam_pipelines import build_examples
from tests.log_rows import DAY_MS, HEADER, T0, log_row

VIDEOS = ("video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
          "server_height,music_id,music_type,tag\n10,500,NORMAL,2022-04-01,Web,0.0,5000.0,720.0,1280.0,1,9.0,7\n"
          "11,501,NORMAL,2022-04-01,Web,0.0,,720.0,1280.0,1,9.0,\n")
USERS = "user_id,user_active_degree,is_video_author\n1,full_active,0\n2,UNKNOWN,1\n"


def row(t=0, **kw):
    """A row ``t`` ms after ``T0`` (date and hourmin follow)."""
    return log_row(time_ms=T0 + t, **kw)


GOOD = [row(), row(1000, video_id=11), row(DAY_MS + 2000, user_id=2),
        '"1",10,20220409,1000,%d,0,0,0,0,0,0,0,4000,5000,0,0,0,0,1' % (T0 + DAY_MS + 3000),  # quoted numbers
        row(4000, play_time_ms="4000.0")]                                                        # a whole float
# ids the side tables lack: kept (author, tag and user columns -1) and counted, not rejected
NOT_IN_TABLES = [row(9900, video_id=999), row(10000, user_id=999)]
BAD = {
    "not_utf8": [row(5000).encode().replace(b"20220408", b"2022\xff\xfe08")],
    "broken_quoting": [row(6000).replace("1,10,", '1,"10,', 1), row(6000).replace("1,10,", '1,10",', 1)],
    "empty_row": [""],
    "wrong_column_count": [row(7000) + ",0", "1,10,20220408"],
    "bad_duration": [row(8000, duration_ms=-5), row(8100, duration_ms="")],
    "missing_field": [row(8200, play_time_ms="")],
    "non_numeric": [row(8300, video_id="abc"), row(8400, play_time_ms="1.5"),
                    row(8500, play_time_ms="1_000"),                 # int() takes underscores
                    row(8600, video_id="\u0661\u0662")],             # and Arabic-Indic digits
    "negative_time": [log_row(time_ms=-5), row(9500, play_time_ms=-1)],
    "out_of_range": [row(9600, is_like=2), row(9700, date=20221340), row(9710, date=20220231),
                     row(9800, hourmin=2460), row(9810, video_id=99999999999999999999)],
    "too_long": [row(9820, play_time_ms=25 * 3600 * 1000), row(9830, duration_ms=2 * DAY_MS)],
    "date_mismatch": [row(9840, date=20990101), row(9850, hourmin=1300)],
    "duplicate_event": [row()],  # the first GOOD row again
}


@pytest.fixture(scope="module")
def dead_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dead")
    (root / "videos.csv").write_text(VIDEOS)
    (root / "users.csv").write_text(USERS)
    lines = [HEADER.encode()] + [g.encode() for g in GOOD + NOT_IN_TABLES]
    for rows in BAD.values():
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
    good = len(GOOD) + len(NOT_IN_TABLES)
    assert rows["input"] == good + n_bad
    assert rows["used"] == good
    assert rows["input"] == rows["used"] + rows["dead_letter"]
    assert rows["train_examples"] + rows["eval_examples"] == good


def test_ids_the_side_tables_lack_are_kept_and_counted(dead_run):
    side = dead_run[0]["side_information"]
    assert side["video_features"]["log_rows_not_in_table"] == 1
    assert side["user_features"]["log_rows_not_in_table"] == 1
    assert side["video_features"]["videos"] == 2 and side["user_features"]["users"] == 2


def test_dead_letter_keeps_row_and_source(dead_run):
    _, _, dead = dead_run
    by_reason = {d["reason"]: d for d in dead}
    assert "\\xff\\xfe" in by_reason["not_utf8"]["row"]
    assert "abc" in [d["row"].split(",")[1] for d in dead if d["reason"] == "non_numeric"]
    assert by_reason["duplicate_event"]["row"].startswith(f"1,10,20220408,1000,{T0},")
    assert all(":" in d["source"] and d["source"].split(":")[0].endswith("log.csv") for d in dead)


def test_counters_per_reason(dead_run):
    _, result, _ = dead_run
    counters = build_examples.counters(result)
    for reason, rows in BAD.items():
        assert counters.get(f"dead_letter_{reason}") == len(rows), reason
    assert counters["rows_in"] == len(GOOD) + len(NOT_IN_TABLES) + sum(len(v) for v in BAD.values())


def test_user_side_table_features(dead_run):
    meta, _, _ = dead_run
    assert meta["user_feature_names"] == ["user_active_degree", "user_is_video_author"]
    assert meta["user_feature_codes"] == {"user_active_degree": ["UNKNOWN", "full_active"]}
    assert meta["features"]["user_active_degree"] == {"dtype": "int64", "shape": []}


def test_the_model_side_reads_a_partial_video_table(dead_run):
    """A video the side table lacks is out-of-vocabulary for the model, and what the trainer, the
    evaluation and the report print about the side information says the table was partial."""
    import shlex
    from tfrec_kuai.data import examples as data
    argv = shlex.split(dead_run[0]["command"])
    out = argv[argv.index("--output") + 1]
    info = data.side_information(out)
    assert info["video_features"]["status"] == "partial"
    assert info["video_features"]["videos_without_author_or_tag"] == 1
    assert info["user_features"]["status"] == "present" and info["absent"] == []
    assert "video table partial (1 of" in data.describe_side_information(info)
