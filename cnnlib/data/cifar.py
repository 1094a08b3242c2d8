"""CIFAR-10/100: read, validate, split and summarize.

Images stay ``uint8`` tensors ``[N, 3, 32, 32]`` (NCHW, RGB) and labels ``int64 [N]``.
The files are the official "python version" pickles, found or fetched by ``obtain.py``.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlib._checks import check_int
from cnnlib.data.obtain import CIFAR10_TRAIN, FILES, check_name, obtain

ROW = 3 * 32 * 32
OFFICIAL_PER_BATCH = 10000  # CIFAR-10 batches.meta value of the real data
OFFICIAL_SIZES = (50000, 10000)  # train, test images of both official datasets
# `fingerprint` of the official datasets: a copy of their size that differs is damaged.
OFFICIAL_FINGERPRINTS = {"cifar10": "be48ca49b63d1e55", "cifar100": "c58796e2d9d9624a"}


# ----------------------------------------------------------------------------- containers


@dataclass
class CifarData:
    """A whole dataset in memory. Shared by the in-process cache: treat it as read-only."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    superclasses: list[str] | None = None
    train_coarse: torch.Tensor | None = None
    test_coarse: torch.Tensor | None = None
    fine_to_coarse: torch.Tensor | None = None  # -1 for a fine class absent from the labels

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Split:
    images: torch.Tensor
    labels: torch.Tensor
    coarse: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------- reading


class _SafeUnpickler(pickle.Unpickler):
    """Builds only what CIFAR pickles hold (containers, numpy arrays): a file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce_ex__(np.zeros(1), 2)[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce_ex__(np.zeros(1), 2)[0],
        ("_codecs", "encode"): codecs.encode,  # bytes in Python-3 protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}") from None


def _unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle as a dict with str keys; any damage -> ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected the official CIFAR file layout)")
    raw = path.read_bytes()  # from memory, a corrupt length field cannot trigger a huge read
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - whatever breaks, the file is unreadable
        reason = f"{type(err).__name__}: {err}"
        raise ValueError(f"{path}: not a readable CIFAR pickle ({reason})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _field(batch: dict, key: str, path: Path) -> Any:
    if key not in batch:
        raise ValueError(f"{path}: missing key {key!r} (has {sorted(batch)})")
    return batch[key]


def _images(batch: dict, path: Path) -> np.ndarray:
    data = _field(batch, "data", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        kind = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise ValueError(f"{path}: 'data' must be a uint8 [N, {ROW}] array, got {kind}")
    if data.shape[1] != ROW or data.shape[0] == 0:
        raise ValueError(f"{path}: 'data' must have shape [N>0, {ROW}], got {data.shape}")
    return data


def _labels(batch: dict, key: str, n: int, num: int, path: Path) -> np.ndarray:
    try:
        labels = np.asarray(_field(batch, key, path))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {key!r} is not a list of integers ({err})") from None
    if labels.dtype.kind not in "iu":  # floats would be truncated silently by a cast
        raise ValueError(f"{path}: {key!r} must hold integers, got {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    if labels.shape != (n,):
        raise ValueError(f"{path}: {key!r} has shape {labels.shape}, expected ({n},) like 'data'")
    if n and (labels.min() < 0 or labels.max() >= num):
        raise ValueError(f"{path}: {key!r} outside 0..{num - 1}")
    return labels


def _check_filenames(batch: dict, n: int, path: Path) -> None:
    names = batch.get("filenames")
    if names is not None and len(names) != n:
        raise ValueError(f"{path}: {len(names)} filenames for {n} images")


def _names(meta: dict, key: str, count: int, path: Path) -> list[str]:
    names = [_text(x) for x in _field(meta, key, path)]
    if len(names) != count:
        raise ValueError(f"{path}: {key!r} has {len(names)} names, expected {count}")
    return names


def _read_batch(path: Path, label_keys: dict[str, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One batch file -> (uint8 [N, 3072], one int64 [N] array per label key)."""
    batch = _unpickle(path)
    data = _images(batch, path)
    _check_filenames(batch, len(data), path)
    labels = [_labels(batch, k, len(data), num, path) for k, num in label_keys.items()]
    return data, labels


def _to_tensor(parts: list[np.ndarray]) -> torch.Tensor:
    """Rows of channel-planar RGB -> uint8 [N, 3, 32, 32] (one copy, no per-image work)."""
    array = np.concatenate(parts).reshape(-1, 3, 32, 32)
    return torch.from_numpy(array)


