"""Where the CIFAR files come from: the data root, and obtaining a missing copy.

``obtain`` returns the extracted official folder of a dataset, trying in this order: the
extracted folder itself, an official archive placed by the user (md5-checked), an offline
mirror (``CNNLIB_DATA_MIRROR``: a folder holding ``restore_cifar.py``), the official
download.  Reading and validating the files is ``data.py``'s job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}  # as a reader writes them
DEFAULT_ROOT = "data"
ROOT_ENV = "CNNLIB_DATA_ROOT"
MIRROR_ENV = "CNNLIB_DATA_MIRROR"
MIRROR_SCRIPT = "restore_cifar.py"


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

# The files of the official extracted folders (what `data.read_cifar` reads).
CIFAR10_TRAIN = tuple(f"data_batch_{k}" for k in range(1, 6))
FILES = {
    "cifar10": (*CIFAR10_TRAIN, "test_batch", "batches.meta"),
    "cifar100": ("train", "test", "meta"),
}


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$CNNLIB_DATA_ROOT``, else ``DEFAULT_ROOT`` (cwd-relative)."""
    if root is None:
        root = os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(root).expanduser()


def _complete(folder: Path, name: str) -> bool:
    return all((folder / f).is_file() for f in FILES[name])


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
    from torchvision.datasets.utils import download_url  # torchvision: ~1.5 s, only to download

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
    check_name(name)
    base = data_root(root) / name
    folder = base / _ARCHIVES[name].folder
    if _complete(folder, name):
        return folder
    missing = [f for f in FILES[name] if not (folder / f).is_file()]
    # A copy that lost a file is named at once: only local sources may repair it, no download.
    partial = folder.is_dir() and len(missing) < len(FILES[name])
    steps = [_from_archive, _from_mirror] + ([_from_download] if download and not partial else [])
    problems = []
    for step in steps:
        problem = step(base, name)
        if _complete(folder, name):
            return folder
        if problem:
            log.warning("%s", problem)
            problems.append(" ".join(problem.split()))  # keep the final error on one line
    if partial:
        tried = f" [{'; '.join(problems)}]" if problems else ""
        raise FileNotFoundError(f"{name}: {folder} is incomplete ({', '.join(missing)} missing): "
                                f"delete the folder and run `cnnlib data` to obtain it again{tried}")
    raise FileNotFoundError(_missing_message(name, base, download, problems))


def _missing_message(name: str, base: Path, download: bool, problems: list[str]) -> str:
    spec = _ARCHIVES[name]
    fixes = f"place {spec.filename} ({spec.url}) in {base}, or set {MIRROR_ENV}"
    fixes += " to a folder holding " + MIRROR_SCRIPT
    fixes += ", or retry with network access" if download else ", or allow download=True"
    tried = f" [{'; '.join(problems)}]" if problems else ""
    return f"{name} not found in {base / spec.folder}: {fixes}{tried}"
