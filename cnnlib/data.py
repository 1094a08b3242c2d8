"""CIFAR-10/100: obtain, read, validate, split, summarize, and write synthetic copies.

Images stay ``uint8`` tensors ``[N, 3, 32, 32]`` (NCHW, RGB) and labels ``int64 [N]``.
The files are the official "python version" pickles; ``obtain`` finds or fetches them in
this order: an extracted folder, an official archive placed by the user, an offline mirror
(``CNNLIB_DATA_MIRROR``), the official download.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100")
DEFAULT_ROOT = "data"
ROOT_ENV = "CNNLIB_DATA_ROOT"
MIRROR_ENV = "CNNLIB_DATA_MIRROR"
MIRROR_SCRIPT = "restore_cifar.py"

ROW = 3 * 32 * 32
OFFICIAL_PER_BATCH = 10000  # CIFAR-10 batches.meta value of the real data


class _Archive(NamedTuple):
    folder: str  # top-level folder inside the archive
    filename: str
    md5: str
    url: str


_ARCHIVES = {
    "cifar10": _Archive(
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _Archive(
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

_CIFAR10_TRAIN = tuple(f"data_batch_{k}" for k in range(1, 6))
_FILES = {
    "cifar10": (*_CIFAR10_TRAIN, "test_batch", "batches.meta"),
    "cifar100": ("train", "test", "meta"),
}

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
# Fine -> coarse label map of the real CIFAR-100 (used only to write synthetic data).
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


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


# ----------------------------------------------------------------------------- obtaining


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$CNNLIB_DATA_ROOT``, else ``DEFAULT_ROOT`` (cwd-relative)."""
    if root is None:
        root = os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(root).expanduser()


def _complete(folder: Path, name: str) -> bool:
    return all((folder / f).is_file() for f in _FILES[name])


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, base: Path, name: str) -> None:
    """Extract into a temporary folder, then rename: a crash never leaves a half folder."""
    target = base / _ARCHIVES[name].folder
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
    try:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, **safe)
        if not _complete(tmp / target.name, name):
            raise ValueError(f"{archive}: does not hold a complete {target.name}/ folder")
        if _complete(target, name):  # another process finished first
            return
        shutil.rmtree(target, ignore_errors=True)
        (tmp / target.name).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_archive(base: Path, name: str) -> str | None:
    """Step 2: an official archive placed in ``base``. Returns why it failed, or None."""
    spec = _ARCHIVES[name]
    archive = base / spec.filename
    if not archive.is_file():
        return None
    if _md5(archive) != spec.md5:
        return f"{archive} fails its md5 check (incomplete download?)"
    log.info("extracting %s", archive)
    try:
        _extract(archive, base, name)
    except (OSError, ValueError, tarfile.TarError) as err:
        return f"{archive}: {err}"
    return None


def _from_mirror(base: Path, name: str) -> str | None:
    """Step 3: run the offline mirror's restore script. Returns why it failed, or None."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return None
    script = Path(mirror).expanduser() / MIRROR_SCRIPT
    if not script.is_file():
        return f"{MIRROR_ENV}={mirror} holds no {MIRROR_SCRIPT}"
    log.info("restoring %s from mirror %s", name, mirror)
    cmd = [sys.executable, str(script), name, str(base)]
    try:  # a restore takes seconds; the timeout only guards against a hung script
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"mirror restore failed: {err}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        return f"mirror restore failed: {lines[-1]}"
    return None


def _from_download(base: Path, name: str) -> str | None:
    """Step 4: the official download, md5-checked. Returns why it failed, or None."""
    from torchvision.datasets.utils import download_url  # heavy import, only when needed

    spec = _ARCHIVES[name]
    try:
        base.mkdir(parents=True, exist_ok=True)
        download_url(spec.url, str(base), spec.filename, spec.md5)
        _extract(base / spec.filename, base, name)
    except Exception as err:  # noqa: BLE001 - any network/disk failure means "not obtained"
        return f"download failed: {type(err).__name__}: {err}"
    return None


def obtain(name: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the extracted folder of ``name``, obtaining it first when missing."""
    _check_name(name)
    base = data_root(root) / name
    folder = base / _ARCHIVES[name].folder
    if _complete(folder, name):
        return folder
    steps = [_from_archive, _from_mirror] + ([_from_download] if download else [])
    problems = []
    for step in steps:
        problem = step(base, name)
        if _complete(folder, name):
            return folder
        if problem:
            log.warning("%s", problem)
            problems.append(" ".join(problem.split()))  # keep the final error on one line
    raise FileNotFoundError(_missing_message(name, base, download, problems))


