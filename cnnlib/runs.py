"""The run cache, run profiles and where things are written (the results table: results.py).

A run is keyed by its whole config, a fingerprint of the data and the version of
the code that trains it (`code_version`). A finished run (metrics, history,
checkpoint, test predictions) lives in `outputs/runs/<dataset>-<model>-<key>/`
and is reused by every notebook and rerun; an unfinished one resumes from its
last epoch checkpoint. While a run trains, a lock file in its folder keeps a
second process from training it too. A folder holding only result.json (no
checkpoint at all) is a *record*: a run finished on another machine whose small
files were carried over (`save_record`), so that a study resumes there; its row
and history are read, its model is not there.

Locations (all relative to the project root, which `project_root()` makes the
working directory):
- outputs: `$CNNLIB_OUTPUTS`, else `outputs/` (figures, results, reports);
- runs:    `$CNNLIB_RUNS`, else `<outputs>/runs/` (the run cache);
- models:  `$CNNLIB_MODELS`, else `models/` (the exported best checkpoints).
Tests and nbval point all three at a scratch folder.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data as cdata
from . import fileio
from .budget import estimate_seconds
from .config import RunConfig
from .device import AUTOCAST_DTYPES, hardware, resolve_precision
from .flags import Parser
from .launch import train_or_launch  # one process unless $CNNLIB_NPROC > 1
from .studies import plan
from .train import TrainResult

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


# ---------------------------------------------------------------------------
# Locations


def project_root(start=None, chdir: bool = True) -> Path:
    """The folder holding pyproject.toml, searched upwards from `start` (default: the cwd).

    Notebooks call it first, so that relative paths (data/, outputs/, models/) mean
    the same whether the kernel started in notebooks/ (JupyterLab, nbval) or in the
    root (papermill). Falls back to the folder above this package.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "cnnlib").is_dir():
            break
    else:
        folder = Path(__file__).resolve().parent.parent
        if not (folder / "pyproject.toml").is_file():
            raise FileNotFoundError(f"project root: no pyproject.toml above {here}")
    if chdir:
        os.chdir(folder)
    return folder


def outputs_root() -> Path:
    """Where notebooks write figures, results and reports: $CNNLIB_OUTPUTS, else outputs/."""
    return Path(os.environ.get(OUTPUTS_ENV) or "outputs")


def models_root() -> Path:
    """Where the exported best checkpoints go: $CNNLIB_MODELS, else models/."""
    return Path(os.environ.get(MODELS_ENV) or "models")


def runs_root(root=None) -> Path:
    """The run cache: `root`, else $CNNLIB_RUNS, else <outputs>/runs."""
    return Path(root or os.environ.get(RUNS_ENV) or outputs_root() / "runs")


def run_key(config: RunConfig, data_fingerprint: str) -> str:
    # `precision="auto"` trains in bf16 on some machines and fp32 on others: key what it
    # resolves to here, so that a cache shared between machines never mixes the two.
    precision = resolve_precision(config.precision, config.resolved_device())
    blob = f"{config.key()}:{data_fingerprint}:{code_version()}:{precision}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The sources whose edits can change a trained number: the config (defaults), data reading
# and splits, augmentation (policies.py included), the models, the loop, the metrics, the DDP
# collectives and the precision `auto` picks (device.py). Files that only find data (obtain.py),
# save, launch, cache or report runs are left out, so editing them keeps the cache.
RESULT_SOURCES = ("config.py", "data.py", "augment.py", "policies.py", "models", "train.py",
                  "evaluate.py", "distributed.py", "device.py")


@functools.lru_cache(maxsize=4)
def code_version(package: Path | None = None) -> str:
    """Short hash of RESULT_SOURCES in `package` (default: cnnlib) without comments and
    docstrings: a code change re-keys every run, an edited comment does not."""
    package = package or Path(__file__).parent
    digest = hashlib.sha256()
    for name in RESULT_SOURCES:
        path = package / name
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(f.relative_to(package).as_posix().encode())
            digest.update(_code_only(f.read_text()).encode())
    return digest.hexdigest()[:12]


