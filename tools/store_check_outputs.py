"""Store in the notebook files the smoke-profile outputs of their nbval check cells.

    .venv/bin/python tools/store_check_outputs.py notebooks/*.ipynb [--from DIR]

Cells marked ``# NBVAL_CHECK_OUTPUT`` keep the outputs nbval compares against, taken from
executed copies in DIR (e.g. ``outputs/notebooks/`` of ``./run_all.sh --profile smoke``) or
from executing the notebooks now in a scratch folder; every other output is stripped. Run it
after changing what a check cell prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from cnnlib.flags import Parser  # noqa: E402
from cnnlib.study import (
    locations,
    report,  # noqa: E402
)


def _is_check(cell) -> bool:
    return cell.get("cell_type") == "code" and report.CHECK_MARK in "".join(cell.get("source", ""))


def store_check_outputs(paths, executed_dir=None, timeout: int = 900) -> None:
    """Store in each notebook the smoke-profile outputs of its check cells; strip all others.

    The outputs come from executed copies of the same notebooks in `executed_dir` (e.g. the
    `outputs/notebooks/` of `./run_all.sh --profile smoke`, cells matched by id), else from
    executing each notebook now: smoke profile, runs in a temporary folder, kernel started in
    the notebook's folder as under nbval. Other cells lose outputs and execution counts; a
    check cell's count is its position among the code cells (nbval needs one), so the
    committed file is small and stable.
    """
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            path = Path(path)
            nb = nbformat.read(path, as_version=4)
            if executed_dir is not None:
                done = nbformat.read(Path(executed_dir) / path.name, as_version=4)
                if done.metadata.get("papermill", {}).get("parameters", {}).get(
                        "PROFILE", "smoke") != "smoke":
                    raise ValueError(f"{executed_dir}/{path.name}: not a smoke-profile execution")
            else:
                done = _execute_smoke(path, Path(tmp), timeout)
            by_id = {c.get("id"): c for c in done.cells}
            by_source = {c.source: c for c in done.cells}
            code = [c for c in nb.cells if c.cell_type == "code"]
            for number, cell in enumerate(code, 1):
                cell.execution_count = None
                cell.outputs = []
                if _is_check(cell):
                    # nbval skips a reference cell without an execution count.
                    cell.execution_count = number
                    twin = by_id.get(cell.get("id")) or by_source.get(cell.source)
                    if twin is None or twin.source != cell.source:
                        raise ValueError(f"{path}: no executed twin of check cell {cell.source!r}")
                    cell.outputs = [o for o in twin.outputs if o.get("name") == "stdout"]
            nbformat.write(nb, path)
            print(f"stored check outputs: {path}", flush=True)


def _execute_smoke(path: Path, scratch: Path, timeout: int):
    env = {"CNNLIB_PROFILE": "smoke", locations.OUTPUTS_ENV: str(scratch / "outputs"),
           locations.RUNS_ENV: str(scratch / "runs"), locations.MODELS_ENV: str(scratch / "models")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
        return nb
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv=None) -> int:
    p = Parser(prog="tools/store_check_outputs.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--from", dest="executed", default=None,
                   help="folder of smoke-profile executions of these notebooks (by name) to take "
                        "the outputs from, instead of executing them now")
    p.add_argument("--timeout", type=int, default=900)
    args = p.parse_args(argv)
    store_check_outputs(args.notebooks, args.executed, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
