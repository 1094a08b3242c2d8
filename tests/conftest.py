"""Shared fixtures: small synthetic CIFAR-10/100 copies in the official file layout.

Other test files reuse them with ``load_cifar(name, root=synthetic_root, download=False)``.
"""

from __future__ import annotations

import pytest
from cifar_files import write_synthetic

from cnnlib.data.cifar import CifarData, load_cifar

SYNTHETIC_SIZES = {"cifar10": (1000, 200), "cifar100": (1000, 200)}  # (n_train, n_test)


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
