"""The run cache: every run of the study, trained once and found again.

A run is keyed by its whole config, a fingerprint of the data and the results version
(`provenance.RESULTS_VERSION`). A finished run (metrics, history, checkpoint, test
predictions) lives in `<runs>/<dataset>-<model>-<key>/` and is reused by every notebook and
rerun; an unfinished one resumes from its last epoch checkpoint. While a run trains, a lock
file in its folder keeps a second process from training it too. A folder holding only
result.json (no checkpoint at all) is a *record*: a run finished on another machine whose
small files were carried over (`records.save_record`), so that a study resumes there; its
row and history are read, its model is not there.

What a notebook measures besides training is kept beside the runs, in `<runs>/measurements/`
(`measurements.py`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cnnlib import _fileio as fileio
from cnnlib.data import cifar as cdata
from cnnlib.study.locations import runs_root
from cnnlib.study.provenance import RESULTS_VERSION, git_commit
from cnnlib.training import loop
from cnnlib.training.assess import assess_checkpoint
from cnnlib.training.checkpoint import compact, load_model, load_safe, save_atomic
from cnnlib.training.config import RunConfig
from cnnlib.training.device import AUTOCAST_DTYPES, hardware, resolve_precision
from cnnlib.training.evaluate import metrics_from_logits, predict_logits
from cnnlib.training.launch import train_or_launch  # one process unless $CNNLIB_NPROC > 1


def run_key(config: RunConfig, data_fingerprint: str, precision: str | None = None) -> str:
    # `precision="auto"` trains in bf16 on some machines and fp32 on others: key what it
    # resolves to here (or to `precision`: the key on another kind of machine), so that a
    # cache shared between machines never mixes the two.
    precision = precision or resolve_precision(config.precision, config.resolved_device())
    blob = f"{config.key()}:{data_fingerprint}:{RESULTS_VERSION}:{precision}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_fingerprint(dataset: str, data_root=None) -> str:
    """`data.fingerprint` of a dataset (computed once per loaded copy)."""
    return cdata.fingerprint(cdata.load_cifar(dataset, root=data_root))


def run_dir(config: RunConfig, root=None, data_root=None, precision: str | None = None) -> Path:
    fp = data_fingerprint(config.dataset, data_root)
    return runs_root(root) / f"{config.dataset}-{config.model}-{run_key(config, fp, precision)}"


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
    def assessment(self) -> dict:
        """Corruption accuracy, calibration and duplicate-free accuracy (`training.assess`);
        empty for a record finished before they were measured, or a diverged run."""
        return self.result.get("assessment") or {}

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
        return load_model(self.model_file(), device=device)

    def test_metrics(self, data_root=None) -> dict:
        """Full test metrics of the final model (confusion, per-class accuracy, preds, probs).

        Saved by `run` when the run trains; for an older run or a record carried with
        its model they are computed once from the checkpoint (same test subset, TTA and
        precision as training) and saved. The
        dict also holds the test split's `labels` and `coarse` labels and the data's
        `classes`, `superclasses` and `fine_to_coarse`.
        """
        path = self.path / TEST_METRICS
        metrics = None
        if path.exists():
            try:
                metrics = load_safe(path)
            except ValueError:  # damaged or not a file; derived from model.pt: computed again
                fileio.set_aside(path)
        if metrics is None:
            metrics = _compute_test_metrics(self, data_root)
            try:
                save_atomic(metrics, path)
            except OSError as e:  # a read-only or full cache still serves its runs
                print(f"[not saved] {path}: {fileio.first_line(e)}; computed again next time",
                      file=sys.stderr, flush=True)
        d = cdata.load_cifar(self.config.dataset, root=data_root)
        split = test_split(self.config, data_root)
        return {**metrics, "labels": split.labels, "coarse": split.coarse, "images": split.images,
                "classes": list(d.classes), "superclasses": d.superclasses,
                "fine_to_coarse": d.fine_to_coarse}


TEST_METRICS = "test_metrics.pt"
MEASUREMENTS = "measurements"  # the run cache's folder of what is measured besides training
_METRIC_KEYS = ("confusion", "per_class_acc", "preds", "probs")


def test_split(config: RunConfig, data_root=None) -> cdata.Split:
    """The test images a run is scored on (the first `test_subset` ones when set)."""
    return cdata.test_split(cdata.load_cifar(config.dataset, root=data_root), config.test_subset)


test_split.__test__ = False  # not a pytest test


def _compute_test_metrics(run: Run, data_root=None) -> dict:
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


def _not_this_run(summary: dict, path: Path, config: RunConfig | None) -> str | None:
    """Why `summary` (a result.json in `path`) is not the run asked for, else None.

    It records the folder it was written in (`run_key`, since this check; older files are
    checked by their config alone) and its config, which must be `config`'s (equal keys)."""
    recorded = summary.get("run_key")
    if recorded is not None and recorded != path.name:
        return f"it records run {recorded}, not {path.name}"
    if config is None:
        return None
    try:
        stored = RunConfig.from_dict(summary["config"])
    except (KeyError, TypeError, ValueError) as e:
        return f"its config does not read ({fileio.first_line(e)})"
    if stored.key() != config.key():
        return "its config is not the one asked for"
    precision = summary.get("precision")  # recorded since the key resolves it
    wanted = resolve_precision(config.precision, config.resolved_device())
    if precision is not None and precision != wanted:
        return f"it was trained in {precision}, this run's key is for {wanted}"
    return None


