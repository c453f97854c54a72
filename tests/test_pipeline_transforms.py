"""Each named transform of the Beam job on its own, on hand-written rows (``TestPipeline``, ``assert_that``).

The whole job is checked against known answers elsewhere (``test_pipeline_known_answers.py``,
``test_pipeline_dead_letter.py``); here each step of the chain in ``build_examples.build`` runs
alone, fed what the step before it emits, so that a wrong step is named by its own test.
The pipelines run on the job's local engine, the DirectRunner's FnApiRunner
(``build_examples.local_runner``), not on Beam's Prism runner, which would try to download itself.
"""
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import build_examples, inputs, validation
from beam_pipelines.date_split import EvalDates
from beam_pipelines.dead_letter import WriteDeadLetter, dead_letter_json
from beam_pipelines.examples_by_user import ExamplesByUser
from beam_pipelines.outputs import WriteCorpus, WriteSummary, WriteTFRecords
from beam_pipelines.read_logs import ReadLogs
from beam_pipelines.side_tables import SideTablePaths, side_information
from beam_pipelines.stats import MergeStats
from tests.log_rows import DAY_MS, HEADER, T0, log_row, read_records
from tfrec_kuai.schema import COLUMN_INDEX, example_feature_spec

NO_TABLES = SideTablePaths(None, None)
DAY1, DAY2 = 20220408, 20220409   # the Beijing dates of T0 and T0 + DAY_MS


def _pipeline():
    options = PipelineOptions(["--runner=DirectRunner"])
    return test_pipeline.TestPipeline(runner=build_examples.local_runner(options), options=options)


def _write_log(path, lines):
    """Writes a header and ``lines``; returns the byte offset of each line."""
    data = HEADER + "\n"
    offsets = []
    for line in lines:
        offsets.append(len(data.encode("utf-8")))
        data += line + "\n"
    path.write_text(data, encoding="utf-8")
    return offsets


def _values(*rows):
    """The [n, 19] values of hand-written rows, parsed as the job parses them (all valid)."""
    values, _, rejects = validation.validate_lines([r.encode() for r in rows])
    assert rejects == []
    return values


# --- ReadLogs -----------------------------------------------------------------------------------
def test_read_logs_rows_by_user_and_bad_rows_to_the_dead_letter_with_reason(tmp_path):
    lines = [log_row(user_id=2, video_id=20),
             log_row(user_id=1, video_id=10, time_ms=T0 + 1000),
             log_row(user_id=1, video_id="1O"),               # a letter O: not a number
             "1,2,3",
             log_row(user_id=1, video_id=11, time_ms=T0 + DAY_MS),
             log_row(user_id=3, is_like=2)]                   # a flag is 0 or 1
    offsets = _write_log(tmp_path / "log.csv", lines)
    files, empty = inputs.resolve([str(tmp_path / "log.csv")])
    path = files[0].path
    p = _pipeline()
    logs = p | ReadLogs(files, 1 << 20, NO_TABLES)
    rows = logs.rows | beam.MapTuple(lambda user, g: (user, g[0], g[1][:, COLUMN_INDEX["video_id"]].tolist(),
                                                      g[2].tolist()))
    assert_that(rows, equal_to([(1, path, [10, 11], [offsets[1], offsets[4]]),
                                (2, path, [20], [offsets[0]])]), label="rows")
    assert_that(logs.dead | beam.Map(json.loads), equal_to([
        {"reason": "non_numeric", "source": f"{path}:{offsets[2]}", "row": lines[2]},
        {"reason": "wrong_column_count", "source": f"{path}:{offsets[3]}", "row": lines[3]},
        {"reason": "out_of_range", "source": f"{path}:{offsets[5]}", "row": lines[5]}]), label="dead")
    assert_that(logs.stats, equal_to([{
        "input": 6, "dead": {"non_numeric": 1, "wrong_column_count": 1, "out_of_range": 1},
        "dates": {DAY1: 2, DAY2: 1}, "not_in_side_table": {}}]), label="stats")
    counters = build_examples.counters(p.run())
    assert counters["rows_in"] == 6 and counters["dead_letter_non_numeric"] == 1
    assert counters["dead_letter_wrong_column_count"] == 1 and counters["dead_letter_out_of_range"] == 1
    assert empty == []


