"""The job's input files: globs to files, each file's compression and header, byte ranges, lines.

Everything a file says about itself is read once, by the launcher, before the pipeline is built
(:func:`resolve`): a mistyped glob, a directory, a binary file or a file of only a header stops the
job there, with a message naming it, before anything is written. Each file's column order comes
from its header and travels with each of its byte ranges, because a range other than the first
never sees the header.

Header rule. The first line is the header when any of its fields is not a number; its names are
mapped to docs/design.md §3's 19 columns, in whatever order they come (a missing, unknown or repeated
name is an error naming it). A file whose first line is all numbers has no header and is read in
§3's order: docs/design.md §3 fixes that order, and KuaiRand's own files and the simulator's follow it,
so a headerless file in that order is the common case of a header stripped by ``tail -n +2`` or
a split; rejecting it would refuse good data, while a misordered headerless file is mostly caught
by the row checks (dates against ``time_ms``, flags 0/1, durations) and lands in the dead letter.

Compression: ``.gz`` / ``.gzip`` files — and files that start with gzip's magic bytes whatever
their name — are read with Python's ``gzip`` module, which raises on a truncated stream (Beam's
reader ends quietly at the cut); other compressed suffixes go through Beam's ``AUTO`` reader.
A compressed file is one range (its offsets are in decompressed bytes).
"""
from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections import namedtuple

from beam_pipelines import InputError
from beam_pipelines.validation import NUM_COLUMNS, is_number
from tfrec_kuai.schema import LOG_COLUMNS

GZIP_MAGIC = b"\x1f\x8b"
_GZIP_SUFFIXES = (".gz", ".gzip")
_OTHER_COMPRESSED = (".bz2", ".zst", ".zstd", ".deflate", ".lzma", ".xz")
_HEAD_BYTES = 64 << 10
_BOM = b"\xef\xbb\xbf"

InputFile = namedtuple("InputFile", ["path", "size", "compression", "order", "has_header"])
"""``compression``: ``"gzip"``, ``"auto"`` (Beam decides by suffix) or ``"none"``; ``order``: for each
§3 column its position in the file (None: §3 order); ``has_header``: skip the first line."""


def _is_local(path):
    return "://" not in path


def absolute(path):
    """``path`` made absolute when it is local (a URL such as ``gs://`` stays as it is).

    Every path a worker opens is carried absolute: on a portable runner (``--runner=PortableRunner``,
    Flink, Spark, Dataflow) the workers are other processes, started in another folder, and a
    path relative to the launcher's folder would name another file there, or none.
    """
    return os.path.abspath(path) if path is not None and _is_local(path) else path


