"""One declarative definition per study: the runs a notebook makes and the sweeps `findings`
states come from the same `definitions.STUDIES` entry, so a label or reference renamed on one
side only fails here instead of dropping README lines."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnnlib.study import budget, definitions, findings, locations
from cnnlib.study.definitions import STUDIES
from cnnlib.study.sweeps import Sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A speeds store whose speeds stand in for measured ones (notebook 06's budgets)."""
    monkeypatch.setattr(budget, "_measure", lambda config, *_: 200.0)
    return tmp_path / "speeds.json"


def _runs(profile, store):
    return {name: study.runs(profile, store) for name, study in STUDIES.items()}


def test_the_studies_are_the_notebooks():
    assert list(STUDIES) == sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert all(name == study.name for name, study in STUDIES.items())


@pytest.mark.parametrize("profile", locations.PROFILES)
def test_each_sweep_runs_exactly_its_labels_and_its_reference(profile, store):
    for name, runs in _runs(profile, store).items():
        study = STUDIES[name]
        study.check(runs)
        made = {label for label, _ in runs}
        for sweep in study.sweeps:
            assert set(sweep.labels) <= made, (name, sweep.name)
            for dataset in {c.dataset for _, c in runs}:
                here = {label for label, c in runs if c.dataset == dataset}
                if here & set(sweep.labels):  # a reduced sweep still has its reference
                    assert sweep.reference in here, (name, sweep.name, dataset)
        if study.sweeps:
            assert made == {x for s in study.sweeps for x in s.labels}, name


def test_the_references_are_the_recipes_own_settings():
    refs = {s.name: s.reference for study in STUDIES.values() for s in study.sweeps}
    assert refs == {"augmentation": "crop+flip", "augmentation, long budget": "crop+flip (long)",
                    "depth": "depth 6", "width": "width 32",
                    "dropout": "dropout 0.0", "weight decay": "weight decay 0.0005",
                    "early stopping": "no early stopping", "learning-rate grid": "nesterov @ lr 1.5",
                    "optimizer": "nesterov @ chosen lr", "schedule": "one-cycle schedule",
                    "depth on the full training sets": "depth 6 (full set)",
                    **{f"architecture, budget ×{f}": f"baseline ×{f}" for f in (1, 3, 9)}}
    # The overfitting knobs' references are one network: the sub-study's standard run.
    for profile in ("cpu", "full"):
        keys = {label: c.key() for label, c in definitions.overfitting_runs(profile)
                if c.seed == 0}
        knobs = STUDIES["03_depth_study"].sweeps[:4]
        assert len({keys[s.reference] for s in knobs}) == 1


def test_a_label_renamed_on_one_side_only_fails(store, monkeypatch):
    study = STUDIES["03_depth_study"]
    runs = study.runs("smoke", store)
    # The sweep side: a reference no run has.
    depth = study.sweep("depth")
    renamed = dataclasses.replace(depth, labels=tuple(
        "depth 66" if x == depth.reference else x for x in depth.labels), reference="depth 66")
    changed = dataclasses.replace(study, sweeps=tuple(
        renamed if s is depth else s for s in study.sweeps))
    with pytest.raises(ValueError, match="depth 66"):
        changed.check(runs)
    # A reference outside the sweep's labels cannot be declared.
    with pytest.raises(ValueError, match="not one of its labels"):
        Sweep("depth", depth.labels, "depth 66")
    # The runs side: a label the sweeps do not declare.
    runs = [("full schedule" if label == "no early stopping" else label, c) for label, c in runs]
    with pytest.raises(ValueError, match="full schedule"):
        study.check(runs)
    # And findings, reading the renamed sweep, says what is missing instead of dropping it.
    frame = _frame(_runs("smoke", store))
    monkeypatch.setitem(STUDIES, "03_depth_study", changed)
    problems = _finding_problems(frame)
    assert len(problems) == 1 and problems[0].startswith("03_depth_study/depth: - **depth, ")
    assert "no `depth 66` run" in problems[0]
    assert "no `depth 66` run to compare the depth sweep with" in findings.lines(
        frame, "03_depth_study", ("depth",))


def _frame(runs_by_study) -> pd.DataFrame:
    """A results frame with one row per run the studies make (deterministic accuracies)."""
    rng = np.random.default_rng(0)
    rows = []
    for study, runs in runs_by_study.items():
        for label, c in runs:
            acc = float(rng.uniform(0.3, 0.9))
            run = max(1, int(c.epochs) - 1) if c.early_stop_patience else int(np.ceil(c.epochs))
            rows.append({"study": study, "label": label, "dataset": c.dataset, "model": c.model,
                         "options": json.dumps(c.model_options, sort_keys=True),
                         "augmentations": c.augment, "train_images": 1000, "tta": c.tta,
                         "optimizer": c.optimizer, "lr": c.lr,
                         "seed": c.seed, "epochs": c.epochs, "epochs_run": run,
                         "best_epoch": run, "train_acc": acc + 0.05, "val_acc": acc,
                         "test_acc": acc, "wall_seconds": 60.0, "hardware": "test CPU",
                         "profile": "smoke", "run_key": c.key()})
    return pd.DataFrame(rows)


