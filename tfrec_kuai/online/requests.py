"""Requests for model policies, built from the world's own log by the Beam job's history builder.

A model scores a user *now* from the features the Beam job would have written for an impression
at this moment: the user's events strictly before it, newest first, ``L`` long (docs/design.md §6).
So the request is built by the same code: the user's newest log rows plus a *probe* row at the
request time go through ``beam_pipelines.user_examples.batch_columns`` — the function the Beam
job calls, with the native C++ window builder — and the probe's columns are the request. The
probe's own video is a placeholder; the request features (``user_id, hour, tab, hist_*``) do not
depend on it. There is no second implementation of the windows to drift from the first.
"""
from __future__ import annotations

import numpy as np

from beam_pipelines.side_tables import VideoTable
from beam_pipelines.user_examples import batch_columns
from tfrec_kuai.online.worldlog import video_table_path
from tfrec_kuai.schema import COLUMN_INDEX, LOG_COLUMNS, local_calendar

# Columns of the example that describe the target, not the request (labels aside).
TARGET_FEATURES = ("video_id", "author_id", "tag", "duration_s", "is_rand")


class RequestBuilder:
    """``build(page)`` → ``{§6 feature name: [b] or [b, L] array}`` for the page's users."""

    def __init__(self, world, history_length):
        self.history_length = int(history_length)
        self.video_table = VideoTable.load(video_table_path(world.folder))
        self._probe_video = int(world.catalogue.video_id[0])
        self._probe_duration = int(world.catalogue.duration_ms[0])

    def probe_rows(self, user_ids, time_ms, tab):
        """One log row per request at ``time_ms`` (the placeholder target)."""
        n = len(user_ids)
        C = COLUMN_INDEX
        rows = np.zeros((n, len(LOG_COLUMNS)), np.int64)
        date, hourmin = local_calendar(np.asarray(time_ms, np.int64))
        rows[:, C["user_id"]] = user_ids
        rows[:, C["video_id"]] = self._probe_video
        rows[:, C["date"]], rows[:, C["hourmin"]] = date, hourmin
        rows[:, C["time_ms"]] = time_ms
        rows[:, C["duration_ms"]] = self._probe_duration
        rows[:, C["tab"]] = tab
        return rows

    def build_at(self, histories, user_ids, time_ms, tab):
        """Requests of users whose log rows before ``time_ms`` are ``histories`` ([k, 19] each)."""
        probes = self.probe_rows(user_ids, time_ms, tab)
        items = [(np.concatenate([np.asarray(h, np.int64).reshape(-1, len(LOG_COLUMNS)), probes[i:i + 1]]), len(h))
                 for i, h in enumerate(histories)]
        cols, _ = batch_columns(items, self.video_table, None, self.history_length, eval_dates=())
        return cols

    def build(self, page):
        return self.build_at(page.cohort.recent_rows(page.rows), page.user_ids, page.time_ms, page.tab)