def _finished(path: Path, repair: bool = False, config: RunConfig | None = None) -> dict | None:
    """The summary of a finished run in `path`, else None.

    result.json must match its content hash, and its run key and config the run asked for
    (`config`); model.pt must be a regular file with intact CRCs; a record (result.json
    and no checkpoint at all) has no model.pt to check. With `repair` (under the run's
    lock) a damaged or foreign one is set aside, so that the run resumes from last.pt,
    which evaluates again and rewrites both (a record without last.pt trains again).
    """
    done, model = path / "result.json", path / "model.pt"
    if not fileio.present(done):
        return None
    record = not fileio.present(model) and not (path / "last.pt").exists()
    try:
        fileio.regular(done)
        summary = fileio.read_json(done)
        why = _not_this_run(summary, path, config)
        if why:
            raise fileio.DamagedFileError(f"{done}: not the run asked for: {why}")
        if not record:
            fileio.regular(model)
            fileio.verify_zip(model, "checkpoint")
        return summary
    except (fileio.DamagedFileError, FileNotFoundError) as e:
        if repair:
            for f in (done, model):
                if fileio.present(f):
                    fileio.set_aside(f)
            print(f"[damaged] {e}; set aside as *.damaged, the run resumes from its last "
                  "epoch checkpoint", file=sys.stderr, flush=True)
        return None


def is_finished(path: Path, config: RunConfig | None = None) -> bool:
    """True when the run folder `path` holds a finished run (intact result.json, and
    model.pt unless it is a record), of `config` when given."""
    return _finished(Path(path), config=config) is not None


def cached(config: RunConfig, label: str = "", *, root=None, data_root=None) -> Run | None:
    """The finished run of `config` in the cache (a record included), else None; never trains."""
    path = run_dir(config, root, data_root)
    summary = _finished(path, config=config)
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
    summary = None if force else _finished(path, config=config)
    if summary is not None:
        if progress:
            print(f"[cached] {name}: {path.name}", flush=True)
        return _assessed(Run(config, label, summary, path), data_root, progress)

    def waiting(pid):
        if progress:
            print(f"[waiting] {name}: process {pid} is training {path.name}", flush=True)

    # The same lock as train(config, out_dir): a CLI run into this folder stops at once.
    with fileio.hold_folder(path, wait=True, on_wait=waiting):
        summary = None if force else _finished(path, repair=True, config=config)
        if summary is not None:  # finished by the process we waited for
            if progress:
                print(f"[cached] {name}: {path.name}", flush=True)
            return Run(config, label, summary, path)
        for tmp in path.glob(".*.tmp"):  # left by a process killed while writing
            tmp.unlink(missing_ok=True)
        if force:
            for f in ("result.json", TEST_METRICS, "model.pt", "last.pt"):
                if (path / f).is_dir() and not (path / f).is_symlink():
                    fileio.set_aside(path / f)  # a folder in a file's place: kept for a look
                (path / f).unlink(missing_ok=True)
        if progress:
            state = "resuming" if (path / "last.pt").exists() else "training"
            print(f"[{state}] {name}: {path.name}", flush=True)
        t0 = time.time()
        result: loop.TrainResult = train_or_launch(config, path, resume=True,
                                              data_root=data_root, progress=progress)
        summary = portable(result.summary())
        # run_key: the folder it belongs to, so that a copy in another folder is not served.
        summary.update(run_key=path.name, profile=profile, commit=git_commit(),
                       finished=time.time(), label=label,
                       train_images=_train_images(config, data_root),
                       call_seconds=time.time() - t0, hardware=hardware(summary["device"]))
        if result.test_metrics is not None:
            save_atomic(_metric_tensors(result.test_metrics), path / TEST_METRICS)
        done_run = Run(config, label, summary, path)
        probs = None if result.test_metrics is None else result.test_metrics["probs"]
        summary["assessment"] = _assess(done_run, data_root, progress, probs)
        fileio.write_json(summary, done)  # written last: the run is finished
    return done_run


