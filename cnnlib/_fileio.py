"""Files that survive a crash, show their damage and have one writer at a time.

- `atomic_write`: write a temporary file in the same folder, then rename; a crash never
  leaves half a file, and the file gets the permissions of the user's umask.
- Content checks: JSON files carry the SHA-256 of their content (`write_json` /
  `read_json`); torch files are zip archives whose CRC-32s `verify_zip` checks. A file
  that fails raises `DamagedFileError` naming it.
- `hold_folder`: one writer per run folder, an `fcntl` lock on `<folder>/.lock` that the
  OS releases when the process dies (kill -9 leaves no stale lock). The file holds the
  holder's pid, so a second writer can say who is using the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

LOCK_NAME = ".lock"
HASH_KEY = "sha256"
# Folders locked by the process that started this one (torchrun workers of a run whose
# launcher holds the lock: `child_env`), os.pathsep-separated.
HELD_ENV = "CNNLIB_HELD_FOLDERS"


def first_line(e: BaseException) -> str:
    """An exception's message as one line (its type when the message is empty)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class DamagedFileError(ValueError):
    """A file failed its integrity check (content hash, CRC, non-finite values)."""


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock."""


# ---------------------------------------------------------------------------
# Atomic writes


def _umask() -> int:
    """The process umask, read from /proc where it can be (setting it to read it, the only
    portable way, races with threads creating files meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class DiskFullError(OSError):
    """A write failed for want of space; the message names the folder and its free space."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def _disk_full(e: BaseException | None) -> bool:
    """True when `e`, or an exception it was raised while handling, is ENOSPC or EDQUOT:
    torch.save reports a failed write as a RuntimeError ("unexpected pos") raised while
    the OSError is handled."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _free_space(folder: Path) -> str:
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "free space unknown"
    unit = "bytes"
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            break
        free /= 1000
    return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a temporary file next to `path`, then rename it to `path`.

    A full disk raises DiskFullError naming the folder and its free space, `path` left as
    it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(e):
            raise DiskFullError(f"{path.parent}: disk full while writing {path.name} "
                                f"({_free_space(path.parent)}); free some space and run "
                                "again") from None
        raise
    return path


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """`folder` (created when missing) if a file can be created in it, else ValueError
    naming it: a read-only file system stops a command in one line, before any work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{what} {folder}: cannot be written ({e.strerror or e})") from None
    return folder


def write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def copy_file(src: str | os.PathLike, path: str | os.PathLike) -> Path:
    with open(src, "rb") as source:
        return atomic_write(path, lambda f: shutil.copyfileobj(source, f))


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged file (or a folder or link where a file belongs) to `<name>.damaged`,
    else `<name>.damaged.1`, ... (kept for a look, never read again, never overwritten)."""
    path = Path(path)
    aside, n = path.with_name(path.name + ".damaged"), 0
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = path.with_name(f"{path.name}.damaged.{n}")
    os.rename(path, aside)
    return aside


# ---------------------------------------------------------------------------
# Content checks


def present(f: Path) -> bool:
    return f.exists() or f.is_symlink()  # a link that loops or dangles is there too


def regular(f: Path) -> None:
    """A cache writes only regular files: a folder or a link in a file's place is damage."""
    if not stat.S_ISREG(f.lstat().st_mode):
        what = "a symbolic link" if f.is_symlink() else "not a regular file"
        raise DamagedFileError(f"{f}: {what} where the run cache keeps a file")


def _json_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """A dict as indented JSON plus the SHA-256 of its content under `HASH_KEY`."""
    plain = json.loads(json.dumps(obj, default=float))  # the values as they will read back
    return write_text(json.dumps({**plain, HASH_KEY: _json_hash(plain)}, indent=1), path)


def read_json(path: str | os.PathLike) -> dict:
    """A dict written by `write_json`; DamagedFileError when its content hash does not match."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFileError(f"{path}: damaged, not valid JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(HASH_KEY), str):
        raise DamagedFileError(f"{path}: carries no content hash ({HASH_KEY}); damaged or "
                               "written by another program")
    want = obj.pop(HASH_KEY)
    if _json_hash(obj) != want:
        raise DamagedFileError(f"{path}: damaged, its content does not match its {HASH_KEY}")
    return obj


def verify_zip(path: str | os.PathLike, what: str = "file") -> None:
    """Check the CRC-32 of every member of a zip archive (what `torch.save` writes)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever breaks, the archive is unreadable
        raise DamagedFileError(f"{what}: {path} is damaged or not a torch zip file "
                               f"({type(e).__name__}: {e}); refusing it") from None
    if bad is not None:
        raise DamagedFileError(f"{what}: {path} is damaged (CRC mismatch in {bad}); refusing it")


# ---------------------------------------------------------------------------
# One writer per folder

_HELD: dict[str, int] = {}  # folder -> nesting depth, in this process


def _held_here(key: str) -> bool:
    return key in _HELD or key in os.environ.get(HELD_ENV, "").split(os.pathsep)


def lock_holder(folder: str | os.PathLike) -> str:
    """The pid written in `folder/.lock` ('unknown' when it cannot be read)."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text().strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def open_append(path: str | os.PathLike, mode: str = "a"):
    """`path` opened for appending (created when missing) without following a link: a file
    the project writes in place (a run's lock, its log), planted as a symbolic link, would
    otherwise write to whatever it points at, outside the folder. A link, or anything but a
    regular file, raises ValueError naming it."""
    path = Path(path)
    flags = os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # FIFO: no hang
    flags |= os.O_RDWR if "+" in mode else os.O_WRONLY
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path}: is a symbolic link, refused (the project never writes "
                             "through one; remove it)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path}: not a regular file, refused (remove it)")
    return os.fdopen(fd, mode)


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, *, wait: bool = False,
                on_wait: Callable[[str], object] | None = None) -> Iterator[Path]:
    """Be the only writer of `folder` (created when missing) while the block runs.

    Another holder makes it raise FolderInUseError at once, or with `wait` block until the
    holder ends (`on_wait(pid)` is called first). Nested calls for the same folder in one
    process, and processes started with `child_env(folder)`, pass through. A folder that cannot
    be created or written raises ValueError naming it, before any work starts. A block that
    raises while the folder this call made holds only the lock removes it: input found bad
    once the folder is locked (a model option, a split size) leaves no empty folder behind.
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if _held_here(key):
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    f, created = _lock(folder, wait, on_wait)
    try:
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        _HELD[key] = 1
        try:
            yield folder
        except BaseException:
            # A holder that failed before writing anything (bad input found late) leaves
            # no empty folder behind, when it made the folder.
            with contextlib.suppress(OSError):  # the error that got here is the one to report
                if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                    (folder / LOCK_NAME).unlink()
                    folder.rmdir()
            raise
        finally:
            del _HELD[key]
            f.truncate(0)
    finally:
        f.close()  # closing releases the lock


def _lock(folder: Path, wait: bool, on_wait) -> tuple:
    """`folder/.lock` open and locked, and whether this call made the folder."""
    while True:
        try:
            created = not folder.is_dir()
            folder.mkdir(parents=True, exist_ok=True)
            f = open_append(folder / LOCK_NAME, "a+")
        except OSError as e:
            raise ValueError(f"{folder}: cannot be used as a run folder: {e.strerror or e}") from None
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = lock_holder(folder)
                if not wait:
                    raise FolderInUseError(f"{folder}: in use by process {pid} (one run writes "
                                           "to a folder at a time); wait for it or choose "
                                           "another folder") from None
                if on_wait:
                    on_wait(pid)
                fcntl.flock(f, fcntl.LOCK_EX)
            mine = os.fstat(f.fileno())
            now = os.stat(folder / LOCK_NAME, follow_symlinks=False)
        except FileNotFoundError:  # the holder we waited for removed its empty folder
            f.close()
            continue
        except BaseException:
            f.close()
            raise
        if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
            return f, created
        f.close()  # locked a lock file that was removed meanwhile: lock the folder's own


def child_env(folder: str | os.PathLike) -> dict[str, str]:
    """Environment entries for a process this one starts to write into `folder`, which it
    holds (the torchrun workers of a launched run): they pass the lock. Only the
    processes given these entries pass; any other process meets the lock."""
    key = str(Path(folder).resolve())
    if not _held_here(key):
        raise RuntimeError(f"{folder}: child_env needs the folder held (hold_folder)")
    before = os.environ.get(HELD_ENV)
    return {HELD_ENV: os.pathsep.join(filter(None, (before, key)))}