def test_read_logs_ranges_read_every_line_once(tmp_path):
    lines = [log_row(user_id=u % 3, video_id=100 + u, time_ms=T0 + u) for u in range(40)]
    offsets = _write_log(tmp_path / "log.csv", lines)
    files, _ = inputs.resolve([str(tmp_path / "log.csv")])
    range_bytes = 250                                 # a line is about 90 bytes: ~15 ranges
    assert len(inputs.split_ranges(files[0], range_bytes)) > 10
    with _pipeline() as p:
        logs = p | ReadLogs(files, range_bytes, NO_TABLES)
        seen = logs.rows | beam.FlatMapTuple(lambda user, g: [(user, int(o)) for o in g[2]])
        assert_that(seen, equal_to([(u % 3, o) for u, o in enumerate(offsets)]), label="every line once")
        total = logs.stats | beam.Map(lambda s: s["input"]) | beam.CombineGlobally(sum)
        assert_that(total, equal_to([40]), label="rows in")


def test_read_logs_counts_rows_the_side_tables_lack(tmp_path):
    (tmp_path / "videos.csv").write_text("video_id,author_id,tag,video_duration\n10,500,7,5000\n")
    (tmp_path / "users.csv").write_text("user_id,user_active_degree\n1,high\n")
    tables = SideTablePaths(str(tmp_path / "videos.csv"), str(tmp_path / "users.csv"))
    _write_log(tmp_path / "log.csv", [log_row(user_id=1, video_id=10), log_row(user_id=1, video_id=99),
                                      log_row(user_id=2, video_id=99)])
    files, _ = inputs.resolve([str(tmp_path / "log.csv")])
    with _pipeline() as p:
        logs = p | ReadLogs(files, 1 << 20, tables)
        assert_that(logs.stats | beam.Map(lambda s: s["not_in_side_table"]),
                    equal_to([{"video_features": 2, "user_features": 1}]), label="misses")
        # the rows are kept: the lookup (and the -1 it gives) is the per-user step's
        assert_that(logs.rows | beam.MapTuple(lambda user, g: (user, len(g[1]))), equal_to([(1, 2), (2, 1)]),
                    label="kept")


# --- EvalDates ----------------------------------------------------------------------------------
@pytest.mark.parametrize("eval_days, expected", [(1, [20220410]), (2, [20220409, 20220410]), (0, []),
                                                 (3, [20220409, 20220410])])   # at least one date trains
def test_eval_dates_are_the_last_dates_of_every_range(eval_days, expected):
    stats = [{"input": 3, "dates": {20220408: 2, 20220410: 1}}, {"input": 5, "dates": {20220409: 5}},
             {"input": 1, "dead": {"empty_row": 1}, "dates": {}}]
    with _pipeline() as p:
        assert_that(p | beam.Create(stats) | EvalDates(eval_days), equal_to([expected]))


def test_eval_dates_of_one_date_or_none_is_no_eval_split():
    with _pipeline() as p:
        assert_that(p | "one" >> beam.Create([{"dates": {20220408: 9}}]) | "of one" >> EvalDates(1),
                    equal_to([[]]), label="one date")
        assert_that(p | "none" >> beam.Create([]) | "of none" >> EvalDates(1), equal_to([[]]), label="no rows")


# --- ExamplesByUser -----------------------------------------------------------------------------
def _decode(record):
    import tensorflow as tf
    f = tf.train.Example.FromString(record).features.feature

    def ints(name):
        return list(f[name].int64_list.value)
    return (ints("user_id")[0], ints("video_id")[0], ints("hist_video_id"), ints("hist_len")[0],
            ints("author_id")[0], ints("tag")[0], ints("hist_author_id"), ints("user_active_degree")[0])


