"""The notebooks as files: papermill parameters, nbval reference outputs, thin code, run_all wiring.

Executing them is the nbval pass of ./run_tests.sh (pytest --nbval-lax notebooks/).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

from cnnlib import report, runs, studies

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED_FIGURES = ["training_curves.png", "confusion_matrix_10.png", "confusion_matrix_100.png"]


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_notebooks_exist_and_match_the_studies():
    names = [p.stem for p in NOTEBOOKS]
    assert names[:4] == ["01_baseline", "02_augmentation_ablation", "03_depth_study",
                         "04_interpretability"]
    assert names == list(studies.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_markdown_then_a_parameters_cell(path):
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "Stored outputs" in nb.cells[0].source and "smoke" in nb.cells[0].source
    first = _code(nb)[0]
    assert "parameters" in first.metadata.get("tags", [])
    assert re.search(r'^PROFILE = "auto"', first.source, re.M)
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_only_check_cells_carry_outputs(path):
    """Committed notebooks keep the smoke outputs of the nbval check cells and nothing else."""
    checks = 0
    for cell in _code(_read(path)):
        if report.CHECK_MARK in cell.source:
            checks += 1
            text = "".join(o.get("text", "") for o in cell.outputs)
            assert text.strip(), f"check cell without stored output: {cell.source[:60]!r}"
            assert all(o.get("name") == "stdout" for o in cell.outputs), "only printed text"
            assert not re.search(r"\b\d+(\.\d+)?s\b|/tmp/", text), "timings or paths"
            assert cell.execution_count, "nbval ignores a check cell without execution count"
        else:
            assert cell.outputs == [], f"stored output in {cell.source[:60]!r}"
            assert cell.execution_count is None
    assert checks >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_thin_and_portable(path):
    """No functions or classes (the logic lives in cnnlib), no absolute paths."""
    nb = _read(path)
    for cell in _code(nb):
        tree = ast.parse(cell.source)
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert not defs, f"{path.name}: move {defs[0].name} into cnnlib"
    text = path.read_text()
    assert not re.search(r'"(/home|/work|/tmp|/Users|[A-Z]:\\\\)', text)
    assert "report.start(" in text and runs.__name__.split(".")[-1] in text


def test_results_checks_name_every_column():
    """The stored 'results columns' line is runs.RESULT_COLUMNS."""
    expected = "results columns: " + ", ".join(runs.RESULT_COLUMNS)
    for path in NOTEBOOKS[:3]:
        outputs = "".join(o.get("text", "") for c in _code(_read(path)) for o in c.outputs)
        assert expected in outputs, path.name


def test_required_figures_are_written_by_the_notebooks():
    text = "\n".join(c.source for p in NOTEBOOKS for c in _code(_read(p)))
    for name in REQUIRED_FIGURES:
        assert name in text
    assert '"feature_maps"' in text
    assert "cnn_{ds}.pth" in text


def test_run_all_help_and_bad_arguments():
    script = ROOT / "run_all.sh"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for option in ("--profile", "--only", "--force", "--setup-only"):
        assert option in out.stdout
    bad = subprocess.run([str(script), "--profile", "huge"], capture_output=True, text=True)
    assert bad.returncode == 2 and "allowed: auto, smoke, cpu, full" in bad.stderr