def _open_raw(path):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def open_stream(path, compression):
    """A binary stream of the file's decompressed bytes (gzip: Python's reader, which checks the end)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    if compression == "gzip":
        return gzip.GzipFile(fileobj=_open_raw(path), mode="rb")
    kind = CompressionTypes.AUTO if compression == "auto" else CompressionTypes.UNCOMPRESSED
    return FileSystems.open(path, compression_type=kind)


def read_checked(stream, path, size):
    """``stream.read(size)``, with a damaged gzip stream turned into an :class:`InputError` naming the file."""
    try:
        return stream.read(size)
    except EOFError as e:
        raise InputError(f"{path}: truncated gzip file (the compressed stream ends early: {e}); "
                         "the file is not read as a shorter one") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise InputError(f"{path}: corrupt compressed data ({e})") from None


def column_order(path, first_line):
    """``(order, has_header)`` of a file from its first line (see the module docstring)."""
    fields = [f.strip().strip('"').strip() for f in first_line.split(",")]
    if all(not f or is_number(f) for f in fields):
        return None, False
    seen, unknown, repeated = {}, [], []
    for i, name in enumerate(fields):
        if name not in LOG_COLUMNS:
            unknown.append(name)
        elif name in seen:
            repeated.append(name)
        else:
            seen[name] = i
    missing = [c for c in LOG_COLUMNS if c not in seen]
    problems = []
    if unknown:
        problems.append("unknown column(s) " + ", ".join(repr(u) for u in unknown))
    if repeated:
        problems.append("repeated column(s) " + ", ".join(repr(r) for r in repeated))
    if missing:
        problems.append("missing column(s) " + ", ".join(repr(m) for m in missing))
    if problems:
        raise InputError(f"{path}: bad header: {'; '.join(problems)} (a log has the {NUM_COLUMNS} columns of "
                         f"docs/design.md §3, in any order: {', '.join(LOG_COLUMNS)})")
    order = tuple(seen[c] for c in LOG_COLUMNS)
    return (None if order == tuple(range(NUM_COLUMNS)) else order), True


def inspect(path, size):
    """The :class:`InputFile` of one file, or None when it holds no row (empty or only a header)."""
    lower = path.lower()
    with _open_raw(path) as raw:
        magic = raw.read(2)
    if lower.endswith(_GZIP_SUFFIXES):
        if size and magic != GZIP_MAGIC:
            raise InputError(f"{path}: named like a gzip file but is not one (it does not start with gzip's "
                             "magic bytes); rename it or compress it")
        compression = "gzip"
    elif magic == GZIP_MAGIC:
        logging.warning("%s is gzip-compressed but not named .gz: read as gzip", path)
        compression = "gzip"
    elif lower.endswith(_OTHER_COMPRESSED):
        compression = "auto"
    else:
        compression = "none"
    if size == 0:
        return None
    with open_stream(path, compression) as f:
        head = read_checked(f, path, _HEAD_BYTES)
        at_end = len(head) < _HEAD_BYTES or not read_checked(f, path, 1)
    if b"\x00" in head:
        raise InputError(f"{path}: a binary file, not a CSV log (NUL bytes in its first {len(head)} bytes)")
    lines = head[len(_BOM):].split(b"\n") if head.startswith(_BOM) else head.split(b"\n")
    first = lines[0].rstrip(b"\r")
    if at_end and not head.strip():
        return None
    try:
        first_text = first.decode("utf-8")
    except UnicodeDecodeError:
        if len(lines) > 1 or at_end:
            raise InputError(f"{path}: its first line is not UTF-8 text: not a CSV log") from None
        first_text = first.decode("utf-8", errors="replace")  # a first line longer than the head read
    order, has_header = column_order(path, first_text)
    if has_header and at_end and not b"".join(lines[1:]).strip():
        return None
    return InputFile(path, size, compression, order, has_header)


def match(pattern, flag="--input"):
    """``[(path, size)]`` of the files a glob matches; :class:`InputError` (naming ``flag``) when it matches none."""
    from apache_beam.io.filesystems import FileSystems
    if _is_local(pattern) and os.path.isdir(pattern):
        raise InputError(f"{flag} {pattern!r} is a directory; give a glob of its log files, e.g. "
                         f"{os.path.join(pattern, '*.csv')!r}")
    try:
        # matched as an absolute path: Beam's local match finds nothing for a bare "log_*.csv"
        # (no folder part), and the files found are carried absolute (``absolute``)
        found = FileSystems.match([absolute(pattern)])[0].metadata_list
    except Exception as e:  # Beam raises BeamIOError, or ValueError for an unknown scheme
        raise InputError(f"{flag} {pattern!r}: {e}") from None
    files = [(m.path, m.size_in_bytes) for m in found if not (_is_local(m.path) and os.path.isdir(m.path))]
    if not files:
        raise InputError(f"{flag} {pattern!r} matches no file")
    return files


def resolve(patterns, flag="--input", need_rows=True):
    """``(input files, paths of files without rows)`` of the globs; stops when no file has a row
    (unless not ``need_rows``: a history may be empty, the new day's rows may not)."""
    seen, files, empty = set(), [], []
    for pattern in patterns:
        for path, size in match(pattern, flag):
            if path in seen:
                continue
            seen.add(path)
            info = inspect(path, size)
            (files if info else empty).append(info or path)
    if not files and need_rows:
        raise InputError(f"no rows to read: every file that {flag} matches is empty or holds only a header: "
                         + ", ".join(empty))
    for path in empty:
        logging.warning("%s is empty or holds only a header", path)
    return files, empty


def split_ranges(info, range_bytes):
    """Byte ranges ``(file, start, end)`` of one file; a compressed file is one range (``end`` None)."""
    if info.compression != "none" or info.size <= range_bytes:
        return [(info, 0, None)]
    return [(info, start, min(start + range_bytes, info.size)) for start in range(0, info.size, range_bytes)]


def read_range_lines(info, start, end, block=8 << 20):
    """``(byte offset, line bytes)`` of every line that *starts* in ``[start, end)``.

    ``end=None`` reads to the end (compressed files, whose offsets are in decompressed bytes).
    A range other than the first begins after the first newline at or after ``start - 1``, so
    every line belongs to exactly one range.
    """
    path = info.path
    with open_stream(path, info.compression if end is None else "none") as f:
        pos = 0
        if start > 0:
            f.seek(start - 1)
            pos = start - 1 + len(f.readline())
        carry = b""
        while True:
            data = read_checked(f, path, block)
            buf = carry + data
            lines = buf.split(b"\n")
            carry = lines.pop() if data else b""
            if not data and not carry and lines and lines[-1] == b"":
                lines.pop()
            for line in lines:
                if end is not None and pos >= end:
                    return
                yield pos, line
                pos += len(line) + 1
            if not data:
                return
