"""The incremental Beam job: a day's examples built from that day's logs with the earlier days as
history (``--history_input``, or the ``--history_state`` the previous day's run wrote) equal the
same day's examples of the full job over every day, row for row and feature for feature.

The log is the shared tiny simulated log (``tests/fixtures_data.py``: 20 users over 4 days), cut
into one file per date (``tests/log_rows.split_by_date``), with a short L so that every user's
history is cut (``rows.history_rows.beyond_window`` > 0): the cut to each user's last L events is
what keeps a day's cost flat, and what these tests show loses nothing. All on the real
DirectRunner (the job's local engine).
"""
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from beam_pipelines import InputError, build_examples
from tests.log_rows import HEADER, log_row, read_records, split_by_date

L = 6

pytestmark = pytest.mark.slow


def _job(log_dir, out, inputs, *extra):
    return build_examples.run(
        ["--input", ",".join(inputs), "--output", str(out),
         "--video_features", os.path.join(log_dir, "video_features_basic_sim.csv"),
         "--user_features", os.path.join(log_dir, "user_features_sim.csv"),
         "--history_length", str(L), "--eval_days", "0", *extra])


@pytest.fixture(scope="module")
def days(tiny_log_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    split = split_by_date([os.path.join(tiny_log_dir, f) for f in ("log_standard_sim.csv", "log_random_sim.csv")],
                          str(root / "days"))
    assert len(split) == 4
    return tiny_log_dir, root, split


@pytest.fixture(scope="module")
def runs(days):
    """The full job over the 4 days; the last day from the earlier logs; the daily chain of states."""
    log_dir, root, split = days
    paths = [p for _, p in split]
    full = _job(log_dir, root / "full", paths)
    from_logs = _job(log_dir, root / "from_logs", paths[-1:], "--history_input", ",".join(paths[:-1]))
    # day 1 is a full run; each later day reads the state the day before wrote and writes its own
    _job(log_dir, root / "chain_1", paths[:1], "--write_history_state", str(root / "state_1"))
    for d in (2, 3):
        _job(log_dir, root / f"chain_{d}", paths[d - 1:d], "--history_state", str(root / f"state_{d - 1}"),
             "--write_history_state", str(root / f"state_{d}"))
    from_state = _job(log_dir, root / "from_state", paths[-1:], "--history_state", str(root / "state_3"))
    # users cut into pieces of 7 rows (history rows sorted among them), on two worker processes
    pieces = _job(log_dir, root / "pieces", paths[-1:], "--history_input", ",".join(paths[:-1]),
                  "--encode_batch", "7", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    return root, split, {"full": full, "from_logs": from_logs, "from_state": from_state, "pieces": pieces}


def _columns(folder):
    from tfrec_kuai.data import examples as data
    batches = list(data.make_dataset(str(folder), "train", batch_size=512))
    cols = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
    order = np.lexsort((cols["video_id"], cols["time_ms"], cols["user_id"]))
    return {k: v[order] for k, v in cols.items()}


def test_last_day_equals_the_full_job_row_for_row(runs):
    root, split, meta = runs
    last_date = split[-1][0]
    full = _columns(root / "full")
    full = {k: v[full["date"] == last_date] for k, v in full.items()}
    assert len(full["user_id"]) > 100
    for name in ("from_logs", "from_state"):
        got = _columns(root / name)
        assert sorted(got) == sorted(full)
        assert len(got["user_id"]) == len(full["user_id"]) == meta[name]["rows"]["train_examples"]
        for feature in full:
            np.testing.assert_array_equal(got[feature], full[feature], err_msg=f"{name}: {feature}")
        # windows reach into the earlier days: the history is really there
        assert (got["hist_len"] == L).all() and (got["hist_age_s"][:, -1] > 0).any()
    # the same serialised records, byte for byte, every way
    records = read_records(str(root / "from_logs"), "train")
    assert records == read_records(str(root / "from_state"), "train") == read_records(str(root / "pieces"), "train")
    assert meta["pieces"]["rows"]["history_rows"] == meta["from_logs"]["rows"]["history_rows"]
    assert not os.path.isdir(root / "from_logs" / "eval") or not read_records(str(root / "from_logs"), "eval")


def test_vocabularies_and_corpus_cover_the_history(runs):
    root, _, meta = runs
    for name in ("from_logs", "from_state"):
        for feature in ("user_id", "video_id", "author_id", "tag"):
            assert (root / name / "vocab" / f"{feature}.txt").read_text() == \
                (root / "full" / "vocab" / f"{feature}.txt").read_text(), (name, feature)
        assert read_records(str(root / name), "corpus") == read_records(str(root / "full"), "corpus")
        assert meta[name]["vocab_sizes"] == meta["full"]["vocab_sizes"]


def test_history_rows_reconcile_and_the_state_is_small(runs):
    root, split, meta = runs
    full_rows = meta["full"]["rows"]
    for name in ("from_logs", "from_state"):
        rows = meta[name]["rows"]
        h = rows["history_rows"]
        assert rows["input"] == rows["used"] + rows["dead_letter"] == rows["train_examples"] + rows["history_only"]
        assert h["input"] == h["dead_letter"] + h["context"] + h["beyond_window"]
        assert h["dead_letter"] == 0 and h["later_than_new_rows"] == 0
        assert h["context"] <= L * 20
        assert meta[name]["date_split"]["train_dates"] == [split[-1][0]]
    logs = meta["from_logs"]["rows"]["history_rows"]
    assert logs["input"] == full_rows["input"] - meta["from_logs"]["rows"]["input"]
    assert logs["beyond_window"] > 0
    assert meta["from_logs"]["history"]["files"] == [p for _, p in split[:-1]]
    assert meta["from_state"]["history"]["state"] == str(root / "state_3")
    state = json.loads((root / "state_3" / "state.json").read_text())
    assert state["history_length"] == L and state["last_date"] == split[-2][0]
    # the state holds each user's last L rows: what the state-fed run read as history
    assert state["rows"] == meta["from_state"]["rows"]["history_rows"]["input"] <= L * state["users"]
    assert meta["from_state"]["rows"]["history_rows"]["beyond_window"] == 0


def test_bad_and_duplicate_history_rows_are_dead_letters_counted_apart(days, tmp_path):
    _, _, split = days
    paths = [p for _, p in split]
    bad = tmp_path / "day_bad.csv"
    with open(paths[-2]) as f:
        lines = f.read().splitlines()
    copy_of_last_row = lines[-1]
    bad.write_text("\n".join(lines + ["1,2,3", copy_of_last_row, "x" + lines[1]]) + "\n")
    meta, result = build_examples.run(
        ["--input", paths[-1], "--output", str(tmp_path / "out"), "--history_input", ",".join(paths[:-2] + [str(bad)]),
         "--history_length", str(L), "--eval_days", "0"], return_result=True)
    rows, h = meta["rows"], meta["rows"]["history_rows"]
    assert rows["dead_letter"] == 0 and rows["input"] == rows["used"]
    assert h["dead_letter_by_reason"] == {"duplicate_event": 1, "non_numeric": 1, "wrong_column_count": 1}
    assert h["input"] == h["dead_letter"] + h["context"] + h["beyond_window"]
    assert h["input"] == sum(len(Path(p).read_text().splitlines()) - 1 for p in paths[:-2]) + len(lines) - 1 + 3
    dead = [json.loads(x) for p in (tmp_path / "out" / "dead_letter").glob("rows-*") for x in p.read_text().splitlines()]
    assert sorted(d["reason"] for d in dead) == ["duplicate_event", "non_numeric", "wrong_column_count"]
    assert all(d["source"].startswith(str(bad) + ":") for d in dead)
    counters = build_examples.counters(result)
    assert counters["history_rows_in"] == h["input"] and counters["rows_in"] == rows["input"]
    assert counters["history_dead_letter_duplicate_event"] == 1


def test_eval_days_still_split_the_new_rows(days, tmp_path):
    _, _, split = days
    paths = [p for _, p in split]
    meta = build_examples.run(["--input", ",".join(paths[-2:]), "--output", str(tmp_path / "out"),
                               "--history_input", ",".join(paths[:-2]), "--history_length", str(L),
                               "--eval_days", "1"])
    assert meta["date_split"] == {"train_dates": [split[-2][0]], "eval_dates": [split[-1][0]], "eval_days": 1}
    assert meta["rows"]["train_examples"] > 0 and meta["rows"]["eval_examples"] > 0


def test_history_errors_are_one_line_and_touch_nothing(days, tmp_path):
    _, _, split = days
    paths = [p for _, p in split]
    base = ["--input", paths[-1], "--output", str(tmp_path / "out"), "--history_length", str(L)]
    with pytest.raises(InputError, match=r"--history_input '.*nothing\*\.csv' matches no file"):
        build_examples.run(base + ["--history_input", str(tmp_path / "nothing*.csv")])
    with pytest.raises(InputError, match="is in both --input and --history_input"):
        build_examples.run(base + ["--history_input", paths[-1]])
    with pytest.raises(InputError, match="no state.json there"):
        build_examples.run(base + ["--history_state", str(tmp_path)])
    state = tmp_path / "state"
    build_examples.run(["--input", paths[0], "--output", str(tmp_path / "day1"), "--history_length", "3",
                        "--write_history_state", str(state)])
    assert json.loads((state / "state.json").read_text())["history_length"] == 3
    with pytest.raises(InputError, match=r"holds the last 3 events per user, fewer than --history_length 6"):
        build_examples.run(base + ["--history_state", str(state)])
    with pytest.raises(InputError, match=r"day_\d+\.csv was already read into --history_state .*the day before"):
        build_examples.run(["--input", paths[0], "--output", str(tmp_path / "out"), "--history_length", "3",
                            "--history_state", str(state)])
    with pytest.raises(InputError, match=r"--write_history_state '.*' is not empty .*--overwrite"):
        build_examples.run(base + ["--write_history_state", str(state)])
    assert not (tmp_path / "out").exists()
    # the same state read and rewritten in one run: replaced whole only once the run succeeded
    meta = build_examples.run(["--input", paths[1], "--output", str(tmp_path / "day2"), "--history_length", "3",
                               "--history_state", str(state), "--write_history_state", str(state), "--overwrite"])
    assert meta["rows"]["history_rows"]["input"] > 0
    assert json.loads((state / "state.json").read_text())["last_date"] == split[1][0]
    assert build_examples.main(base + ["--history_input", str(tmp_path / "nothing*.csv")]) == 2


def test_a_history_only_user_stays_in_the_state(tmp_path):
    """A user of the history with no new row gives no example but keeps their rows in the next state."""
    from tests.log_rows import DAY_MS, T0
    day1 = tmp_path / "d1.csv"
    day1.write_text("\n".join([HEADER] + [log_row(user_id=u, video_id=10 + i, time_ms=T0 + 1000 * i)
                                           for u in (1, 2) for i in range(4)]) + "\n")
    day2 = tmp_path / "d2.csv"
    day2.write_text("\n".join([HEADER, log_row(user_id=1, video_id=99, time_ms=T0 + DAY_MS)]) + "\n")
    meta = build_examples.run(["--input", str(day2), "--output", str(tmp_path / "out"), "--history_input",
                               str(day1), "--history_length", "3", "--eval_days", "0",
                               "--write_history_state", str(tmp_path / "state")])
    assert meta["rows"]["train_examples"] == 1
    assert meta["rows"]["history_rows"] == {"input": 8, "dead_letter": 0, "dead_letter_by_reason": {},
                                            "context": 6, "beyond_window": 2, "later_than_new_rows": 0}
    state_rows = []
    for path in sorted((tmp_path / "state").glob("rows-*.csv.gz")):
        with gzip.open(path, "rt") as f:
            lines = f.read().splitlines()
        assert lines[0] == HEADER
        state_rows += lines[1:]
    users = sorted(int(r.split(",")[0]) for r in state_rows)
    assert users == [1, 1, 1, 2, 2, 2]
    assert any(",99," in r for r in state_rows)
    shutil.rmtree(tmp_path / "out")


def test_history_later_than_new_rows_is_counted(tmp_path):
    """A history day after the new day (out of order): the rows still serve, and are counted."""
    from tests.log_rows import DAY_MS, T0
    later = tmp_path / "later.csv"
    later.write_text("\n".join([HEADER] + [log_row(user_id=1, video_id=20 + i, time_ms=T0 + DAY_MS + 1000 * i)
                                           for i in range(3)]) + "\n")
    new = tmp_path / "new.csv"
    new.write_text("\n".join([HEADER] + [log_row(user_id=1, video_id=10 + i, time_ms=T0 + 1000 * i)
                                         for i in range(2)]) + "\n")
    meta = build_examples.run(["--input", str(new), "--output", str(tmp_path / "out"), "--history_input",
                               str(later), "--history_length", "2", "--eval_days", "0"])
    h = meta["rows"]["history_rows"]
    assert (h["input"], h["context"], h["beyond_window"], h["later_than_new_rows"]) == (3, 2, 1, 2)
    assert meta["rows"]["train_examples"] == 2


def test_an_event_in_both_the_history_and_the_new_rows_is_a_duplicate_of_the_new_rows(tmp_path):
    from tests.log_rows import DAY_MS, T0
    seen = log_row(user_id=1, video_id=10, time_ms=T0 + DAY_MS)
    old = tmp_path / "old.csv"
    old.write_text("\n".join([HEADER, log_row(user_id=1, video_id=9, time_ms=T0), seen]) + "\n")
    new = tmp_path / "new.csv"
    new.write_text("\n".join([HEADER, seen, log_row(user_id=1, video_id=11, time_ms=T0 + DAY_MS + 5000)]) + "\n")
    meta = build_examples.run(["--input", str(new), "--output", str(tmp_path / "out"), "--history_input", str(old),
                               "--history_length", "5", "--eval_days", "0"])
    rows = meta["rows"]
    assert rows["dead_letter_by_reason"] == {"duplicate_event": 1} and rows["train_examples"] == 1
    assert rows["input"] == rows["used"] + rows["dead_letter"]
    assert rows["history_rows"]["context"] == 2 and rows["history_rows"]["dead_letter"] == 0
    (dead,) = [json.loads(x) for p in (tmp_path / "out" / "dead_letter").glob("rows-*") for x in p.read_text().splitlines()]
    assert dead["source"].startswith(str(new) + ":")
    from tfrec_kuai.data import examples as data
    (batch,) = list(data.make_dataset(str(tmp_path / "out"), "train", batch_size=8))
    assert batch["hist_video_id"].numpy()[0, :3].tolist() == [10, 9, -1]


def _rows(*events):
    """[k, 19] rows of user 1: ``(video_id, time offset ms, play ms)`` each."""
    from beam_pipelines import validation
    from tests.log_rows import T0
    lines = [log_row(user_id=1, video_id=v, time_ms=T0 + t, play_time_ms=p).encode() for v, t, p in events]
    values, _, rejects = validation.validate_lines(lines)
    assert not rejects
    return values


def test_cut_keeps_the_last_l_distinct_events_and_the_first_copy_read():
    from beam_pipelines import history_context
    from tfrec_kuai.schema import COLUMN_INDEX as C
    a = _rows((1, 0, 1000), (2, 10, 1000), (3, 20, 1000), (4, 30, 1111))
    b = _rows((4, 30, 2222), (5, 40, 1000), (0, 5, 1000))
    part = lambda path, v: {"paths": (path,), "values": v, "source": np.zeros(len(v), np.int64),  # noqa: E731
                            "offsets": np.arange(len(v), dtype=np.int64) * 100, "beyond_window": 0,
                            "duplicates": []}
    # "b.csv" is read after "a.csv" whichever part comes first: a's copy of (4, 30) is kept
    for parts in ([part("a.csv", a), part("b.csv", b)], [part("b.csv", b), part("a.csv", a)]):
        got = history_context.cut(parts, 3)
        assert got["values"][:, C["video_id"]].tolist() == [3, 4, 5]
        assert got["values"][1, C["play_time_ms"]] == 1111
        assert got["beyond_window"] == 3 and got["paths"] == ("a.csv", "b.csv")
        assert [(p, o) for p, o, _ in got["duplicates"]] == [("b.csv", 0)]
        assert [got["paths"][s] for s in got["source"]] == ["a.csv", "a.csv", "b.csv"]


def test_last_events_keeps_each_users_last_l_rows():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing import test_pipeline
    from apache_beam.testing.util import assert_that, equal_to

    from beam_pipelines.history_context import LastEvents

    options = PipelineOptions(["--runner=DirectRunner"])
    groups = [(1, ("a.csv", _rows((v, 1000 * v, 1000)), np.arange(1, dtype=np.int64) + v)) for v in range(10)]
    groups.append((2, ("a.csv", _rows((7, 0, 1000)), np.zeros(1, np.int64))))
    with test_pipeline.TestPipeline(runner=build_examples.local_runner(options), options=options) as p:
        out = (p | beam.Create(groups) | LastEvents(4)
               | beam.Map(lambda kv: (kv[0], kv[1]["values"][:, 1].tolist(), kv[1]["beyond_window"])))
        assert_that(out, equal_to([(1, [6, 7, 8, 9], 6), (2, [7], 0)]))
