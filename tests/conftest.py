"""Shared fixtures: small synthetic CIFAR-10/100 copies in the official file layout.

Other test files reuse them with ``load_cifar(name, root=synthetic_root, download=False)``.
"""

from __future__ import annotations

import contextlib

import pytest
from cifar_files import write_synthetic

from cnnlib.data.cifar import CifarData, load_cifar
from cnnlib.study import budget
from cnnlib.training import loop

SYNTHETIC_SIZES = {"cifar10": (1000, 200), "cifar100": (1000, 200)}  # (n_train, n_test)


@pytest.fixture(autouse=True)
def _no_unstored_speeds(monkeypatch):
    """Every test starts without the speeds a busy timing kept for its process (budget.py)."""
    monkeypatch.setattr(budget, "_UNSTORED", {})


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A data root holding both synthetic datasets (learnable, seed 0); do not modify it."""
    root = tmp_path_factory.mktemp("cifar_synthetic")
    for name, (n_train, n_test) in SYNTHETIC_SIZES.items():
        write_synthetic(name, root, n_train=n_train, n_test=n_test, seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic_cifar10(synthetic_root) -> CifarData:
    return load_cifar("cifar10", root=synthetic_root, download=False)


@pytest.fixture(scope="session")
def synthetic_cifar100(synthetic_root) -> CifarData:
    return load_cifar("cifar100", root=synthetic_root, download=False)


class _Killed(Exception):
    pass


@pytest.fixture
def run_then_kill(monkeypatch):
    """``run_then_kill(trainer, epochs)``: train until `epochs` epochs are checkpointed, then
    stop as a killed process would, right after writing last.pt."""

    def run(trainer, epochs: int) -> None:
        save = loop.save_atomic

        def save_then_die(obj, path):
            out = save(obj, path)
            if trainer.epoch >= epochs:
                raise _Killed
            return out

        with monkeypatch.context() as m, contextlib.suppress(_Killed):
            m.setattr(loop, "save_atomic", save_then_die)
            trainer.run_epochs()
        assert trainer.epoch == epochs, "the run ended before it could be killed"

    return run
