"""Hand-built KuaiRand-format log rows for the Beam job's tests (never shipped KuaiRand rows), and
a reader of the job's TFRecord shards.

``T0`` is 2022-04-08 10:00 Beijing time in epoch ms, so that a row's ``time_ms`` agrees with its
``date`` / ``hourmin`` as the job checks (``validation.DATE_TOLERANCE_MS``).
"""
import glob
import gzip
import os

from tfrec_kuai.schema import LOG_COLUMNS, local_calendar

T0 = 1649383200000          # 2022-04-08 10:00:00 +08:00
DAY_MS = 86_400_000
HEADER = ",".join(LOG_COLUMNS)


def log_row(**fields):
    """One CSV row in docs/design.md §3 order; ``date`` / ``hourmin`` follow ``time_ms`` unless given."""
    vals = dict.fromkeys(LOG_COLUMNS, "0")
    vals.update(user_id="1", video_id="10", time_ms=str(T0), play_time_ms="4000", duration_ms="5000", tab="1")
    vals.update({k: str(v) for k, v in fields.items()})
    try:
        date, hourmin = (int(v[0]) for v in local_calendar([int(vals["time_ms"])]))
    except ValueError:  # a time_ms that is not a number: the row is bad anyway
        date, hourmin = 20220408, 1000
    if "date" not in fields:
        vals["date"] = str(date)
    if "hourmin" not in fields:
        vals["hourmin"] = str(hourmin // 100 * 100)  # KuaiRand logs a whole hour
    return ",".join(vals[c] for c in LOG_COLUMNS)


def read_records(folder, split):
    """The serialized records of ``folder/split/*.tfrecord.gz``, sorted (read without TensorFlow)."""
    out = []
    for path in glob.glob(os.path.join(folder, split, "*.tfrecord.gz")):
        with gzip.open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
            n = int.from_bytes(data[i:i + 8], "little")
            out.append(data[i + 12:i + 12 + n])
            i += 16 + n
    return sorted(out)


def split_by_date(log_paths, out_dir):
    """Writes the rows of KuaiRand-format logs (with a header) to one file per ``date``.

    Returns ``[(date, path)]`` in date order; each file is ``out_dir/day_<date>.csv`` with the
    header of the first log, the rows in the order read. A simulated log split this way is the
    days of a daily loop (the simulator's ``date`` is the Beijing date of ``time_ms``).
    """
    os.makedirs(out_dir, exist_ok=True)
    header, days = None, {}
    for path in log_paths:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
            if header is None:
                header = first
            assert first == header, f"{path}: another header than {log_paths[0]}"
            at = header.split(",").index("date")
            for line in f:
                days.setdefault(line.split(",", at + 1)[at], []).append(line if line.endswith("\n") else line + "\n")
    out = []
    for date in sorted(days, key=int):
        path = os.path.join(out_dir, f"day_{date}.csv")
        with open(path, "w", encoding="utf-8") as f:
            f.write(header + "\n")
            f.writelines(days[date])
        out.append((int(date), path))
    return out
