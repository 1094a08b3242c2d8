"""The landing page (`outputs/reports/index.html`) and the reports' tables for people."""

from __future__ import annotations

import base64
import html
import io
import re

import nbformat
import pandas as pd
from PIL import Image
from test_findings import ACC, BASELINE, _rows

from cnnlib.study import landing, pipeline, readme, report
from cnnlib.study import table as results


def _study_outputs(out):
    """Two studies' results, one report and the first study's main figure, as a pipeline
    leaves them."""
    (out / "results").mkdir(parents=True)
    baseline = [r for ds, acc in BASELINE.items() for r in _rows("01_baseline", ds, acc)]
    for study, rows in (("01_baseline", baseline),
                        ("02_augmentation_ablation", _rows("02_augmentation_ablation", "cifar10",
                                                           ACC))):
        frame = pd.DataFrame(rows, columns=results.COLUMNS).assign(tta=0)
        results.write_results(frame, out / "results" / f"{study}.csv")
    (out / "tables").mkdir()
    pd.DataFrame({"true": ["cat"], "predicted": ["dog"], "count": [3], "% of true class": [30.0]}
                 ).to_csv(out / "tables" / "confused_pairs_cifar10.csv", index=False)
    Image.new("RGB", (1200, 600), (200, 30, 30)).save(out / "training_curves.png")
    (out / "reports").mkdir()
    (out / "reports" / "01_baseline.html").write_text("<html></html>")


def test_collect_writes_a_self_contained_landing_page(tmp_path):
    out = tmp_path / "out"
    _study_outputs(out)
    readme.collect_results(out, None)
    page = (out / "reports" / landing.INDEX).read_text()
    text = html.unescape(page)
    # A card per study with rows, in the notebooks' order, each linking its report.
    assert text.index("01 · The reference network") < text.index("02 · Data augmentation")
    assert 'href="01_baseline.html"' in page and 'href="02_augmentation_ablation.html"' in page
    assert "03 · " not in text  # no rows, no card
    # Notebook 04 reuses 01's best models: its card names their regime from 01's rows.
    assert ("cat taken for dog (30.0% of the cat images)" in text
            and "Holds for:</span> CIFAR-10 best: baseline, 2 epochs, 1,000 training images"
            in text)
    # The answer is computed from the rows: 93.0% against 86.0%, paired by seed.
    assert ("CIFAR-10: the best model reaches 93.00% test accuracy, the reference network 86.0%: "
            "+7.0 pp (95% CI +5.8 to +8.2); the target of 94% is missed by 1.00 pp.") in text
    assert "CIFAR-10, test accuracy by augmentation: against crop+flip" in text
    assert "Holds for:" in text and "How sure:" in text and "after Holm's correction" in text
    # The Key Results table, the machine and the question of each card.
    assert "<th>test acc %</th>" in page and "trained on test CPU" in text
    assert "Which augmentations change" in text
    # Self-contained and readable on a phone: no script, nothing fetched, a viewport.
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert 'name="viewport"' in page
    # The one figure present became a thumbnail of THUMB_WIDTH pixels, embedded.
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == 1
    assert Image.open(io.BytesIO(base64.b64decode(uris[0]))).width == landing.THUMB_WIDTH
    # Rebuilt from the same results, the page is the same file.
    readme.collect_results(out, None)
    assert (out / "reports" / landing.INDEX).read_text() == page


def test_a_report_table_is_for_people():
    df = pd.DataFrame({"dataset": ["cifar100"], "true": ["maple_tree"], "predicted": ["oak_tree"],
                       "same superclass": [True], "test_acc": [0.5], "sparsity": [float("nan")]})
    shown = report.table(df.set_index(["dataset", "true"])).data
    head = re.findall(r"<th>([^<]*)</th>", shown)
    assert head == ["dataset", "true", "predicted", "same superclass", "test accuracy %",
                    "sparsity"]
    cells = re.findall(r"<td>([^<]*)</td>", shown)
    assert cells == ["CIFAR\u2011100", "maple tree", "oak tree", "yes", "0.5", ""]
    assert "<th></th>" not in shown  # no index column


def test_cells_tagged_remove_cell_stay_out_of_the_report(tmp_path):
    nb = nbformat.v4.new_notebook()
    kept = nbformat.v4.new_code_cell("print('for readers')")
    kept.outputs = [nbformat.v4.new_output("stream", text="for readers\n")]
    check = nbformat.v4.new_code_cell(f"{report.CHECK_MARK}\nprint('columns: a, b')",
                                      metadata={"tags": [pipeline.REMOVE_CELL_TAG]})
    check.outputs = [nbformat.v4.new_output("stream", text="columns: a, b\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), kept, check]
    executed = tmp_path / "nb.ipynb"
    nbformat.write(nb, executed)
    pipeline.export_html(executed, tmp_path / "nb.html")
    page = (tmp_path / "nb.html").read_text()
    assert "for readers" in page and "columns: a, b" not in page