def _finding_problems(frame) -> list[str]:
    """Every sweep of every study with rows in `frame`: its lines, one per dataset, each naming
    the sweep and comparing with its reference. Returns what falls short."""
    problems = []
    for name, study in STUDIES.items():
        rows = frame[frame["study"] == name]
        for sweep in study.sweeps:
            found = findings.sweep_finding(rows, sweep)
            expected = rows.loc[rows["label"].isin(sweep.labels), "dataset"].unique()
            # A sweep repeated at a longer budget also states the change between budgets.
            heads = [f"**{sweep.name}, "] + ([f"**{sweep.repeats} across budgets, "]
                                             if sweep.repeats else [])
            if sum(heads[0] in line for line in found) != len(expected):
                problems.append(f"{name}/{sweep.name}: {len(found)} lines")
            problems += [f"{name}/{sweep.name}: {line}" for line in found
                         if not any(h in line for h in heads) or "no run" in line
                         or "to compare" in line]
    return problems


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_a_frame_of_the_studies_own_runs_gets_a_finding_for_every_sweep(profile, store):
    frame = _frame(_runs(profile, store))
    assert _finding_problems(frame) == []
    section = findings.readme_section(frame)
    for study in STUDIES.values():
        for sweep in study.sweeps:
            assert f"**{sweep.name}, CIFAR-10**" in section, sweep.name
        if study.sweeps:
            answer = findings.answer(frame[frame["study"] == study.name], study.sweeps)
            assert "no run" not in answer and "to compare" not in answer
            for sweep in study.sweeps:  # a grid compares nothing: it names its choices
                assert (f"**CIFAR-10, {sweep.name}**: rates chosen" if sweep.grid
                        else f"`{sweep.reference}`") in answer, sweep.name


def test_a_sweep_without_runs_or_without_a_finding_fails(store):
    frame = _frame(_runs("smoke", store))
    dropout = STUDIES["03_depth_study"].sweep("dropout")
    problems = _finding_problems(frame[~frame["label"].isin(dropout.labels)])
    assert problems and all(p.startswith("03_depth_study/dropout: ") for p in problems)
    study = STUDIES["02_augmentation_ablation"]  # a study without rows: nothing is due
    assert _finding_problems(frame[frame["study"] != study.name]) == []
    rows = frame[(frame["study"] == study.name) & (frame["label"] != "crop+flip")]
    assert "(no `crop+flip` run to compare the augmentation sweep with here)" in \
        findings.sweep_lines(rows, study.sweeps[0])[0]
    mute = dataclasses.replace(study.sweeps[0], finding="nothing")
    with pytest.raises(ValueError, match="finding 'nothing' is not allowed"):
        findings.sweep_finding(rows, mute)
    with pytest.raises(ValueError, match="no sweep"):
        findings.lines(frame, study.name, ("augmentations",))


def test_each_study_names_findings_that_exist_and_figures_its_notebook_writes():
    for name, study in STUDIES.items():
        for finding in study.findings:
            assert callable(getattr(findings, finding)), (name, finding)
        for sweep in study.sweeps:  # a sweep is stated by a finding its study states
            assert sweep.finding in {"sweep_lines", *study.findings}, (name, sweep.name)
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        literal = set(re.findall(r'"([^"{}]+\.png)"', source))
        templates = [r"\w+".join(map(re.escape, re.split(r"\{[^}]*\}", t)))
                     for t in re.findall(r'f"([^"]+\.png)"', source)]
        for figure in study.figures:
            assert figure in literal or any(re.fullmatch(t, figure) for t in templates), \
                (name, figure)


def test_the_architecture_frontier_trains_each_family_with_its_own_recipe(store):
    from cnnlib.training.config import RECIPES, RunConfig

    runs = definitions.architecture_runs("cpu", store)
    for label, config in runs:
        model, _ = definitions.architecture_budget(label)
        own = RECIPES[model if model in ("baseline", "fastnet") else "sgd_cosine"]
        for field in ("optimizer", "lr", "momentum", "batch_size", "schedule", "weight_decay",
                      "label_smoothing", "crop_padding", "pad_mode"):
            assert getattr(config, field) == own.get(field, getattr(RunConfig(), field)), label
        assert (config.tta, config.val_size, config.train_subset) == (0, 5000, 0), label
    made = {(c.dataset, definitions.architecture_budget(label)) for label, c in runs}
    assert made == {(ds, (m, f)) for m in definitions.ARCHITECTURES
                    for ds, factors in (("cifar10", (1, 3, 9)), ("cifar100", (1, 3)))
                    for f in factors}
    # 200 images/s and 45,000 training images: 2 minutes buy 0.53 epochs, 18 minutes 4.8.
    epochs = {c.epochs for label, c in runs if label.endswith("×9")}
    assert epochs == {4.8}
    assert {c.epochs for label, c in runs if label.endswith("×1")} == {0.53}
    assert definitions.architecture_label("wrn16_4", 3) == "wrn16_4 ×3"
    assert definitions.architecture_budget("wrn16_4 ×3") == ("wrn16_4", 3)
