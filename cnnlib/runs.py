"""The run cache, run profiles, where things are written, and the results table.

A run is keyed by its whole config plus a fingerprint of the data. A finished
run (metrics, history, checkpoint, test predictions) lives in
`outputs/runs/<dataset>-<model>-<key>/` and is reused by every notebook and
rerun; an unfinished one resumes from its last epoch checkpoint. While a run
trains, a lock file in its folder keeps a second process from training it too.

Locations (all relative to the project root, which `project_root()` makes the
working directory):
- outputs: `$CNNLIB_OUTPUTS`, else `outputs/` (figures, results, reports);
- runs:    `$CNNLIB_RUNS`, else `<outputs>/runs/` (the run cache);
- models:  `$CNNLIB_MODELS`, else `models/` (the exported best checkpoints).
Tests and nbval point all three at a scratch folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data as cdata
from .device import hardware
from .distributed import train_or_launch as train  # one process unless $CNNLIB_NPROC > 1
from .train import RunConfig, TrainResult

PROFILES = ("smoke", "cpu", "full")
PROFILE_ENV = "CNNLIB_PROFILE"
RUNS_ENV = "CNNLIB_RUNS"
OUTPUTS_ENV = "CNNLIB_OUTPUTS"
MODELS_ENV = "CNNLIB_MODELS"
RESULT_COLUMNS = ["study", "label", "dataset", "model", "options", "augmentations", "seed", "epochs",
                  "epochs_run", "best_epoch", "optimizer", "lr", "schedule", "weight_decay",
                  "label_smoothing", "batch_size", "train_images", "val_size", "train_acc", "val_acc",
                  "test_acc", "test_loss", "test_top5", "tta", "precision", "wall_seconds", "device",
                  "hardware", "profile", "commit", "run_key"]


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
    return hashlib.sha256(f"{config.key()}:{data_fingerprint}".encode()).hexdigest()[:16]


_FINGERPRINTS: dict[int, tuple[cdata.CifarData, str]] = {}


def data_fingerprint(dataset: str, data_root=None) -> str:
    """`data.fingerprint` of a dataset, computed once per loaded copy."""
    d = cdata.load_cifar(dataset, root=data_root)
    hit = _FINGERPRINTS.get(id(d))
    if hit is None or hit[0] is not d:
        if len(_FINGERPRINTS) >= 4:
            _FINGERPRINTS.clear()
        hit = _FINGERPRINTS[id(d)] = (d, cdata.fingerprint(d))
    return hit[1]


def run_dir(config: RunConfig, root=None, data_root=None) -> Path:
    fp = data_fingerprint(config.dataset, data_root)
    return runs_root(root) / f"{config.dataset}-{config.model}-{run_key(config, fp)}"


def git_commit() -> str:
    """The short commit of the project, with `-dirty` when tracked files differ from it."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _write_json_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


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

    def load_model(self, device="cpu"):
        from .checkpoint import load_model

        return load_model(self.checkpoint, device=device)

    def test_metrics(self, data_root=None) -> dict:
        """Full test metrics of the final model (confusion, per-class accuracy, preds, probs).

        Saved by `run` when the run trains; for an older run they are computed once
        from the checkpoint (same test subset and TTA as training) and saved. The
        dict also holds the test split's `labels` and `coarse` labels and the data's
        `classes`, `superclasses` and `fine_to_coarse`.
        """
        from .checkpoint import load_safe, save_atomic

        path = self.path / TEST_METRICS
        if path.exists():
            metrics = load_safe(path)
        else:
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
    split = cdata.test_split(cdata.load_cifar(config.dataset, root=data_root))
    n = config.test_subset
    if n:
        split = cdata.Split(split.images[:n], split.labels[:n],
                            None if split.coarse is None else split.coarse[:n])
    return split


test_split.__test__ = False  # not a pytest test


