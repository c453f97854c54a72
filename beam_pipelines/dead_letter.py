"""The dead letter: every row the job cannot use, with its reason and where it was read.

One JSON object a line (``dead_letter/rows-*.jsonl``): ``{"reason", "source": "PATH:BYTE_OFFSET",
"row"}``. ``row`` is the line as read (bytes that are not UTF-8 escaped as ``\\xNN``) for a row
rejected while reading, and the row's 19 values in docs/design.md §3 order for a
``duplicate_event``, which only the per-user step can see. The reasons are those of
``validation.REASONS``; each is also a Beam counter ``build_examples/dead_letter_<reason>``.
"""
from __future__ import annotations

import json

import apache_beam as beam


def dead_letter_json(reason, source, raw):
    """One dead-letter line (``raw``: the line's bytes or text)."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="backslashreplace")
    return json.dumps({"reason": reason, "source": source, "row": raw}, ensure_ascii=True)


class WriteDeadLetter(beam.PTransform):
    """Writes the dead-letter lines of every step to ``OUTPUT/dead_letter/rows-*.jsonl``.

    Applied to a tuple of PCollections of lines (:func:`dead_letter_json`), flattened into one file set.

    Args:
      output: the examples folder being written (the staging folder of ``output_folder.py``).
    """

    def __init__(self, output):
        super().__init__()
        self.output = output

    def expand(self, lines):
        if isinstance(lines, (tuple, list)):
            lines = lines | "Flatten" >> beam.Flatten()
        return lines | "Write" >> beam.io.WriteToText(f"{self.output}/dead_letter/rows", file_name_suffix=".jsonl")
