"""ciFAIR's lists of CIFAR test images with near-duplicates, and the project's own pixel
nearest-neighbour check against them.

- The CSV files of cvjena/cifair's `meta/` (Barz & Denzler, J. Imaging 2020) at a pinned
  commit, found as `obtain.py` finds the archives: `<data root>/cifair/`, else the mirror
  `$CNNLIB_DATA_MIRROR/cifair/`, else the download; md5-checked; `DuplicatesUnavailable`.
- `duplicate_test_ids`, `duplicate_pairs`: the lists as tensors.
- `nearest_neighbours`, `nearest_train`: exact pixel-L2 nearest training images (int8
  matrix products); `cifair_agreement`: how many of ciFAIR's pairs they find.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import math
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from cnnlib._checks import check_int
from cnnlib._fileio import atomic_write, first_line
from cnnlib.data.cifar import OFFICIAL_SIZES, load_cifar
from cnnlib.data.obtain import MIRROR_ENV, check_name, data_root

log = logging.getLogger(__name__)

COMMIT = "4c2764277f5fda8fec6784a78c1818eab13236c5"
BASE_URL = f"https://raw.githubusercontent.com/cvjena/cifair/{COMMIT}/meta/"
FOLDER = "cifair"  # under the data root and under the mirror
MD5 = {  # the files at COMMIT
    "duplicates_cifar10.csv": "23d9ffb6b69d69ef171c5f875839bb8a",
    "duplicates_cifar100.csv": "a4510ad3f6718f4a6dc86b607cd41771",
    "duplicates_cifar10_test.csv": "ab528b65b9052386876d3ded4dbcf62e",
    "duplicates_cifar100_test.csv": "5fc11c79f7549fd14ef9ee48709cd15b",
}
JUDGMENTS = {0: "exact", 1: "near-duplicate", 2: "very similar"}
TIMEOUT_S = 20
# Pixel L2 under which a test image is a copy of its nearest training image: an RMS of 10
# intensity levels. All 17 CIFAR-100 test images this close are ciFAIR exact duplicates;
# from about 12 levels (L2 686, CIFAR-10: 721) smooth unrelated images match too, so pixels
# certify copies only, not ciFAIR's near-duplicates (L2 900-4000).
THRESHOLD = 10 * math.sqrt(3 * 32 * 32)

_FAILED: dict[str, str] = {}  # base URL -> why its download failed, once per process


class DuplicatesUnavailable(OSError):
    """No route (data root, mirror, download) gave a ciFAIR list passing its md5 check."""


# ----------------------------------------------------------------------------- obtaining


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _said(problem: str) -> str:
    """`problem` on one line, logged once where it arises (the final error repeats it)."""
    problem = " ".join(problem.split())
    log.warning("%s", problem)
    return problem


def _from_mirror(filename: str, base_url: str) -> bytes | str | None:
    """The mirror's copy, or why not (None: no mirror set)."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return None
    source = Path(mirror).expanduser() / FOLDER / filename
    if not source.is_file():
        return _said(f"{MIRROR_ENV}={mirror} holds no {FOLDER}/{filename}")
    data = source.read_bytes()
    if _md5(data) != MD5[filename]:
        return _said(f"{source} fails its md5 check and is not used: restore the mirror's copy")
    return data


def _from_download(filename: str, base_url: str) -> bytes | str:
    """The downloaded file, or why not."""
    if base_url in _FAILED:  # a study of many runs asks once, not once per run
        return f"download from {base_url} not retried in this process ({_FAILED[base_url]})"
    url = base_url + filename
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            data = response.read()
    except Exception as e:  # noqa: BLE001 - any network failure means "not obtained"
        _FAILED[base_url] = f"{type(e).__name__}: {first_line(e)}"
        return _said(f"download of {url} failed: {_FAILED[base_url]}")
    if _md5(data) != MD5[filename]:
        _FAILED[base_url] = f"{url} gave a file that fails its md5 check"
        return _said(f"{_FAILED[base_url]}; it is not used")
    return data


def list_path(filename: str, root: str | os.PathLike | None = None, *,
              base_url: str = BASE_URL) -> Path:
    """`<data root>/cifair/<filename>`, obtained first when missing or damaged."""
    if filename not in MD5:
        raise ValueError(f"unknown ciFAIR list {filename!r}; allowed: {', '.join(MD5)}")
    target = data_root(root) / FOLDER / filename
    problems = []
    if target.is_file():
        if _md5(target.read_bytes()) == MD5[filename]:
            return target
        problems.append(_said(f"{target} fails its md5 check and is not used: delete it, or "
                              "let the mirror or the download replace it"))
    for route, step in (("mirror", _from_mirror), ("download", _from_download)):
        try:
            got = step(filename, base_url)
            if isinstance(got, bytes):
                atomic_write(target, lambda f, data=got: f.write(data))  # never half a file
                return target
        except OSError as e:  # an unreadable mirror, a full disk: say so, try the next route
            got = _said(f"{route}: {first_line(e)}")
        if got:
            problems.append(got)
    raise DuplicatesUnavailable(
        f"ciFAIR list {filename} not available: place it in {target.parent} (from "
        f"{base_url + filename}), or set {MIRROR_ENV} to a folder holding {FOLDER}/{filename}, "
        f"or retry with network access [{'; '.join(problems)}]")