def _read_cifar10(folder: Path) -> CifarData:
    meta_path = folder / "batches.meta"
    meta = _unpickle(meta_path)
    classes = _names(meta, "label_names", 10, meta_path)
    per_batch = check_int(f"{meta_path}: num_cases_per_batch",
                          _field(meta, "num_cases_per_batch", meta_path), 1)
    train = [_read_batch(folder / f, {"labels": 10}) for f in CIFAR10_TRAIN]
    test, (test_labels,) = _read_batch(folder / "test_batch", {"labels": 10})
    official = per_batch == OFFICIAL_PER_BATCH  # the real data: every batch is exactly full
    for k, (data, _) in enumerate(train):
        _check_count(folder / CIFAR10_TRAIN[k], len(data), per_batch, exact=official)
    if official:
        _check_count(folder / "test_batch", len(test), per_batch, exact=True)
    return CifarData(
        name="cifar10",
        train_images=_to_tensor([d for d, _ in train]),
        train_labels=torch.from_numpy(np.concatenate([lab for _, (lab,) in train])),
        test_images=_to_tensor([test]),
        test_labels=torch.from_numpy(test_labels),
        classes=classes,
    )


def _check_count(path: Path, n: int, per_batch: int, exact: bool) -> None:
    """A batch holds at most ``num_cases_per_batch`` images, exactly that many when ``exact``."""
    if n > per_batch or (exact and n != per_batch):
        raise ValueError(f"{path}: {n} images, batches.meta says {per_batch} per batch")


def _read_cifar100(folder: Path) -> CifarData:
    meta_path = folder / "meta"
    meta = _unpickle(meta_path)
    classes = _names(meta, "fine_label_names", 100, meta_path)
    superclasses = _names(meta, "coarse_label_names", 20, meta_path)
    keys = {"fine_labels": 100, "coarse_labels": 20}
    train, (train_fine, train_coarse) = _read_batch(folder / "train", keys)
    test, (test_fine, test_coarse) = _read_batch(folder / "test", keys)
    fine = np.concatenate([train_fine, test_fine])
    fine_to_coarse = _fine_to_coarse(fine, np.concatenate([train_coarse, test_coarse]), folder)
    return CifarData(
        name="cifar100",
        train_images=_to_tensor([train]),
        train_labels=torch.from_numpy(train_fine),
        test_images=_to_tensor([test]),
        test_labels=torch.from_numpy(test_fine),
        classes=classes,
        superclasses=superclasses,
        train_coarse=torch.from_numpy(train_coarse),
        test_coarse=torch.from_numpy(test_coarse),
        fine_to_coarse=torch.from_numpy(fine_to_coarse),
    )


def _fine_to_coarse(fine: np.ndarray, coarse: np.ndarray, folder: Path) -> np.ndarray:
    """Each fine class must belong to exactly one superclass; unseen fine classes get -1."""
    mapping = np.full(100, -1, dtype=np.int64)
    mapping[fine] = coarse
    if not np.array_equal(mapping[fine], coarse):
        raise ValueError(f"{folder}: a fine label appears with two different coarse labels")
    return mapping


def read_cifar(folder: str | os.PathLike, name: str) -> CifarData:
    """Read and validate an extracted official folder (e.g. ``.../cifar-10-batches-py``)."""
    check_name(name)
    folder = Path(folder)
    data = _read_cifar10(folder) if name == "cifar10" else _read_cifar100(folder)
    _check_official(data, folder)
    return data


def _check_official(data: CifarData, folder: Path) -> None:
    """A copy of the official size must hold the official pixels and labels.

    Smaller copies (synthetic test data, subsets) have no known fingerprint to compare.
    """
    if (len(data.train_labels), len(data.test_labels)) != OFFICIAL_SIZES:
        return
    found, known = fingerprint(data), OFFICIAL_FINGERPRINTS[data.name]
    if found != known:
        raise ValueError(f"{data.name}: the images or labels in {folder} differ from the official "
                         f"dataset (fingerprint {found}, expected {known}), a file is damaged: "
                         "delete the folder and run `cnnlib data` to obtain it again")


@functools.lru_cache(maxsize=4)
def _read_cached(folder: str, name: str, stamp: tuple) -> CifarData:
    return read_cifar(Path(folder), name)


def load_cifar(
    name: str, root: str | os.PathLike | None = None, download: bool = True
) -> CifarData:
    """Obtain, read and validate ``name``; repeated calls in one process share the result."""
    folder = obtain(name, root, download).resolve()
    # The files' sizes and mtimes join the key, so rewritten files are never served stale.
    stamp = tuple((s.st_size, s.st_mtime_ns) for s in (os.stat(folder / f) for f in FILES[name]))
    return _read_cached(str(folder), name, stamp)


# ----------------------------------------------------------------------------- splits


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64: a fixed integer hash, so split indices never depend on a library's RNG."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _quotas(counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class shares of ``total`` proportional to ``counts`` (largest remainder, exact sum)."""
    exact = counts * total / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(len(counts)), -(exact - quota)))  # ties: lower class first
    quota[order[: total - quota.sum()]] += 1
    return quota


