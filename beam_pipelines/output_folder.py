"""The ``--output`` folder: refused when it holds anything (unless ``--overwrite``), built aside, swapped in.

The job never writes into ``--output`` itself. It writes a sibling staging folder
(``.<name>.building-<id>`` next to it) and only when the whole pipeline has succeeded — and the
result holds at least one example — puts it in place of the old folder. So a failed or empty run
leaves an existing examples folder as it was, and old shards can never sit beside new ones (a
trainer globbing ``train/*.tfrecord.gz`` would read both).

On a local disk the swap is two renames (old folder aside, new one in, old one deleted): a reader
sees the old folder or the new one, never a mix. On an object store (``gs://``) there are no
folders to rename: the old objects are deleted, then the new ones renamed, object by object;
between the two the folder is briefly empty, never mixed.
"""
from __future__ import annotations

import os
import shutil
import uuid

from beam_pipelines import InputError


def _is_local(path):
    return "://" not in path


def _entries(path):
    """Names directly inside ``path`` ([] when it does not exist)."""
    if _is_local(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    from apache_beam.io.filesystems import FileSystems
    return sorted({m.path[len(path) + 1:].split("/")[0] for m in FileSystems.match([path + "/**"])[0].metadata_list})


def prepare(output, overwrite, flag="--output"):
    """The staging folder to write instead of ``output``; :class:`InputError` (naming ``flag``) when
    ``output`` cannot be used. The history state (``--write_history_state``) is built aside and
    swapped in the same way."""
    output = output.rstrip("/") or output
    if _is_local(output) and os.path.exists(output) and not os.path.isdir(output):
        raise InputError(f"{flag} {output!r} is a file, not a folder")
    entries = _entries(output)
    if entries and not overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise InputError(f"{flag} {output!r} is not empty (it holds {shown}); pass --overwrite to replace it")
    parent, name = output.rsplit("/", 1) if "/" in output else (".", output)
    if _is_local(output):
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
    return f"{parent}/.{name}.building-{uuid.uuid4().hex[:12]}"


def publish(staging, output):
    """Put the finished ``staging`` folder in place of ``output`` (see the module docstring)."""
    output = output.rstrip("/") or output
    if _is_local(output):
        old = None
        if os.path.lexists(output):
            old = f"{staging}.old"
            os.rename(output, old)
        os.rename(staging, output)
        if old:
            shutil.rmtree(old)
        return
    from apache_beam.io.filesystems import FileSystems
    if _entries(output):
        FileSystems.delete([output + "/"])
    sources = [m.path for m in FileSystems.match([staging + "/**"])[0].metadata_list]
    FileSystems.rename(sources, [output + s[len(staging):] for s in sources])
    discard(staging)


def discard(staging):
    """Remove a staging folder (a failed run's partial output)."""
    if _is_local(staging):
        shutil.rmtree(staging, ignore_errors=True)
        return
    from apache_beam.io.filesystems import FileSystems
    if _entries(staging):
        FileSystems.delete([staging + "/"])