def obtain_lists(root: str | os.PathLike | None = None, *,
                 base_url: str = BASE_URL) -> list[Path]:
    """The four ciFAIR lists in `<data root>/cifair/`; DuplicatesUnavailable at the first
    that no route gives."""
    return [list_path(filename, root, base_url=base_url) for filename in MD5]


# ----------------------------------------------------------------------------- the lists


class DuplicatePairs(NamedTuple):
    """One row per ciFAIR pair, int64 tensors. With `within="test"` `train_id` holds the
    other test image's index, as ciFAIR's `_test` files do."""

    test_id: torch.Tensor
    train_id: torch.Tensor
    judgment: torch.Tensor  # 0 exact, 1 near-duplicate, 2 very similar (JUDGMENTS)


def duplicate_pairs(dataset: str, root: str | os.PathLike | None = None, *,
                    within: str = "train") -> DuplicatePairs:
    """ciFAIR's pairs of `dataset`: test images with a near-duplicate in the training set
    (`within="train"`) or in the test set (`within="test"`)."""
    check_name(dataset)
    if within not in ("train", "test"):
        raise ValueError(f"within: {within!r} is not allowed; allowed: train, test")
    path = list_path(f"duplicates_{dataset}{'_test' if within == 'test' else ''}.csv", root)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [[int(row[key]) for row in rows] for key in ("TestID", "TrainID", "Judgment")]
    return DuplicatePairs(*(torch.tensor(c, dtype=torch.int64) for c in columns))


def duplicate_test_ids(dataset: str, root: str | os.PathLike | None = None) -> torch.Tensor:
    """Sorted unique int64 indices of the test images that ciFAIR replaces (every judgment)."""
    return torch.unique(duplicate_pairs(dataset, root).test_id)


# ----------------------------------------------------------------------------- nearest neighbours


class Nearest(NamedTuple):
    """Per query, the `k` nearest keys, nearest first: indices (int64 [N, k]) and pixel L2
    distances (float64 [N, k], uint8 units: 0 for a copy, 255 * sqrt(3072) at most; float64
    keeps the squared distance exact)."""

    index: torch.Tensor
    distance: torch.Tensor


