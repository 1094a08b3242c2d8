"""Small CIFAR copies written in the exact official "python version" layout, for the tests.

The files are Python-2 pickles (protocol 2, bytes written as ``str``) with the official keys,
so the reader under test meets what it meets in the real archives.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from cnnlib.data.cifar import ROW
from cnnlib.data.obtain import _ARCHIVES, CIFAR10_TRAIN, DATASETS

# The official class names, in label order: the library reads them from batches.meta.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
CIFAR100_SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip
# Fine -> coarse label map of the real CIFAR-100.
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 ``str``, as the official files do, so that ``encoding="bytes"``
    gives bytes keys and ``encoding="latin1"`` gives str keys (what torchvision expects)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _dump(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _pattern_images(labels: np.ndarray, groups: np.ndarray, rng, learnable: bool) -> np.ndarray:
    """uint8 [N, 3072] rows. Learnable: colour per group plus an oriented grating per class."""
    n, num = len(labels), len(groups)
    if not learnable:
        return rng.integers(0, 256, size=(n, ROW), dtype=np.uint8)
    fixed = np.random.default_rng(12345)  # class looks do not depend on ``seed``
    colours = fixed.uniform(50, 205, size=(int(groups.max()) + 1, 3))
    angle, freq, phase = (fixed.uniform(lo, hi, num) for lo, hi in ((0, np.pi), (1, 4), (0, 6)))
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    along = xx * np.cos(angle)[:, None, None] + yy * np.sin(angle)[:, None, None]
    wave = np.sin(2 * np.pi * freq[:, None, None] * along + phase[:, None, None])  # [C, 32, 32]
    x = colours[groups[labels]][:, :, None, None] + 45 * wave[labels][:, None]
    x = x + rng.normal(0, 20, size=x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(n, ROW)


def _synthetic_labels(n: int, num: int, rng) -> np.ndarray:
    return rng.permutation(np.arange(n) % num).astype(np.int64)


def _filenames(labels: np.ndarray, classes: tuple[str, ...], start: int = 0) -> list[bytes]:
    return [f"{start + i}_{classes[c]}.png".encode() for i, c in enumerate(labels)]


def _encode(names: tuple[str, ...]) -> list[bytes]:
    return [c.encode() for c in names]


def _write_cifar10(folder: Path, n_train: int, n_test: int, rng, learnable: bool) -> None:
    groups = np.arange(10)
    labels = _synthetic_labels(n_train, 10, rng)
    data = _pattern_images(labels, groups, rng, learnable)
    bounds = np.cumsum([0] + [len(p) for p in np.array_split(labels, 5)])
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        batch = {
            b"batch_label": f"training batch {k + 1} of 5".encode(),
            b"labels": labels[lo:hi].tolist(),
            b"data": data[lo:hi],
            b"filenames": _filenames(labels[lo:hi], CIFAR10_CLASSES, lo),
        }
        _dump(batch, folder / CIFAR10_TRAIN[k])
    labels = _synthetic_labels(n_test, 10, rng)
    test = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels.tolist(),
        b"data": _pattern_images(labels, groups, rng, learnable),
        b"filenames": _filenames(labels, CIFAR10_CLASSES),
    }
    _dump(test, folder / "test_batch")
    meta = {
        b"num_cases_per_batch": int(bounds[1]),  # the largest batch: array_split puts it first
        b"label_names": _encode(CIFAR10_CLASSES),
        b"num_vis": ROW,
    }
    _dump(meta, folder / "batches.meta")


def _write_cifar100(folder: Path, n_train: int, n_test: int, rng, learnable: bool) -> None:
    groups = np.array(CIFAR100_FINE_TO_COARSE)  # a superclass shares a colour: coarse is learnable
    for split, n in (("train", n_train), ("test", n_test)):
        fine = _synthetic_labels(n, 100, rng)
        kind = "training" if split == "train" else "testing"
        batch = {
            b"filenames": _filenames(fine, CIFAR100_CLASSES),
            b"batch_label": f"{kind} batch 1 of 1".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": groups[fine].tolist(),
            b"data": _pattern_images(fine, groups, rng, learnable),
        }
        _dump(batch, folder / split)
    meta = {
        b"fine_label_names": _encode(CIFAR100_CLASSES),
        b"coarse_label_names": _encode(CIFAR100_SUPERCLASSES),
    }
    _dump(meta, folder / "meta")


def write_synthetic(
    name: str,
    root: str | os.PathLike,
    n_train: int = 500,
    n_test: int = 100,
    seed: int = 0,
    learnable: bool = True,
) -> Path:
    """Write a small dataset in the exact official layout under ``root/name``; return its folder.

    Labels are balanced and shuffled. ``learnable=True`` gives every class its own colour and
    grating plus noise (a small CNN beats chance within a few steps); False gives pure noise.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if n_train < 5 or n_test < 1:
        raise ValueError(f"n_train must be >= 5 and n_test >= 1, got {n_train}, {n_test}")
    folder = Path(root) / name / _ARCHIVES[name].folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = _write_cifar10 if name == "cifar10" else _write_cifar100
    writer(folder, n_train, n_test, rng, learnable)
    return folder
