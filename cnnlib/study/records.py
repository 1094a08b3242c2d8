"""Records: the finished runs of a study, carried to another machine so that it resumes there.

A record is a run folder holding its result.json (and, when asked, its model in the compact
form `cache.export_model` writes), never its epoch checkpoints: the run cache counts it as
finished (`cache.is_finished`) and reads its row and history.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlib import _fileio as fileio
from cnnlib.study.cache import is_finished, portable, write_compact


def save_record(folder, dest, *, with_model: bool = False) -> Path:
    """Copy the finished run in `folder` into `dest` as a record: its result.json, and with
    `with_model` its model (compact, as `export_model` writes it; notebooks that load it
    then run where the record goes). Never its epoch checkpoints: a record is finished."""
    folder = Path(folder)
    if not is_finished(folder):
        raise ValueError(f"{folder}: not a finished run (no intact result.json)")
    check_destination(folder.parent, dest)
    out = Path(dest) / folder.name
    fileio.write_json(portable(fileio.read_json(folder / "result.json")), out / "result.json")
    if with_model:
        write_compact(folder / "model.pt", out / "model.pt")
    return out


def check_destination(cache, dest) -> None:
    """Refuse a `dest` that is the run cache `cache` or a folder inside it, under whatever
    path: compared by device and inode (`os.path.samefile`), so a symlink, a bind mount or a
    second mount of the cache is found too. Records written there would replace the cache's
    fp32 model.pt files with their compact copies."""
    full = Path(dest).resolve()
    for folder in (full, *full.parents):
        if folder.exists() and os.path.samefile(folder, cache):
            where = "the run cache itself" if folder == full else f"inside the run cache ({folder})"
            raise ValueError(f"{dest}: that is {where}: the same folder as {cache} by device "
                             "and inode; give another folder")