def _missing_message(name: str, base: Path, download: bool, problems: list[str]) -> str:
    spec = _ARCHIVES[name]
    fixes = f"place {spec.filename} ({spec.url}) in {base}, or set {MIRROR_ENV}"
    fixes += " to a folder holding " + MIRROR_SCRIPT
    fixes += ", or retry with network access" if download else ", or allow download=True"
    tried = f" [{'; '.join(problems)}]" if problems else ""
    return f"{name} not found in {base / spec.folder}: {fixes}{tried}"


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
    per_batch = _field(meta, "num_cases_per_batch", meta_path)
    if not isinstance(per_batch, int) or per_batch <= 0:
        raise ValueError(f"{meta_path}: 'num_cases_per_batch' must be a positive int")
    train = [_read_batch(folder / f, {"labels": 10}) for f in _CIFAR10_TRAIN]
    test, (test_labels,) = _read_batch(folder / "test_batch", {"labels": 10})
    official = per_batch == OFFICIAL_PER_BATCH  # the real data: every batch is exactly full
    for k, (data, _) in enumerate(train):
        _check_count(folder / _CIFAR10_TRAIN[k], len(data), per_batch, exact=official)
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
    _check_name(name)
    folder = Path(folder)
    return _read_cifar10(folder) if name == "cifar10" else _read_cifar100(folder)


@functools.lru_cache(maxsize=4)
def _read_cached(folder: str, name: str, stamp: tuple) -> CifarData:
    return read_cifar(Path(folder), name)


def load_cifar(
    name: str, root: str | os.PathLike | None = None, download: bool = True
) -> CifarData:
    """Obtain, read and validate ``name``; repeated calls in one process share the result."""
    folder = obtain(name, root, download).resolve()
    # The files' sizes and mtimes join the key, so rewritten files are never served stale.
    stamp = tuple((s.st_size, s.st_mtime_ns) for s in (os.stat(folder / f) for f in _FILES[name]))
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


def _check_size(value: Any, what: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if not 0 <= value < upper:
        raise ValueError(f"{what} must be in 0..{upper - 1}, got {value}")
    return int(value)


def _take(images: torch.Tensor, labels: torch.Tensor, coarse, idx: np.ndarray) -> Split:
    index = torch.from_numpy(np.sort(idx))
    return Split(images[index], labels[index], None if coarse is None else coarse[index])


def train_split(
    data: CifarData, val_size: int = 0, subset: int = 0, seed: int = 0
) -> tuple[Split, Split | None]:
    """Stratified, deterministic (train, val) split of the training set.

    ``val_size`` images are held out (0 -> no validation split); then ``subset`` > 0 keeps a
    stratified subset of the remaining training images. Indices depend only on the labels and
    the arguments, and both parts keep the original order of the images.
    """
    labels = data.train_labels.numpy()
    n = len(labels)
    val_size = _check_size(val_size, "val_size", n)
    subset = _check_size(subset, "subset", n - val_size + 1)
    per_class = _stratified_order(labels, seed)
    counts = np.array([len(idx) for idx in per_class])
    val_q = _quotas(counts, val_size)
    val_idx = [idx[:q] for idx, q in zip(per_class, val_q, strict=True)]
    rest = [idx[q:] for idx, q in zip(per_class, val_q, strict=True)]
    if subset:
        sub_q = _quotas(np.array([len(idx) for idx in rest]), subset)
        rest = [idx[:q] for idx, q in zip(rest, sub_q, strict=True)]
    imgs, labs, coarse = data.train_images, data.train_labels, data.train_coarse
    if not val_size and not subset:  # the whole training set: no copy
        return Split(imgs, labs, coarse), None
    train = _take(imgs, labs, coarse, np.concatenate(rest))
    val = _take(imgs, labs, coarse, np.concatenate(val_idx)) if val_size else None
    return train, val


def test_split(data: CifarData) -> Split:
    return Split(data.test_images, data.test_labels, data.test_coarse)


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


def fingerprint(data: CifarData) -> str:
    """Short stable hash of all images and labels (SHA-256 reads ~1 GB/s: about 0.2 s)."""
    digest = hashlib.sha256(data.name.encode())
    tensors = (data.train_images, data.train_labels, data.train_coarse)
    for t in tensors + (data.test_images, data.test_labels, data.test_coarse):
        if t is None:
            digest.update(b"none")
            continue
        t = t.contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(memoryview(t.numpy()).cast("B"))  # no copy of the pixels
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- dataset view


class CifarDataset(torch.utils.data.Dataset):
    """torchvision-style view of a ``Split``: items are (PIL image or CHW tensor, int label)."""

    def __init__(self, split: Split, transform=None, target_transform=None, as_pil: bool = True):
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.as_pil = as_pil
        self.targets = split.labels.tolist()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image = self.split.images[index]
        if self.as_pil:
            image = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
        if self.transform is not None:
            image = self.transform(image)
        target = self.targets[index]
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


# ----------------------------------------------------------------------------- synthetic


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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)
    os.replace(tmp, path)


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
        _dump(batch, folder / _CIFAR10_TRAIN[k])
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
    _check_name(name)
    if n_train < 5 or n_test < 1:
        raise ValueError(f"n_train must be >= 5 and n_test >= 1, got {n_train}, {n_test}")
    folder = Path(root) / name / _ARCHIVES[name].folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = _write_cifar10 if name == "cifar10" else _write_cifar100
    writer(folder, n_train, n_test, rng, learnable)
    return folder
