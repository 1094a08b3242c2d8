"""The notebooks as files: papermill parameters, nbval reference outputs, thin code, run_all wiring.

Executing them is the nbval pass of ./run_tests.sh (pytest --nbval-lax notebooks/).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import nbformat
import papermill
import pytest
from PIL import Image

from cnnlib.study import definitions as studies
from cnnlib.study import report
from cnnlib.study import table as results

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
    assert names == list(studies.STUDIES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_markdown_then_a_parameters_cell(path):
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "**Question.**" in nb.cells[0].source  # how to run a notebook is in the README
    first, runs_cell, answer = _code(nb)[:3]
    assert "parameters" in first.metadata.get("tags", [])
    assert re.search(r'^PROFILE = "auto"', first.source, re.M)
    # The report opens with the computed answer: the runs' log is left out of it.
    assert "remove_output" in runs_cell.metadata.get("tags", [])
    # computed by the study layer's sentences: findings, or notebook 07's robustness module
    assert re.search(r"report\.answer\(ctx, (findings|robustness)\.", answer.source)
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
def test_the_report_leaves_out_checks_and_code_names(path):
    """Check cells (nbval's compared outputs) stay in the notebook but out of the HTML report,
    and the report's prose names no module, function or setting of the code."""
    from cnnlib.study.pipeline import REMOVE_CELL_TAG

    for cell in _read(path).cells:
        if cell.cell_type == "code" and report.CHECK_MARK in cell.source:
            assert REMOVE_CELL_TAG in cell.metadata.get("tags", []), cell.source[:60]
        if cell.cell_type == "markdown":
            names = re.findall(r"`[^`]*\b(?:cnnlib|studies|findings|definitions|SETTINGS|report)"
                               r"\.[^`]*`", cell.source)
            assert not names, f"{path.name}: code names in the prose: {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_thin_and_portable(path):
    """No functions or classes (the logic lives in cnnlib), no absolute paths; every notebook
    starts through report.start and gets its runs through the executors (executors.run_all)."""
    nb = _read(path)
    calls = set()
    for cell in _code(nb):
        tree = ast.parse(cell.source)
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert not defs, f"{path.name}: move {defs[0].name} into cnnlib"
        calls |= {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    text = path.read_text()
    assert not re.search(r'"(/home|/work|/tmp|/Users|[A-Z]:\\\\)', text)
    assert {"report.start", "executors.run_all"} <= calls, path.name


def test_results_checks_name_every_column():
    """The stored 'results columns' line is results.COLUMNS."""
    expected = "results columns: " + ", ".join(results.COLUMNS)
    for path in NOTEBOOKS[:3]:
        outputs = "".join(o.get("text", "") for c in _code(_read(path)) for o in c.outputs)
        assert expected in outputs, path.name


def test_required_figures_are_written_by_the_notebooks(synthetic_root, tmp_path, monkeypatch):
    """01_baseline and 04_interpretability (which reuses 01's runs from the cache), executed on
    the smoke profile and the synthetic data into a scratch folder, write the README's main
    figures as PNGs, the feature maps among them, and export one model per dataset."""
    monkeypatch.chdir(tmp_path)
    for name, value in [("CNNLIB_DATA_ROOT", synthetic_root), ("CNNLIB_OUTPUTS", tmp_path / "out"),
                        ("CNNLIB_RUNS", tmp_path / "runs"), ("CNNLIB_MODELS", tmp_path / "models"),
                        ("CNNLIB_PROFILE", "smoke")]:
        monkeypatch.setenv(name, str(value))
    for stem in ("01_baseline", "04_interpretability"):
        papermill.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"),
                                   str(tmp_path / f"{stem}.ipynb"), kernel_name="python3",
                                   parameters={"PROFILE": "smoke"}, progress_bar=False)
    maps = sorted((tmp_path / "out" / "feature_maps").rglob("*.png"))
    assert any(p.name.endswith("_overview.png") for p in maps), maps
    for path in [tmp_path / "out" / name for name in REQUIRED_FIGURES] + maps:
        with Image.open(path) as png:
            assert png.format == "PNG" and min(png.size) >= 100, path.name
            png.verify()
    assert sorted(p.name for p in (tmp_path / "models").glob("*.pth")) == [
        "cnn_cifar10.pth", "cnn_cifar100.pth"]


def test_notebooks_pick_runs_by_labels_that_notebook_01_trains():
    """04 and 05 reuse 01's runs: every label they pick must be one `baseline_runs` writes."""
    labels = {label for label, _ in studies.baseline_runs("smoke")}
    picked = []
    for path in NOTEBOOKS:
        if "definitions.baseline_runs(" not in path.read_text():
            continue  # its own runs
        for cell in _code(_read(path)):
            for call in ast.walk(ast.parse(cell.source)):
                if (isinstance(call, ast.Call) and ast.unparse(call.func) in
                        ("report.pick", "report.best_run") and len(call.args) > 2):
                    picked.append((path.stem, ast.literal_eval(call.args[2])))
    assert {nb for nb, _ in picked} >= {"01_baseline", "04_interpretability", "05_compression"}
    assert {label for _, label in picked} <= labels, picked


def test_reference_runs_are_the_augmentation_sweeps_reference_on_every_dataset():
    """01's reference runs are 02's `crop+flip` runs (one cache entry each), and a reduced
    sweep (smoke: CIFAR-100 keeps two variants) still has them to pair with."""
    reference = studies.STUDIES["02_augmentation_ablation"].sweep("augmentation").reference
    for profile in ("smoke", "cpu"):
        ours = {c.key() for label, c in studies.baseline_runs(profile) if label == "reference"}
        theirs = {c.key() for label, c in studies.augmentation_runs(profile) if label == reference}
        assert ours == theirs and len(ours) == 2 * len(studies.settings(profile)["seeds"])
    nb = _read(ROOT / "notebooks" / "01_baseline.ipynb")
    answer = _code(nb)[2].source
    assert "findings.reference_check(df)" in answer and "findings.best_check(df)" in answer


def test_architecture_checks_print_nothing_that_depends_on_the_machine():
    """Notebook 06's epochs come from training speeds measured on the machine at hand: its
    check cells print the networks, datasets, seeds and sizes, never epochs or speeds."""
    nb = _read(ROOT / "notebooks" / "06_architectures.ipynb")
    plan = [c for c in _code(nb) if report.CHECK_MARK in c.source and "plan_summary" in c.source]
    text = "".join(o.get("text", "") for c in plan for o in c.outputs)
    assert "wrn16_4" in text and "seed: 0" in text and "parameters" in text
    assert not re.search(r"epoch|images/s", text)


def test_run_all_help_and_bad_arguments():
    script = ROOT / "run_all.sh"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for option in ("--profile", "--only", "--force", "--setup-only"):
        assert option in out.stdout
    bad = subprocess.run([str(script), "--profile", "huge"], capture_output=True, text=True)
    assert bad.returncode == 2 and "allowed: auto, smoke, cpu, full" in bad.stderr


PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
           "rkJggg==")