def _centred(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as int8 rows minus 128: the distances stay the same, the products exact."""
    return (images.reshape(len(images), -1).to(torch.int16) - 128).to(torch.int8)


_EXACT_TERMS = 2**24 // 128**2  # products of int8 values are at most 128**2 in size


def _float_dots(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`_dots` in fp32, exact as well: a sum of at most `_EXACT_TERMS` int8 products never
    leaves the integers fp32 holds exactly (|x| <= 2**24), so each slice of the rows is exact."""
    q, k = queries.float(), keys.float()
    out = torch.zeros(len(queries), len(keys), dtype=torch.int32)
    for start in range(0, q.shape[1], _EXACT_TERMS):
        out += (q[:, start:start + _EXACT_TERMS] @ k[:, start:start + _EXACT_TERMS].T).int()
    return out


@functools.lru_cache(maxsize=1)
def _int8_matmul_faster() -> bool:
    """Whether torch's int8 matmul beats `_float_dots` here, timed once on a probe block: it
    was twice as fast as bf16 on CPUs with int8 matrix units (VNNI, AMX), and is 21x slower
    than fp32 on one without (AVX2 only; benchmarks/duplicates_search.py). Both are exact,
    so the choice never changes a result."""
    probe = torch.ones(512, 3072, dtype=torch.int8)
    try:
        torch._int_mm(probe, probe.T)  # warm-up; absent or unsupported: fp32
    except (AttributeError, RuntimeError, NotImplementedError):
        return False

    def seconds(dots) -> float:
        start = time.perf_counter()
        dots(probe, probe)
        return time.perf_counter() - start

    _float_dots(probe, probe)
    return (min(seconds(lambda q, k: torch._int_mm(q, k.T)) for _ in range(2))
            < min(seconds(_float_dots) for _ in range(2)))


def _dots(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Exact int32 dot products of int8 rows (|sum| <= 3072 * 128**2 < 2**31)."""
    if _int8_matmul_faster():
        return torch._int_mm(queries, keys.T)
    return _float_dots(queries, keys)


def _nearest_block(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int):
    """Smallest `||k||^2 - 2 q.k` (the squared distance less `||q||^2`) over key chunks."""
    best_s = best_i = None
    for start in range(0, len(keys), chunk):
        block = _centred(keys[start:start + chunk])
        norms = block.to(torch.int32).pow(2).sum(1, dtype=torch.int32)
        score = _dots(queries, block).mul_(-2).add_(norms)  # in place: the block is the memory
        s, i = score.topk(min(k, score.shape[1]), dim=1, largest=False)
        i += start
        if best_s is not None:
            s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
            s, order = s.topk(min(k, s.shape[1]), dim=1, largest=False)
            i = i.gather(1, order)
        best_s, best_i = s, i
    return best_s, best_i


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, k: int = 1, *,
                       chunk: int = 4096) -> Nearest:
    """The `k` nearest `keys` of each of `queries` by exact pixel L2 (uint8 [N, 3, 32, 32]
    or any one shape); ties go to either index."""
    for name, x in (("queries", queries), ("keys", keys)):
        if x.dtype != torch.uint8 or x.ndim < 2 or not len(x):
            raise ValueError(f"{name}: expected a non-empty uint8 [N, ...] tensor, got "
                             f"{x.dtype} {tuple(x.shape)}")
    if queries.shape[1:] != keys.shape[1:]:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} differ "
                         "in image shape")
    k = check_int("k", k, 1, len(keys))
    chunk = check_int("chunk", chunk, 1)
    index, squared = [], []
    for start in range(0, len(queries), 8192):  # bounds the int32 block: 8192 x chunk
        q = _centred(queries[start:start + 8192])
        s, i = _nearest_block(q, keys, k, chunk)
        s, order = s.sort(dim=1)
        index.append(i.gather(1, order))
        squared.append(s.to(torch.int64) + q.to(torch.int64).pow(2).sum(1, keepdim=True))
    distance = torch.cat(squared).double().sqrt()
    return Nearest(torch.cat(index), distance)


def nearest_train(dataset: str, root: str | os.PathLike | None = None, *, k: int = 1,
                  chunk: int = 4096) -> Nearest:
    """For every official test image of `dataset`, its `k` nearest training images."""
    data = load_cifar(dataset, root=root)
    return nearest_neighbours(data.test_images, data.train_images, k, chunk=chunk)


@dataclass(frozen=True)
class Agreement:
    """How the pixel nearest neighbour meets ciFAIR's (TestID, TrainID) pairs. Per judgment:
    `pairs` listed, `nearest` whose TrainID is at the nearest distance (ties count),
    `among_k` within the k nearest, `median_distance` their pixel L2. `flagged`: test images
    whose nearest is within `threshold`, `flagged_in_cifair` of them listed by ciFAIR;
    `seconds`: the search (0.0 when `nearest` was given)."""

    dataset: str
    k: int
    threshold: float
    pairs: dict[int, int]
    nearest: dict[int, int]
    among_k: dict[int, int]
    median_distance: dict[int, float]
    flagged: int
    flagged_in_cifair: int
    seconds: float


def cifair_agreement(dataset: str, root: str | os.PathLike | None = None, *, k: int = 5,
                     threshold: float = THRESHOLD, nearest: Nearest | None = None) -> Agreement:
    """Compare `nearest_train(dataset, root, k=k)` (or `nearest`, computed before with at
    least `k` neighbours) with ciFAIR's list of `dataset`."""
    pairs = duplicate_pairs(dataset, root)
    data = load_cifar(dataset, root=root)
    seconds = 0.0
    if nearest is None:
        start = time.perf_counter()
        nearest = nearest_train(dataset, root, k=k)
        seconds = time.perf_counter() - start
    k = check_int("k", k, 1, nearest.distance.shape[1])
    if (len(data.train_images), len(nearest.index)) != OFFICIAL_SIZES:
        raise ValueError(f"{dataset}: ciFAIR's lists index the official 50,000 training and "
                         f"10,000 test images; got {len(data.train_images)} and "
                         f"{len(nearest.index)} (pass the official data root)")
    test = data.test_images[pairs.test_id].reshape(len(pairs.test_id), -1).to(torch.int64)
    train = data.train_images[pairs.train_id].reshape(len(pairs.train_id), -1).to(torch.int64)
    squared = (test - train).pow(2).sum(1)
    nearest_sq = nearest.distance.pow(2).round().to(torch.int64)[pairs.test_id]
    found, within_k = squared <= nearest_sq[:, 0], squared <= nearest_sq[:, k - 1]
    out = {"pairs": {}, "nearest": {}, "among_k": {}, "median_distance": {}}
    for j in JUDGMENTS:
        mine = pairs.judgment == j
        out["pairs"][j] = int(mine.sum())
        out["nearest"][j] = int(found[mine].sum())
        out["among_k"][j] = int(within_k[mine].sum())
        out["median_distance"][j] = (float(squared[mine].double().sqrt().median())
                                     if mine.any() else math.nan)
    flagged = torch.nonzero(nearest.distance[:, 0] <= threshold).flatten()
    in_cifair = torch.isin(flagged, pairs.test_id)
    return Agreement(dataset, k, float(threshold), **out, flagged=len(flagged),
                     flagged_in_cifair=int(in_cifair.sum()), seconds=seconds)
