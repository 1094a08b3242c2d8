"""Records: the finished runs of a study, carried to another machine so that it resumes there.

A record is a run folder holding its result.json (and, when asked, its model in the compact
form `cache.export_model` writes), never its epoch checkpoints: the run cache counts it as
finished (`cache.is_finished`) and reads its row and history.
"""

from __future__ import annotations

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
    out = Path(dest) / folder.name
    fileio.write_json(portable(fileio.read_json(folder / "result.json")), out / "result.json")
    if with_model:
        write_compact(folder / "model.pt", out / "model.pt")
    return out