def test_reports_are_self_contained_with_alt_text(tmp_path):
    """A report reads offline: no script, stylesheet or font from the internet; figures
    embedded with the alt text `report.show` gives them."""
    from bs4 import BeautifulSoup

    from cnnlib.study import pipeline

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    figure = nbformat.v4.new_output("display_data", data={"image/png": PNG_1X1},
                                    metadata={"image/png": {"alt": "Test accuracy <by> depth"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n\n**Question.** Does it work?"),
                nbformat.v4.new_code_cell("show(fig)", outputs=[figure])]
    executed, html = tmp_path / "nb.ipynb", tmp_path / "nb.html"
    nbformat.write(nb, executed)
    pipeline.export_html(executed, html)
    soup = BeautifulSoup(html.read_text(), "html.parser")
    fetched = [t.get("src") or t.get("href") for t in soup.find_all(["script", "link", "img"])
               if re.match(r"(https?:)?//", t.get("src") or t.get("href") or "")]
    assert fetched == []
    assert not any("https://" in s.get_text() for s in soup.find_all("script"))
    assert not any(re.search(r"@import|url\((['\"])?(https?:)?//", s.get_text())
                   for s in soup.find_all("style"))
    images = soup.find_all("img")
    assert [i["alt"] for i in images] == ["Test accuracy <by> depth"]
    assert images[0]["src"].startswith("data:image/png;base64,")
    assert "Does it work?" in soup.get_text() and "show(fig)" not in soup.get_text()
