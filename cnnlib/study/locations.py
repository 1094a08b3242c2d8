"""Where a study reads and writes, and which profile sizes it.

Locations, relative to the project root (the folder holding pyproject.toml and cnnlib/),
never by changing the working directory:
- outputs: `$CNNLIB_OUTPUTS`, else `<root>/outputs/` (figures, results, reports);
- runs:    `$CNNLIB_RUNS`, else `<outputs>/runs/` (the run cache);
- models:  `$CNNLIB_MODELS`, else `<root>/models/` (the exported best checkpoints).
A default location is given relative to the working directory when that is the root (so
that what is printed and recorded names no machine's path) and absolute otherwise.
Tests and nbval point all three at a scratch folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnlib.data.obtain import ROOT_ENV as DATA_ROOT_ENV

PROFILES = ("smoke", "cpu", "full")
PROFILE_ENV = "CNNLIB_PROFILE"
RUNS_ENV = "CNNLIB_RUNS"
OUTPUTS_ENV = "CNNLIB_OUTPUTS"
MODELS_ENV = "CNNLIB_MODELS"


def resolve_profile(profile: str | None = "auto") -> str:
    """The profile to use: an explicit one, else $CNNLIB_PROFILE, else full on CUDA and cpu otherwise."""
    source = "profile"
    if profile in (None, "", "auto"):
        profile = os.environ.get(PROFILE_ENV, "auto") or "auto"
        source = PROFILE_ENV
    if profile == "auto":
        return "full" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"{source}: {profile!r} is not allowed; allowed: auto, {', '.join(PROFILES)}")
    return profile


def project_root(start=None) -> Path:
    """The folder holding pyproject.toml and cnnlib/, searched upwards from `start` (default:
    the working directory), else the folder above this package."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "cnnlib").is_dir():
            return folder
    folder = Path(__file__).resolve().parents[2]
    if not (folder / "pyproject.toml").is_file():
        raise FileNotFoundError(f"project root: no pyproject.toml above {here}")
    return folder


def in_project(name: str) -> Path:
    """`<root>/<name>`: relative when the working directory is the root, else absolute."""
    root = project_root()
    return Path(name) if root == Path.cwd().resolve() else root / name


def outputs_root() -> Path:
    """Where notebooks write figures, results and reports: $CNNLIB_OUTPUTS, else <root>/outputs."""
    return Path(os.environ.get(OUTPUTS_ENV) or in_project("outputs"))


def models_root() -> Path:
    """Where the exported best checkpoints go: $CNNLIB_MODELS, else <root>/models."""
    return Path(os.environ.get(MODELS_ENV) or in_project("models"))


def runs_root(root=None) -> Path:
    """The run cache: `root`, else $CNNLIB_RUNS, else <outputs>/runs."""
    return Path(root or os.environ.get(RUNS_ENV) or outputs_root() / "runs")


def speeds_path() -> Path:
    """Where the training speeds measured per machine are kept, with the machine the budgets
    are pinned to (`budget.py`)."""
    return runs_root() / "speeds.json"


def notebook_seconds_path() -> Path:
    """Where what each notebook took here besides training is kept (`budget.py`)."""
    return runs_root() / "notebook_seconds.json"


def anchor_data_root() -> None:
    """Make the data root the project's data/ for this process and the ones it starts, unless
    $CNNLIB_DATA_ROOT names one: a kernel started in notebooks/ reads the same data as one
    started in the root, without changing its working directory."""
    if not os.environ.get(DATA_ROOT_ENV):
        os.environ[DATA_ROOT_ENV] = str(in_project("data"))