def _stratified_order(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Indices of each class in a seed-dependent but fixed pseudo-random order."""
    salt = np.uint64(int(seed) & (2**64 - 1))  # negative seeds wrap, as in numpy
    keys = _mix(_mix(np.arange(len(labels), dtype=np.uint64) ^ salt))
    return [idx[np.argsort(keys[idx], kind="stable")] for idx in _by_class(labels)]


def _by_class(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def _take(images: torch.Tensor, labels: torch.Tensor, coarse, idx: np.ndarray) -> Split:
    index = torch.from_numpy(np.sort(idx))
    return Split(images[index], labels[index], None if coarse is None else coarse[index])


class SubsetWarning(UserWarning):
    """A training subset too small to hold every class (the CLI refuses it)."""


def train_split(
    data: CifarData, val_size: int = 0, subset: int = 0, seed: int = 0
) -> tuple[Split, Split | None]:
    """Stratified, deterministic (train, val) split of the training set.

    ``val_size`` images are held out (0 -> no validation split); then ``subset`` > 0 keeps a
    stratified subset of the remaining training images. Indices depend only on the labels and
    the arguments, and both parts keep the original order of the images. A subset that
    leaves a class out warns (SubsetWarning): the model could never predict that class.
    """
    labels = data.train_labels.numpy()
    n = len(labels)
    val_size = check_int("val_size", val_size, 0, n - 1)
    subset = check_int("subset", subset, 0, n - val_size)
    per_class = _stratified_order(labels, seed)
    counts = np.array([len(idx) for idx in per_class])
    val_q = _quotas(counts, val_size)
    val_idx = [idx[:q] for idx, q in zip(per_class, val_q, strict=True)]
    rest = [idx[q:] for idx, q in zip(per_class, val_q, strict=True)]
    if subset:
        sub_q = _quotas(np.array([len(idx) for idx in rest]), subset)
        rest = [idx[:q] for idx, q in zip(rest, sub_q, strict=True)]
        if (held := int((sub_q > 0).sum())) < len(sub_q):
            warnings.warn(SubsetWarning(
                f"train_subset: {subset} images hold {held} of the {len(sub_q)} classes; the "
                f"model never sees the others (give at least {len(sub_q)})"), stacklevel=2)
    imgs, labs, coarse = data.train_images, data.train_labels, data.train_coarse
    if not val_size and not subset:  # the whole training set: no copy
        return Split(imgs, labs, coarse), None
    train = _take(imgs, labs, coarse, np.concatenate(rest))
    val = _take(imgs, labs, coarse, np.concatenate(val_idx)) if val_size else None
    return train, val


def test_split(data: CifarData, subset: int = 0) -> Split:
    """The test set, or its first ``subset`` images when ``subset`` > 0 (smoke runs)."""
    split = Split(data.test_images, data.test_labels, data.test_coarse)
    if not subset:
        return split
    return Split(split.images[:subset], split.labels[:subset],
                 None if split.coarse is None else split.coarse[:subset])


test_split.__test__ = False  # test files import it by name: pytest must not collect it


# ----------------------------------------------------------------------------- summaries


def channel_stats(
    images: torch.Tensor, chunk: int = 10000
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (mean, std) in [0, 1] units of uint8 NCHW images (population std).

    A 256-bin histogram per channel (chunked, memory-light) gives exact integer sums, so the
    float64 result is exact up to rounding and several times faster than converting pixels.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape)
        raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {shape}")
    if images.shape[0] == 0:
        raise ValueError("images must not be empty")
    hist = torch.zeros(3, 256, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk]
        for c in range(3):
            hist[c] += torch.bincount(part[:, c].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.int64)
    count = images.numel() // 3
    mean = (hist * values).sum(1).double() / count
    var = ((hist * values * values).sum(1).double() / count - mean * mean).clamp_min(0)
    return _triple(mean / 255), _triple(var.sqrt() / 255)


def _triple(values: torch.Tensor) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


# id -> (data, hash): each loaded copy is hashed once, by the official-data check on
# reading, and the run cache's key reuses it.
_FINGERPRINTS: dict[int, tuple[CifarData, str]] = {}


def fingerprint(data: CifarData) -> str:
    """Short stable hash of all images and labels (SHA-256 reads ~1 GB/s: about 0.2 s);
    computed once per CifarData object (they are read-only)."""
    hit = _FINGERPRINTS.get(id(data))
    if hit is not None and hit[0] is data:
        return hit[1]
    digest = hashlib.sha256(data.name.encode())
    tensors = (data.train_images, data.train_labels, data.train_coarse)
    for t in tensors + (data.test_images, data.test_labels, data.test_coarse):
        if t is None:
            digest.update(b"none")
            continue
        t = t.contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(memoryview(t.numpy()).cast("B"))  # no copy of the pixels
    if len(_FINGERPRINTS) >= 4:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[id(data)] = (data, digest.hexdigest()[:16])
    return _FINGERPRINTS[id(data)][1]