@pytest.fixture
def by_user(tmp_path):
    """ExamplesByUser over two users, one of them read from two files, with side tables that lack ids."""
    (tmp_path / "videos.csv").write_text("video_id,author_id,tag,video_duration\n10,500,7,5000\n11,501,3,8000\n")
    (tmp_path / "users.csv").write_text("user_id,user_active_degree\n1,high\n3,low\n")
    tables = SideTablePaths(str(tmp_path / "videos.csv"), str(tmp_path / "users.csv"))
    _, user_table = tables.load()
    a = _values(log_row(user_id=1, video_id=10), log_row(user_id=1, video_id=11, time_ms=T0 + 60_000))
    b = _values(log_row(user_id=1, video_id=12, time_ms=T0 + 120_000),     # not in the video table
                log_row(user_id=1, video_id=10, time_ms=T0 + DAY_MS),       # the eval date
                log_row(user_id=1, video_id=11, time_ms=T0 + 60_000))       # read again: a duplicate
    c = _values(log_row(user_id=2, video_id=10, time_ms=T0 + 5))            # not in the user table
    rows = [(1, ("b.csv", b, np.array([0, 100, 200]))), (1, ("a.csv", a, np.array([0, 100]))),
            (2, ("a.csv", c, np.array([300])))]
    spec = example_feature_spec(2, user_table.feature_spec)
    return rows, tables, spec, b[2]


def test_examples_by_user_histories_split_and_side_tables(by_user):
    rows, tables, spec, duplicate = by_user
    p = _pipeline()
    eval_dates = p | "EvalDates" >> beam.Create([[DAY2]])
    examples = p | beam.Create(rows) | ExamplesByUser(spec, tables, 2, eval_dates, encode_batch=2)
    # (user, video, history newest first, hist_len, author, tag, history authors, user_active_degree)
    high = 0  # the code of "high": the table's text values in sorted order
    assert_that(examples.train | "train" >> beam.Map(_decode), equal_to([
        (1, 10, [-1, -1], 0, 500, 7, [-1, -1], high),
        (1, 11, [10, -1], 1, 501, 3, [500, -1], high),
        (1, 12, [11, 10], 2, -1, -1, [501, 500], high),   # a video the table lacks: -1, kept
        (2, 10, [-1, -1], 0, 500, 7, [-1, -1], -1)]),      # a user the table lacks: -1 in its columns
        label="train")
    assert_that(examples.eval | "eval" >> beam.Map(_decode), equal_to([
        (1, 10, [12, 11], 2, 500, 7, [-1, 501], high)]), label="eval")
    # the copy read first (a.csv sorts before b.csv) is kept; the other is a dead letter
    assert_that(examples.dead, equal_to([
        dead_letter_json("duplicate_event", "b.csv:200", ",".join(map(str, duplicate.tolist())))]), label="dead")
    merged = examples.stats | MergeStats() | beam.Map(
        lambda s: (s["splits"]["train"]["examples"], s["splits"]["eval"]["examples"], s["dead"], s["ids"]))
    assert_that(merged, equal_to([(4, 1, {"duplicate_event": 1}, {
        "user_id": {1: 3, 2: 1}, "video_id": {10: 2, 11: 1, 12: 1}, "author_id": {500: 2, 501: 1},
        "tag": {7: 2, 3: 1}})]), label="stats")
    counters = build_examples.counters(p.run())
    assert counters["train_examples"] == 4 and counters["eval_examples"] == 1
    assert counters["dead_letter_duplicate_event"] == 1


def test_examples_by_user_picture_posts_are_history_only(by_user):
    _, tables, spec, _ = by_user
    values = _values(log_row(user_id=3, video_id=10), log_row(user_id=3, video_id=11, time_ms=T0 + 1000,
                                                              duration_ms=0, play_time_ms=700),
                     log_row(user_id=3, video_id=12, time_ms=T0 + 2000))
    p = _pipeline()
    eval_dates = p | "EvalDates" >> beam.Create([[]])
    examples = (p | beam.Create([(3, ("a.csv", values, np.arange(3)))])
                | ExamplesByUser(spec, tables, 2, eval_dates))
    assert_that(examples.train | beam.Map(lambda r: _decode(r)[:4]), equal_to([
        (3, 10, [-1, -1], 0), (3, 12, [11, 10], 2)]), label="targets")
    assert_that(examples.stats | MergeStats() | beam.Map(lambda s: (s["history_only"], s["ids"]["video_id"])),
                equal_to([({"picture_post": 1}, {10: 1, 11: 1, 12: 1})]), label="history only")
    assert build_examples.counters(p.run())["history_only_picture_post"] == 1