def _code_only(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def data_fingerprint(dataset: str, data_root=None) -> str:
    """`data.fingerprint` of a dataset (computed once per loaded copy)."""
    return cdata.fingerprint(cdata.load_cifar(dataset, root=data_root))


def run_dir(config: RunConfig, root=None, data_root=None) -> Path:
    fp = data_fingerprint(config.dataset, data_root)
    return runs_root(root) / f"{config.dataset}-{config.model}-{run_key(config, fp)}"


# What a study writes itself (figures, tables, results, exported models, committed records,
# the README's tables): a study that rewrites them while it runs has not changed its code.
GENERATED = ("outputs", "models", "README.md")


def git_commit() -> str:
    """The short commit of the project, with `-dirty` when a tracked file other than the
    GENERATED ones differs from it."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/",
                    *(f":(top,exclude){path}" for path in GENERATED))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


@dataclass
class Run:
    """A finished run as the notebooks see it."""

    config: RunConfig
    label: str
    result: dict  # TrainResult.summary() plus provenance
    path: Path

    @property
    def test_acc(self) -> float:
        return self.result["test"]["acc"]

    @property
    def history(self) -> list[dict]:
        return self.result["history"]

    @property
    def checkpoint(self) -> Path:
        return self.path / "model.pt"

    def model_file(self) -> Path:
        """model.pt; for a record carried without its model, RecordOnlyError."""
        if not self.checkpoint.exists():
            raise RecordOnlyError(f"{self.path}: a record of a run finished elsewhere (its "
                                  "results, not its model); copy its model.pt from the cache "
                                  "that trained it, or delete the folder to train it again")
        return self.checkpoint

    def load_model(self, device="cpu"):
        from .checkpoint import load_model

        return load_model(self.model_file(), device=device)

    def test_metrics(self, data_root=None) -> dict:
        """Full test metrics of the final model (confusion, per-class accuracy, preds, probs).

        Saved by `run` when the run trains; for an older run or a record carried with
        its model they are computed once from the checkpoint (same test subset, TTA and
        precision as training) and saved. The
        dict also holds the test split's `labels` and `coarse` labels and the data's
        `classes`, `superclasses` and `fine_to_coarse`.
        """
        from .checkpoint import load_safe, save_atomic

        path = self.path / TEST_METRICS
        metrics = None
        if path.exists():
            try:
                metrics = load_safe(path)
            except fileio.DamagedFileError:  # derived from model.pt: computed again below
                fileio.set_aside(path)
        if metrics is None:
            metrics = _compute_test_metrics(self, data_root)
            save_atomic(metrics, path)
        d = cdata.load_cifar(self.config.dataset, root=data_root)
        split = test_split(self.config, data_root)
        return {**metrics, "labels": split.labels, "coarse": split.coarse, "images": split.images,
                "classes": list(d.classes), "superclasses": d.superclasses,
                "fine_to_coarse": d.fine_to_coarse}

    def row(self, study: str = "") -> dict:
        c, r = self.config, self.result
        last = r["history"][-1] if r.get("history") else {}
        return {
            "study": study, "label": self.label, "dataset": c.dataset, "model": c.model,
            "options": json.dumps(c.model_options, sort_keys=True), "augmentations": c.augment,
            "seed": c.seed, "epochs": c.epochs, "epochs_run": len(r.get("history") or []),
            "best_epoch": r.get("best_epoch"), "optimizer": c.optimizer, "lr": c.lr,
            "schedule": c.schedule, "weight_decay": c.weight_decay,
            "label_smoothing": c.label_smoothing, "batch_size": c.batch_size,
            "train_images": r.get("train_images"), "val_size": c.val_size,
            "train_acc": last.get("train_acc"),
            "val_acc": r["val"].get("val_acc"), "test_acc": r["test"]["acc"],
            "test_loss": r["test"]["loss"], "test_top5": r["test"].get("top5"), "tta": c.tta,
            "precision": r.get("precision") or _precision_before_recorded(c, r["device"]),
            "wall_seconds": round(r["wall_seconds"], 1), "device": r["device"],
            "hardware": r.get("hardware", ""), "profile": r.get("profile", ""),
            "commit": r.get("commit", ""), "run_key": self.path.name,
        }


def _precision_before_recorded(config: RunConfig, device: str) -> str:
    """Runs finished before results recorded it: `auto` then meant bf16 on CUDA, fp32 on CPUs."""
    if config.precision != "auto":
        return config.precision
    return "bf16" if str(device).startswith("cuda") else "fp32"


TEST_METRICS = "test_metrics.pt"
_METRIC_KEYS = ("confusion", "per_class_acc", "preds", "probs")


def test_split(config: RunConfig, data_root=None) -> cdata.Split:
    """The test images a run is scored on (the first `test_subset` ones when set)."""
    return cdata.test_split(cdata.load_cifar(config.dataset, root=data_root), config.test_subset)


test_split.__test__ = False  # not a pytest test


def _compute_test_metrics(run: Run, data_root=None) -> dict:
    from .evaluate import metrics_from_logits, predict_logits

    model = run.load_model()
    split = test_split(run.config, data_root)
    settings = model.meta["evaluation"]  # those of the run's own test metrics
    logits = predict_logits(model, split.images, model.meta["mean"], model.meta["std"],
                            tta=settings["tta"], channels_last=settings["channels_last"],
                            autocast_dtype=AUTOCAST_DTYPES[settings["precision"]])
    return _metric_tensors(metrics_from_logits(logits, split.labels))


def _metric_tensors(metrics: dict) -> dict:
    return {k: metrics[k].detach().cpu() for k in _METRIC_KEYS if k in metrics}


class RecordOnlyError(FileNotFoundError):
    """The model of a record (a run finished elsewhere, carried without it) was asked for."""


def _finished(path: Path, repair: bool = False) -> dict | None:
    """The summary of a finished run in `path`, else None.

    result.json must match its content hash and model.pt its CRCs; a record (result.json
    and no checkpoint at all) has no model.pt to check. With `repair` (under the run's
    lock) a damaged one is set aside, so that the run resumes from last.pt, which
    evaluates again and rewrites both (a record without last.pt trains again).
    """
    done, model = path / "result.json", path / "model.pt"
    if not done.exists():
        return None
    record = not model.exists() and not (path / "last.pt").exists()
    try:
        summary = fileio.read_json(done)
        if not record:
            fileio.verify_zip(model, "checkpoint")
        return summary
    except (fileio.DamagedFileError, FileNotFoundError) as e:
        if repair:
            for f in (done, model):
                if f.exists():
                    fileio.set_aside(f)
            print(f"[damaged] {e}; set aside as *.damaged, the run resumes from its last "
                  "epoch checkpoint", file=sys.stderr, flush=True)
        return None


def is_finished(path: Path) -> bool:
    """True when the run folder `path` holds a finished run (intact result.json, and
    model.pt unless it is a record)."""
    return _finished(Path(path)) is not None


def cached(config: RunConfig, label: str = "", *, root=None, data_root=None) -> Run | None:
    """The finished run of `config` in the cache (a record included), else None; never trains."""
    path = run_dir(config, root, data_root)
    summary = _finished(path)
    return None if summary is None else Run(config, label, summary, path)


def run(config: RunConfig, label: str = "", *, profile: str = "", root=None, data_root=None,
        force: bool = False, progress: bool = True) -> Run:
    """Return the finished run for `config`: from the cache, resumed, or trained now.

    `force` trains it again from scratch. Killing the process loses at most the
    epoch in progress: the next call resumes from the last epoch checkpoint.
    """
    path = run_dir(config, root, data_root)
    done = path / "result.json"
    name = label or config.model
    summary = None if force else _finished(path)
    if summary is not None:
        if progress:
            print(f"[cached] {name}: {path.name}", flush=True)
        return Run(config, label, summary, path)

    def waiting(pid):
        if progress:
            print(f"[waiting] {name}: process {pid} is training {path.name}", flush=True)

    # The same lock as train(config, out_dir): a CLI run into this folder stops at once.
    with fileio.hold_folder(path, wait=True, on_wait=waiting):
        summary = None if force else _finished(path, repair=True)
        if summary is not None:  # finished by the process we waited for
            if progress:
                print(f"[cached] {name}: {path.name}", flush=True)
            return Run(config, label, summary, path)
        for tmp in path.glob(".*.tmp"):  # left by a process killed while writing
            tmp.unlink(missing_ok=True)
        if force:
            for f in ("result.json", TEST_METRICS, "model.pt", "last.pt"):
                (path / f).unlink(missing_ok=True)
        if progress:
            state = "resuming" if (path / "last.pt").exists() else "training"
            print(f"[{state}] {name}: {path.name}", flush=True)
        t0 = time.time()
        result: TrainResult = train_or_launch(config, path, resume=True,
                                              data_root=data_root, progress=progress)
        summary = _portable(result.summary())
        summary.update(profile=profile, commit=git_commit(), finished=time.time(), label=label,
                       train_images=_train_images(config, data_root),
                       call_seconds=time.time() - t0, hardware=hardware(summary["device"]))
        if result.test_metrics is not None:
            from .checkpoint import save_atomic

            save_atomic(_metric_tensors(result.test_metrics), path / TEST_METRICS)
        fileio.write_json(summary, done)  # written last: the run is finished
    return Run(config, label, summary, path)


def _train_images(config: RunConfig, data_root=None) -> int:
    d = cdata.load_cifar(config.dataset, root=data_root)
    train_split, _ = cdata.train_split(d, val_size=config.val_size, subset=config.train_subset,
                                       seed=config.seed)
    return len(train_split)


def run_all(configs: list[tuple[str, RunConfig]], **kwargs) -> list[Run]:
    """Run (or fetch) a list of (label, config), announcing progress as `[run i/n]`."""
    out = []
    for i, (label, config) in enumerate(configs, 1):
        if kwargs.get("progress", True):
            print(f"[run {i}/{len(configs)}] {config.dataset} {label} (seed {config.seed})",
                  flush=True)
        out.append(run(config, label, **kwargs))
    return out


def export_model(run: Run, path) -> Path:
    """Write a run's final model to `path` atomically; it loads with `load_model`.

    Stored compact (`checkpoint.compact`): a model whose metrics were measured in bf16
    keeps its convolution and linear weights in bf16, which predicts bit for bit the same
    at that precision in half the bytes.
    """
    return _write_compact(run.model_file(), path)


def _portable(summary: dict) -> dict:
    """The summary with its checkpoint named inside the run folder, not by this machine's path."""
    if summary.get("checkpoint"):
        summary["checkpoint"] = Path(summary["checkpoint"]).name
    return summary


def _write_compact(checkpoint: Path, path) -> Path:
    from .checkpoint import compact, load_safe, save_atomic

    return save_atomic(compact(load_safe(checkpoint)), path)


def save_record(folder, dest, *, with_model: bool = False) -> Path:
    """Copy the finished run in `folder` into `dest` as a record: its result.json, and with
    `with_model` its model (compact, as `export_model` writes it; notebooks that load it
    then run where the record goes). Never its epoch checkpoints: a record is finished."""
    folder = Path(folder)
    if not is_finished(folder):
        raise ValueError(f"{folder}: not a finished run (no intact result.json)")
    out = Path(dest) / folder.name
    fileio.write_json(_portable(fileio.read_json(folder / "result.json")), out / "result.json")
    if with_model:
        _write_compact(folder / "model.pt", out / "model.pt")
    return out


def speeds_path() -> Path:
    """Where the training speeds measured on this machine are kept (`budget.py`)."""
    return runs_root() / "speeds.json"


def plan_lines(profile: str) -> list[str]:
    """Per notebook: its runs, those not shared with an earlier one, their estimated time here.

    The estimate comes from training speeds measured on this machine (a few steps per
    network shape, kept in `speeds_path()`), not from finished runs; runs already in the
    cache still count.
    """
    store = speeds_path()
    lines, total, count = [], 0.0, 0
    for name, (listed, new) in plan(profile, store).items():
        seconds = sum(estimate_seconds(c, store) for _, c in new)
        total += seconds
        count += len(new)
        lines.append(f"{name}: {listed} runs, {len(new)} not shared with an earlier notebook, "
                     f"about {seconds / 60:.0f} min")
    config = RunConfig()
    lines.append(f"total: {count} runs, about {total / 3600:.1f} h on "
                 f"{hardware(str(config.resolved_device()))} "
                 f"({resolve_precision(config.precision, config.resolved_device())}), "
                 "estimated from training speeds measured here")
    return lines


def main(argv=None) -> int:
    """`python -m cnnlib.runs profile|plan`: the profile a run would use; the runs per notebook."""
    p = Parser(prog="python -m cnnlib.runs")
    p.add_argument("command", choices=["profile", "plan"],
                   help="profile: print the resolved profile; plan: runs and estimated time "
                        "per notebook")
    p.add_argument("--profile", default="auto")
    args = p.parse_args(argv)
    try:
        profile = resolve_profile(args.profile)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "profile":
        print(profile)
    else:
        print(f"profile {profile}:")
        for line in plan_lines(profile):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
