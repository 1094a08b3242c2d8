"""A run's assessment besides its test score (`training.assess`): calibration error, NLL and
temperature scaling checked by hand, the corruption subset, duplicate-free accuracy on
ciFAIR's real lists, the assessment every cached run gets (trained now or finished before),
its columns in the results table, and `cnnlib evaluate --corruptions --calibration`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cnnlib import _fileio as fileio
from cnnlib.data import duplicates
from cnnlib.data.corruptions import CORRUPTIONS, SEVERITIES
from cnnlib.study import cache as runs
from cnnlib.study import table as results
from cnnlib.training import assess
from cnnlib.training.config import RunConfig
from cnnlib.training.evaluate import predict_logits


def test_ece_is_the_weighted_gap_of_fifteen_bins():
    # 4 predictions: confidences 0.95, 0.95 (bin 15), 0.55 (bin 9), 0.35 (bin 6); right,
    # wrong, right, wrong -> bins: |0.95 - 0.5| * 2/4 + |0.55 - 1| * 1/4 + |0.35 - 0| * 1/4
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.45, 0.55], [0.35, 0.65]])
    probs = torch.cat([probs, torch.zeros(4, 1)], 1)  # a third class: the top one is what counts
    probs[3] = torch.tensor([0.35, 0.33, 0.32])
    labels = torch.tensor([0, 1, 1, 2])
    want = 0.45 * 2 / 4 + 0.45 / 4 + 0.35 / 4
    assert assess.expected_calibration_error(probs, labels) == pytest.approx(want, abs=1e-6)


def test_nll_is_cross_entropy_and_temperature_one_changes_nothing():
    logits = torch.randn(500, 10, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(1))
    probs = logits.softmax(1)
    assert assess.nll(probs, labels) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert torch.allclose(assess.scaled(probs, 1.0), probs, atol=1e-6)
    assert torch.allclose(assess.scaled(probs, 2.0), (logits / 2).softmax(1), atol=1e-5)


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=gen) * 4
    labels = torch.multinomial((logits / 2.5).softmax(1), 1, generator=gen).squeeze(1)
    probs = logits.softmax(1)  # overconfident by a factor 2.5
    t = assess.fit_temperature(probs, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    c = assess.calibration(probs, labels, probs, labels)
    assert c["ece_scaled"] < c["ece"] / 3 and c["nll_scaled"] < c["nll"]
    assert assess.calibration(probs, labels)["temperature"] is None  # no validation split


def test_the_assessed_images_are_one_seeded_subset_a_quarter_of_a_small_test_set():
    a, b = assess.assessment_subset(10000), assess.assessment_subset(10000)
    assert torch.equal(a, b) and len(a) == assess.ASSESS_IMAGES
    assert torch.equal(a, a.sort().values) and len(a.unique()) == len(a) and int(a.max()) < 10000
    assert len(assess.assessment_subset(200)) == 50  # a smoke run scored on 200 images
    assert not torch.equal(assess.assessment_subset(10000, seed=1), a)


def test_duplicate_free_accuracy_leaves_out_cifairs_test_images(monkeypatch, tmp_path):
    if not os.environ.get("CNNLIB_DATA_MIRROR"):
        pytest.skip("ciFAIR's lists need $CNNLIB_DATA_MIRROR here (no download)")
    monkeypatch.setenv("CNNLIB_DATA_ROOT", str(tmp_path))
    ids = duplicates.duplicate_test_ids("cifar10")
    labels = torch.arange(10000) % 10
    preds = labels.clone()
    preds[ids] = (labels[ids] + 1) % 10  # wrong exactly on the near-duplicates
    d = assess.duplicate_free_accuracy(preds, labels, "cifar10")
    assert d["dup_free_acc"] == 1.0 and d["duplicates_removed"] == len(ids) == 286
    first = assess.duplicate_free_accuracy(preds[:1000], labels[:1000], "cifar10")
    assert first["duplicates_removed"] == int((ids < 1000).sum())


def _config(**changes) -> RunConfig:
    base = dict(dataset="cifar10", model="baseline", model_options={"width": 4, "depth": 2},
                epochs=1, batch_size=32, train_subset=96, val_size=64, test_subset=100,
                augment="crop+flip", device="cpu", precision="fp32", lr=0.05)
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def assessed(synthetic_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("runs")
    return runs.run(_config(), "tiny", profile="smoke", root=cache, data_root=synthetic_root,
                    progress=False), synthetic_root


def test_a_trained_run_is_assessed_once_and_its_row_has_the_columns(assessed):
    run, data_root = assessed
    a = run.assessment
    assert a["images"] == 25 and a["severities"] == list(SEVERITIES)  # a quarter of 100
    assert set(a["families"]) == set(CORRUPTIONS) and all(len(v) == 5 for v in a["by_severity"].values())
    # the means are of what was measured: per family over severities, then over families
    assert a["families"]["fog"] == pytest.approx(sum(a["by_severity"]["fog"]) / 5)
    assert a["corruption_acc"] == pytest.approx(sum(a["families"].values()) / len(CORRUPTIONS))
    assert a["val_images"] == 64
    m = run.test_metrics(data_root)  # the run's own scored probabilities, scaled by its temperature
    assert a["ece"] == pytest.approx(assess.expected_calibration_error(m["probs"], m["labels"]))
    assert a["nll_scaled"] == pytest.approx(assess.nll(assess.scaled(m["probs"], a["temperature"]),
                                                       m["labels"]), rel=1e-4)
    assert a["test_acc_no_tta"] == pytest.approx(run.result["test"]["acc"])  # scored without TTA
    assert fileio.read_json(run.path / "result.json")["assessment"] == a  # on disk, in result.json
    row = results.Row.from_run(run, "s").as_dict()
    assert list(row) == results.COLUMNS and results.COLUMNS[-len(results.ASSESS_COLUMNS):] == results.ASSESS_COLUMNS
    assert row["corruption_acc"] == a["corruption_acc"] and row["ece"] == a["ece"]
    assert row["corruption_fog"] == a["families"]["fog"] and row["assessed_images"] == 25


def test_a_model_scored_with_tta_is_also_scored_without_it(assessed):
    run, data_root = assessed
    model = run.load_model()
    split = runs.test_split(run.config, data_root)
    evaluation = {**model.meta["evaluation"], "tta": 2}
    a = assess.assess_checkpoint(model, run.config.to_dict(), evaluation=evaluation,
                                 data_root=data_root)
    plain = predict_logits(model, split.images, model.meta["mean"], model.meta["std"]).argmax(1)
    assert a["test_acc_no_tta"] == pytest.approx((plain == split.labels).double().mean().item())
    assert a["test_acc_no_tta"] == pytest.approx(run.assessment["test_acc_no_tta"])


def test_a_run_finished_before_assessments_gets_the_same_one_from_its_model(assessed, tmp_path):
    run, data_root = assessed
    copy = tmp_path / run.path.name
    copy.mkdir()
    for f in ("model.pt", "test_metrics.pt"):
        fileio.copy_file(run.path / f, copy / f)
    old = {k: v for k, v in run.result.items() if k != "assessment"}
    fileio.write_json(old, copy / "result.json")
    again = runs.run(run.config, "tiny", root=tmp_path, data_root=data_root, progress=False)
    assert {k: v for k, v in again.assessment.items() if k != "seconds"} == \
        {k: v for k, v in run.assessment.items() if k != "seconds"}  # deterministic
    assert "assessment" in fileio.read_json(copy / "result.json")
    # A record (no model) keeps none: its columns are empty, nothing is computed.
    (copy / "model.pt").unlink()
    (copy / "test_metrics.pt").unlink()
    fileio.write_json(old, copy / "result.json")
    record = runs.run(run.config, "tiny", root=tmp_path, data_root=data_root, progress=False)
    assert record.assessment == {}
    assert results.Row.from_run(record).as_dict()["corruption_acc"] is None


def test_cnnlib_evaluate_prints_the_assessment_lines_and_keeps_its_last_line(assessed):
    run, data_root = assessed
    env = {**os.environ, "CNNLIB_DATA_ROOT": str(data_root)}
    cmd = [sys.executable, "-m", "cnnlib", "evaluate", str(run.checkpoint), "--corruptions",
           "--images", "20", "--calibration"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("test_acc=")
    assert sum(line.startswith("corruption ") for line in lines) == len(CORRUPTIONS)
    assert any(line.startswith("corruptions (20 test images, no TTA): clean_acc=") for line in lines)
    assert any("temperature" in line and "fitted on 64 validation images" in line for line in lines)
    bad = subprocess.run(cmd[:-3] + ["--images", "0"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--images" in bad.stderr