def _compute_test_metrics(run: Run, data_root=None) -> dict:
    from .evaluate import metrics_from_logits, predict_logits

    model = run.load_model()
    split = test_split(run.config, data_root)
    logits = predict_logits(model, split.images, model.meta["mean"], model.meta["std"],
                            tta=run.config.tta, channels_last=run.config.channels_last)
    return _metric_tensors(metrics_from_logits(logits, split.labels))


def _metric_tensors(metrics: dict) -> dict:
    return {k: metrics[k].detach().cpu() for k in _METRIC_KEYS if k in metrics}


@contextlib.contextmanager
def _exclusive(path: Path, label: str, progress: bool):
    """Hold an exclusive lock on `path/.lock` (released by the OS if the process dies)."""
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"[waiting] {label}: another process is training {path.name}", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run(config: RunConfig, label: str = "", *, profile: str = "", root=None, data_root=None,
        force: bool = False, progress: bool = True) -> Run:
    """Return the finished run for `config`: from the cache, resumed, or trained now.

    `force` trains it again from scratch. Killing the process loses at most the
    epoch in progress: the next call resumes from the last epoch checkpoint.
    """
    path = run_dir(config, root, data_root)
    done = path / "result.json"
    name = label or config.model
    if done.exists() and not force:
        if progress:
            print(f"[cached] {name}: {path.name}", flush=True)
        return Run(config, label, json.loads(done.read_text()), path)
    with _exclusive(path, name, progress):
        if done.exists() and not force:  # finished by the process we waited for
            if progress:
                print(f"[cached] {name}: {path.name}", flush=True)
            return Run(config, label, json.loads(done.read_text()), path)
        for tmp in path.glob(".*.tmp"):  # left by a process killed while writing
            tmp.unlink(missing_ok=True)
        if force:
            for f in ("result.json", TEST_METRICS, "model.pt", "last.pt"):
                (path / f).unlink(missing_ok=True)
        if progress:
            state = "resuming" if (path / "last.pt").exists() else "training"
            print(f"[{state}] {name}: {path.name}", flush=True)
        t0 = time.time()
        result: TrainResult = train(config, path, resume=True, data_root=data_root,
                                    progress=progress)
        summary = result.summary()
        summary.update(profile=profile, commit=git_commit(), finished=time.time(), label=label,
                       train_images=_train_images(config, data_root),
                       call_seconds=time.time() - t0, hardware=hardware(summary["device"]))
        if result.test_metrics is not None:
            from .checkpoint import save_atomic

            save_atomic(_metric_tensors(result.test_metrics), path / TEST_METRICS)
        _write_json_atomic(summary, done)  # written last: the run is finished
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
    """Copy a run's final checkpoint (model.pt) to `path` atomically; it loads with `load_model`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(run.checkpoint, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------
# Results table


def results_frame(runs: list[Run], study: str = ""):
    import pandas as pd

    return pd.DataFrame([r.row(study) for r in runs], columns=RESULT_COLUMNS)


def _write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_results(runs: list[Run], study: str, out=None):
    """Write this study's rows to <outputs>/results/<study>.csv; returns the frame.

    A run that appears twice in a study (the same config under two labels) keeps
    both rows: each label is a point of its own sweep.
    """
    df = results_frame(runs, study)
    path = Path(out or outputs_root()) / "results" / f"{study}.csv"
    _write_text_atomic(df.to_csv(index=False), path)
    return df


def collect_results(out=None, readme: str | None = "README.md"):
    """Merge every study's rows into <outputs>/results.csv and results.md; refresh the README.

    Studies are read in file-name order (01_..., 02_...). Returns the merged frame. The README's Key Results table (between the
    key-results markers) is replaced when `readme` names a file with the markers.
    """
    import pandas as pd

    out = Path(out or outputs_root())
    parts = sorted((out / "results").glob("*.csv"))
    frames = [pd.read_csv(p) for p in parts]
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS)
    # One row per run: a run shared by two studies (or two labels of a sweep) keeps its
    # first row, in notebook order; outputs/results/<study>.csv keep every label.
    df = df.drop_duplicates("run_key", keep="first", ignore_index=True)
    _write_text_atomic(df.to_csv(index=False), out / "results.csv")
    _write_text_atomic(results_markdown(df), out / "results.md")
    if readme:
        path = Path(readme)
        if not path.exists() or not update_readme(path, key_results(df)):
            print(f"results: {readme} has no {BEGIN} ... {END} markers; README left as it is")
    return df


def results_markdown(df) -> str:
    cols = ["study", "label", "dataset", "model", "augmentations", "seed", "epochs", "train_images",
            "val_acc", "test_acc", "test_loss", "wall_seconds", "device", "profile"]
    table = df[cols].assign(wall_seconds=df["wall_seconds"].map(lambda v: f"{v:.1f}"))
    return "# Results\n\nOne row per training run (`outputs/results.csv` has every column).\n\n" + \
        markdown_table(table) + "\n"


def key_results(df) -> str:
    """Baseline and best model per dataset: mean +- std over seeds (from 01_baseline's rows)."""
    sub = df[df["study"] == "01_baseline"] if len(df) else df
    if not len(sub):
        return "_No results yet: run `./run_all.sh`._"
    # Rows written before results named the hardware show the device instead.
    hw = sub.get("hardware", sub["device"])
    sub = sub.assign(hardware=hw.where(hw.notna() & (hw != ""), sub["device"]))
    g = sub.groupby(["dataset", "label", "model", "profile", "hardware"], sort=True)
    rows = []
    for (dataset, label, model, profile, hw), part in g:
        n = len(part)
        rows.append({
            "dataset": dataset, "model": f"{label} ({model})",
            "test acc %": _pm(part["test_acc"] * 100), "test loss": _pm(part["test_loss"], 3),
            "seeds": n, "epochs": _num(part["epochs"].iloc[0]),
            "train images": int(part["train_images"].iloc[0]),
            "augmentation": part["augmentations"].iloc[0],
            "wall min / run": f"{part['wall_seconds'].mean() / 60:.1f}", "hardware": hw,
            "profile": profile,
        })
    import pandas as pd

    return markdown_table(pd.DataFrame(rows))


def _pm(s, digits=1) -> str:
    return f"{s.mean():.{digits}f} ± {s.std(ddof=1):.{digits}f}" if len(s) > 1 else f"{s.mean():.{digits}f}"


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def markdown_table(df) -> str:
    """A DataFrame as a GitHub markdown table (floats: at most 4 decimals below 10, else 1;
    NaN empty)."""
    def cell(v):
        if isinstance(v, float):
            if v != v:  # NaN: no value (e.g. no validation split)
                return ""
            return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


BEGIN, END = "<!-- key-results:begin -->", "<!-- key-results:end -->"


def update_readme(path: Path, table: str) -> bool:
    """Replace the text between the key-results markers; False when the markers are missing."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    return True


def main(argv=None) -> int:
    """`python -m cnnlib.runs collect`: rebuild the results table (used by run_all.sh)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m cnnlib.runs")
    p.add_argument("command", choices=["collect", "profile", "plan"],
                   help="collect: merge the studies' results and refresh the README table; "
                        "profile: print the resolved profile; plan: runs per notebook")
    p.add_argument("--out", default=None, help="outputs folder (default: $CNNLIB_OUTPUTS or outputs)")
    p.add_argument("--readme", default="README.md", help="README to update ('' for none)")
    p.add_argument("--profile", default="auto")
    args = p.parse_args(argv)
    if args.command in ("profile", "plan"):
        try:
            profile = resolve_profile(args.profile)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.command == "profile":
            print(profile)
        else:
            from .studies import plan

            for name, (listed, new) in plan(profile).items():
                print(f"{name}: {listed} runs, {new} not shared with an earlier notebook")
        return 0
    out = Path(args.out or outputs_root())
    df = collect_results(out, args.readme or None)
    print(f"results: {len(df)} rows -> {out / 'results.csv'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
