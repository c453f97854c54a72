"""Hand-built KuaiRand-format log rows for the Beam job's tests (never shipped KuaiRand rows).

``T0`` is 2022-04-08 10:00 Beijing time in epoch ms, so that a row's ``time_ms`` agrees with its
``date`` / ``hourmin`` as the job checks (``validation.DATE_TOLERANCE_MS``).
"""
from tfrec_kuai.schema import LOG_COLUMNS, local_calendar

T0 = 1649383200000          # 2022-04-08 10:00:00 +08:00
DAY_MS = 86_400_000
HEADER = ",".join(LOG_COLUMNS)


def log_row(**fields):
    """One CSV row in DESIGN.md §3 order; ``date`` / ``hourmin`` follow ``time_ms`` unless given."""
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
