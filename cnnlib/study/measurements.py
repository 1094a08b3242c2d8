"""What a notebook measures besides training, kept beside the runs in the run cache.

Learning-rate range tests (notebook 03) and the compressed models' rows (notebook 05) are
stored in `<runs>/measurements/<kind>-<key>.json`, keyed by what determines them and the
results version (`measured`), so that a rebuild on the same machine reuses them and rewrites
no committed file; `$CNNLIB_REMEASURE=1` (`./run_all.sh --remeasure`) measures again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cnnlib import _fileio as fileio
from cnnlib.study.cache import MEASUREMENTS, data_fingerprint, run_key
from cnnlib.study.locations import runs_root
from cnnlib.study.provenance import RESULTS_VERSION, git_commit
from cnnlib.training import loop
from cnnlib.training.config import RunConfig

REMEASURE_ENV = "CNNLIB_REMEASURE"  # "1": measure again (./run_all.sh --remeasure)


def remeasure_asked(value: str | None = None, name: str = REMEASURE_ENV) -> bool:
    """`value` (else $CNNLIB_REMEASURE) read as a switch: "1" yes; "0" or "" no."""
    value = os.environ.get(REMEASURE_ENV, "") if value is None else value
    if value not in ("", "0", "1"):
        raise ValueError(f"{name}: {value!r} is not allowed; allowed: 0, 1")
    return value == "1"


def _plain(obj):
    """`obj` as it reads back from JSON: the first measurement and a reused one are equal."""
    return json.loads(json.dumps(obj, default=float))


def measurement_path(kind: str, what: dict, root=None) -> Path:
    blob = json.dumps({**_plain(what), "version": RESULTS_VERSION}, sort_keys=True)
    return runs_root(root) / MEASUREMENTS / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"


def recalled(kind: str, what: dict, root=None, repair: bool = False) -> dict | None:
    """The stored entry of a measurement (`what`, `value`, `seconds`, `finished`, `commit`),
    else None. A damaged one reads as None; with `repair` it is set aside."""
    path = measurement_path(kind, what, root)
    if not fileio.present(path):
        return None
    try:
        fileio.regular(path)
        entry = fileio.read_json(path)
        if entry.get("what") != _plain(what) or "value" not in entry:
            raise fileio.DamagedFileError(f"{path}: not the measurement asked for")
        return entry
    except fileio.DamagedFileError as e:
        if repair:
            fileio.set_aside(path)
            print(f"[damaged] {e}; set aside as *.damaged, measured again", file=sys.stderr,
                  flush=True)
        return None


def measured(kind: str, what: dict, measure: Callable[[], object], *, remeasure=None,
             root=None) -> tuple[object, dict | None]:
    """`measure()`'s value, measured once per `what` (with the results version) and kept in
    the run cache; `remeasure` (default $CNNLIB_REMEASURE) measures again. Returns the value
    (as it reads back from JSON) and the stored entry it came from, None when measured now."""
    again = remeasure_asked() if remeasure is None else remeasure
    entry = None if again else recalled(kind, what, root, repair=True)
    if entry is not None:
        return entry["value"], entry
    t0 = time.time()
    value = _plain(measure())
    path = measurement_path(kind, what, root)
    entry = {"kind": kind, "what": _plain(what), "value": value,
             "seconds": time.time() - t0, "finished": time.time(), "commit": git_commit()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_json(entry, path)
    except OSError as e:  # a read-only or full cache: the value still serves this notebook
        print(f"[not saved] {path}: {fileio.first_line(e)}; measured again next time",
              file=sys.stderr, flush=True)
    return value, None


def stored_measurements(kind: str, root=None, **fields) -> list[dict]:
    """The stored entries of `kind` whose `what` holds `fields` (a plan's look-up)."""
    folder = runs_root(root) / MEASUREMENTS
    out = []
    for path in sorted(folder.glob(f"{kind}-*.json")) if folder.is_dir() else ():
        try:
            entry = fileio.read_json(path)
        except (fileio.DamagedFileError, OSError):
            continue  # measured again when asked for
        what = entry.get("what") or {}
        if all(what.get(k) == _plain(v) for k, v in fields.items()):
            out.append(entry)
    return out


def _lr_find_what(config: RunConfig, steps: int, data_root=None) -> dict:
    return {"run": run_key(config, data_fingerprint(config.dataset, data_root)), "steps": steps}


def lr_find(config: RunConfig, *, steps: int, root=None, data_root=None, remeasure=None,
            progress: bool = True) -> dict:
    """`training.loop.lr_find` of `config` for `steps` batches, measured once: keyed by the
    run key of `config` (config, data, precision, results version) and `steps`."""
    name = f"range test {config.optimizer} on {config.dataset}"

    def measure():
        if progress:
            print(f"[measuring] {name}: {steps} batches", flush=True)
        return loop.lr_find(config, steps=steps, data_root=data_root)

    value, entry = measured("lr_find", _lr_find_what(config, steps, data_root), measure,
                            remeasure=remeasure, root=root)
    if progress:
        print(f"[{'cached' if entry else 'measured'}] {name}: suggested lr "
              f"{value['suggested_lr']:.2g}", flush=True)
    return value


def recorded_lr_find(config: RunConfig, steps: int, root=None, data_root=None) -> dict | None:
    """The stored `lr_find(config, steps=steps)`, else None (nothing is measured)."""
    if not any((runs_root(root) / MEASUREMENTS).glob("lr_find-*.json")):
        return None  # none stored: the data need not be read for a key
    entry = recalled("lr_find", _lr_find_what(config, steps, data_root), root)
    return None if entry is None else entry["value"]
