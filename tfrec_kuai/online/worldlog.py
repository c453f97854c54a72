"""The logs of a ``tfrec-kuai simulate`` folder, read with the Beam job's own row parser.

The world continues that log: its rows are the users' history (the first requests' windows), what
they have already seen (``repeat_rate``, exclusion) and the popularity the ``popular`` policy
ranks by. Parsed by ``beam_pipelines.validation.parse_lines`` — the rows a model was trained on
are read the same way — and a row it rejects is an error here: the folder is the simulator's.
"""
from __future__ import annotations

import os

import numpy as np

from beam_pipelines.validation import parse_lines
from tfrec_kuai.errors import InputError
from tfrec_kuai.schema import LOG_COLUMNS
from tfrec_kuai.sim.simulator import RANDOM_LOG, STANDARD_LOG, VIDEO_TABLE


def read_world_log(folder):
    """All rows of the folder's standard and random logs, [n, 19] int64 in docs/design.md §3 order."""
    parts = []
    for name in (STANDARD_LOG, RANDOM_LOG):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise InputError(f"--world {folder}: {name} missing (expected a `tfrec-kuai simulate` output folder)")
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        if lines and lines[0].startswith(b"user_id,"):
            if lines[0].decode("utf-8", "replace").split(",") != list(LOG_COLUMNS):
                raise InputError(f"{path}: the header is not KuaiRand's 19 columns")
            lines = lines[1:]
        values, _, rejects = parse_lines(lines)
        if rejects:
            index, reason = rejects[0]
            raise InputError(f"{path}: {len(rejects)} row(s) the Beam job would reject, "
                             f"the first at data line {index + 1} ({reason})")
        parts.append(values)
    return np.concatenate(parts)


def video_table_path(folder):
    return os.path.join(folder, VIDEO_TABLE)