def _assess(run: Run, data_root=None, progress: bool = True, probs=None) -> dict | None:
    """`training.assess` of a finished run with its model (None for a diverged one, whose
    weights may not be finite): on its own test probabilities, computed once."""
    if run.result.get("diverged"):
        return None
    if progress:
        print(f"[assessing] {run.label or run.config.model}: corruptions, calibration, "
              "near-duplicates", flush=True)
    model = run.load_model()
    probs = run.test_metrics(data_root)["probs"] if probs is None else probs
    return assess_checkpoint(model, run.config.to_dict(), probs,
                             evaluation=model.meta["evaluation"], data_root=data_root)


def _assessed(run: Run, data_root=None, progress: bool = True) -> Run:
    """`run` with its assessment: a run finished before assessments were measured gets it
    now from its model, once (written into its result.json under the run's lock); a record
    without its model keeps none."""
    if "assessment" in run.result or not fileio.present(run.checkpoint):
        return run
    if not os.access(run.path, os.W_OK):  # a read-only cache still serves its runs
        print(f"[not assessed] {run.path}: read-only", file=sys.stderr, flush=True)
        return run
    with fileio.hold_folder(run.path, wait=True):
        summary = _finished(run.path, config=run.config)
        if summary is None or "assessment" in summary:
            return run if summary is None else Run(run.config, run.label, summary, run.path)
        summary["assessment"] = _assess(Run(run.config, run.label, summary, run.path),
                                        data_root, progress)
        try:
            fileio.write_json(summary, run.path / "result.json")
        except OSError as e:  # a full disk: served now, assessed again next time
            print(f"[not saved] {run.path / 'result.json'}: {fileio.first_line(e)}",
                  file=sys.stderr, flush=True)
    return Run(run.config, run.label, summary, run.path)


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
    return write_compact(run.model_file(), path)


def portable(summary: dict) -> dict:
    """The summary with its checkpoint named inside the run folder, not by this machine's path."""
    if summary.get("checkpoint"):
        summary["checkpoint"] = Path(summary["checkpoint"]).name
    return summary


def write_compact(checkpoint: Path, path) -> Path:
    return save_atomic(compact(load_safe(checkpoint)), path)


def recorded_keys(configs: list[RunConfig], root=None, data_root=None,
                  precision: str | None = None) -> set[str]:
    """The config keys of `configs` whose runs are in the cache (finished, or records); with
    `precision`, those recorded under the key `auto` has where it resolves to `precision`."""
    out = set()
    for dataset in dict.fromkeys(c.dataset for c in configs):
        if any(runs_root(root).glob(f"{dataset}-*/result.json")):  # else no need to read the data
            out |= {c.key() for c in configs if c.dataset == dataset
                    and is_finished(run_dir(c, root, data_root, precision),
                                    None if precision else c)}  # the key proves the precision
    return out


def recorded_elsewhere(configs: list[RunConfig], root=None, data_root=None) -> dict[str, set[str]]:
    """Per precision, the config keys of `configs` (with `precision="auto"`) whose runs the
    cache holds in that precision although `auto` resolves to another here: trained on another
    kind of machine (bf16 on CUDA or a CPU with native bf16, fp32 elsewhere), they do not count
    here."""
    out = {}
    for precision in ("bf16", "fp32"):
        others = [c for c in configs if c.precision == "auto"
                  and resolve_precision("auto", c.resolved_device()) != precision]
        found = recorded_keys(others, root, data_root, precision)
        if found:
            out[precision] = found
    return out


# -- what the cache received in a span of time (the pipeline's accounts) -------------------------


@dataclass
class Work:
    """Runs finished and measurements taken between two times, with their wall seconds
    (the runs' as the union of their spans: runs trained side by side count once)."""

    runs: int = 0
    train_seconds: float = 0.0
    measurements: int = 0
    measure_seconds: float = 0.0


def work_between(start: float, end: float, root=None) -> Work:
    """What the run cache received between `start` and `end` (time.time())."""
    base, work, spans = runs_root(root), Work(), []
    for done in base.glob("*/result.json") if base.is_dir() else ():
        summary = _written_between(done, start, end)
        if summary:
            finished, seconds = summary["finished"], summary.get("call_seconds")
            seconds = seconds if isinstance(seconds, int | float) else 0.0
            spans.append((max(start, finished - seconds), finished))
    work.runs = len(spans)
    reach = start
    for s, e in sorted(spans):  # the union of the spans
        s = max(s, reach)
        if e > s:
            work.train_seconds += e - s
            reach = e
    folder = base / MEASUREMENTS
    for path in folder.glob("*.json") if folder.is_dir() else ():
        entry = _written_between(path, start, end)
        if entry and isinstance(entry.get("seconds"), int | float):
            work.measurements += 1
            work.measure_seconds += entry["seconds"]
    return work


def _written_between(path: Path, start: float, end: float) -> dict | None:
    try:
        if not start <= path.stat().st_mtime <= end + 1:
            return None
        entry = fileio.read_json(path)
    except (OSError, fileio.DamagedFileError):
        return None
    finished = entry.get("finished")
    return entry if isinstance(finished, int | float) and start <= finished <= end + 1 else None