# --- MergeStats and the writers -----------------------------------------------------------------
def test_merge_stats_adds_counts_and_keeps_the_longest_duration():
    a = {"input": 2, "dead": {"empty_row": 1}, "video_duration_ms": {10: 5000}}
    b = {"input": 3, "dead": {"empty_row": 2, "non_numeric": 1}, "video_duration_ms": {10: 4000, 11: 7}}
    with _pipeline() as p:
        merged = (p | "a" >> beam.Create([a]), p | "b" >> beam.Create([b])) | MergeStats()
        assert_that(merged, equal_to([{"input": 5, "dead": {"empty_row": 3, "non_numeric": 1},
                                       "video_duration_ms": {10: 5000, 11: 7}}]), label="all")
        dates = (p | "c" >> beam.Create([{"input": 1, "dates": {DAY1: 1}}, {"input": 4, "dates": {DAY1: 2}}])
                 | "dates" >> MergeStats(keys=("dates",)))
        assert_that(dates, equal_to([{"dates": {DAY1: 3}}]), label="dates only")


def test_writers_write_the_examples_folder(tmp_path):
    (tmp_path / "videos.csv").write_text("video_id,author_id,tag,video_duration\n10,500,7,5000\n11,501,3,\n")
    tables = SideTablePaths(str(tmp_path / "videos.csv"), None)
    video_table, user_table = tables.load()
    out = str(tmp_path / "out")
    stats = {"input": 5, "dead": {"empty_row": 1}, "dates": {DAY1: 3, DAY2: 1},
             "splits": {"train": {"examples": 3, "label_sums": {}}, "eval": {"examples": 1, "label_sums": {}}},
             "ids": {"video_id": {10: 2, 11: 1}, "user_id": {1: 3}, "author_id": {500: 2, 501: 1}, "tag": {7: 2}},
             "video_duration_ms": {10: 4000, 11: 9000, 12: 1000}}
    meta_kwargs = dict(spec=example_feature_spec(2), history_length=2, user_features=[], user_codes={}, eval_days=1,
                       command="build_examples --test", options={},
                       side_information=side_information(video_table, user_table), inputs={"files": ["log.csv"]})
    with _pipeline() as p:
        merged = p | "stats" >> beam.Create([stats]) | MergeStats()
        merged | WriteCorpus(out, tables)
        metadata = merged | WriteSummary(out, tables, meta_kwargs, vocab_min_count=2)
        assert_that(metadata | beam.Map(lambda m: m["rows"]["corpus_videos"]), equal_to([3]), label="meta")
        p | "records" >> beam.Create([b"r1", b"r2"]) | WriteTFRecords(f"{out}/train")
        (p | "d1" >> beam.Create(["x"]), p | "d2" >> beam.Create(["y"])) | WriteDeadLetter(out)
    assert read_records(out, "train") == [b"r1", b"r2"]
    assert len(read_records(out, "corpus")) == 3          # 10 and 11 (the log's duration), 12 from the log
    with open(os.path.join(out, "vocab", "video_id.txt")) as f:
        assert f.read() == "10\n"                          # 11 was seen once: below vocab_min_count 2
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["rows"]["input"] == 5 and meta["rows"]["dead_letter"] == 1
    assert meta["date_split"]["eval_dates"] == [DAY2] and meta["vocab_min_count"] == 2
    assert meta["side_information"]["video_features"]["videos"] == 2
    dead = [line for name in os.listdir(os.path.join(out, "dead_letter"))
            for line in open(os.path.join(out, "dead_letter", name)).read().split()]
    assert sorted(dead) == ["x", "y"]
