"""Notebook 05's compression study: every variant of a model built, saved, reloaded, measured.

Which variants: fp32, magnitude and channel pruning at :data:`AMOUNTS` (each fine-tuned
with the run's own recipe), int8 (PTQ; QAT when the profile asks), channels 50% + int8,
and ONNX. How much work per profile: ``studies.compression_settings``. The algorithms are
in :mod:`cnnlib.compress`; the figure is ``plots.plot_tradeoffs``. A model's rows are
measured once per model, settings, data and machine and kept in the run cache
(``measurements.measured``): a rebuild reuses them instead of timing again.
"""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from cnnlib.compress.bench import ROUNDS, file_size_mb, time_models, zipped_size_mb
from cnnlib.compress.export import export_onnx
from cnnlib.compress.finetune import fine_tune
from cnnlib.compress.prune import magnitude_prune, make_permanent, prune_channels, sparsity
from cnnlib.compress.quantize import QuantizedModel, quantize_int8, quantize_qat
from cnnlib.compress.saving import load_model, save_compressed
from cnnlib.data import cifar as cdata
from cnnlib.models.registry import count_parameters
from cnnlib.study import cache, measurements
from cnnlib.training.checkpoint import model_checkpoint, save_atomic
from cnnlib.training.config import RunConfig
from cnnlib.training.device import hardware
from cnnlib.training.evaluate import evaluate

AMOUNTS = (0.5, 0.8)
# Removing channels changes the function far more than zeroing small weights: a larger
# fine-tuning rate recovers more of it in the same steps (CIFAR-10 baseline, channels 50%,
# 300 steps: 71.5% at 0.1, 73.3% at 0.3, 74.0% at 1.0, from 77.6%).
CHANNELS_LR_SCALE = 0.3


def _splits(model: nn.Module, data: cdata.CifarData, test_subset: int):
    cfg = model.meta["config"]
    train, _ = cdata.train_split(data, val_size=cfg.get("val_size", 0),
                                 subset=cfg.get("train_subset", 0), seed=cfg.get("seed", 0))
    return train, cdata.test_split(data, test_subset)


def _slug(variant: str) -> str:
    return variant.replace("%", "").replace(" + ", "-").replace(" ", "")


def _variants(model, train, mean, std, *, steps, batch_size, calibration, qat_steps, progress):
    """Yield (variant, method, compressed model) lazily: each one is built when it is measured."""
    cfg = model.meta["config"]
    calib = train.images[:calibration]
    tune = dict(steps=steps, config=cfg, batch_size=batch_size, progress=progress)
    yield "fp32", "none", model
    for amount in AMOUNTS:
        pruned = magnitude_prune(copy.deepcopy(model), amount)
        fine_tune(pruned, train.images, train.labels, mean, std, **tune)
        yield f"magnitude {amount:.0%}", "unstructured", make_permanent(pruned)
    channels = {}
    for amount in AMOUNTS:
        pruned = prune_channels(model, amount, calib, mean, std)
        channels[amount] = fine_tune(pruned, train.images, train.labels, mean, std, **tune,
                                     lr_scale=CHANNELS_LR_SCALE)
        yield f"channels {amount:.0%}", "structured", channels[amount]
    yield "int8", "ptq", quantize_int8(model, calib, mean, std)
    if qat_steps:
        yield "int8 qat", "qat", quantize_qat(model, train.images, train.labels, mean, std,
                                              **{**tune, "steps": qat_steps})
    yield "channels 50% + int8", "structured+ptq", quantize_int8(channels[0.5], calib, mean, std)
    yield "onnx", "onnxruntime", None


def compress_model(model: nn.Module, data: cdata.CifarData, out_dir, *, label: str, steps: int,
                   batch_size: int, calibration: int, test_subset: int = 0, seconds: float = 1.0,
                   qat_steps: int = 0, commit: str = "", progress: bool = True, remeasure=None,
                   root=None) -> list[dict]:
    """Every variant of ``model`` (loaded with ``load_model``): build, save, reload, measure.

    Each variant is written to ``out_dir`` and measured as loaded back from there, so the
    rows describe the files: size (MB, and deflated), parameters, sparsity, test accuracy,
    latency at batch 1 and throughput at batch 256 (timed at the end, all variants in
    interleaved rounds: :func:`time_models`, the median of its rounds with their range).
    Fine-tuning and calibration use the run's own training split. Every row names the
    run's seed, the hardware timed on and the ``commit`` measured at.

    The rows are kept in the run cache (``root``, default ``$CNNLIB_RUNS``), keyed by the
    model's weights and run, ``label``, the settings, the data and the hardware line: a
    second call returns them without building or timing anything (and its files stay as the
    first call wrote them); ``remeasure`` (default ``$CNNLIB_REMEASURE``) measures again.
    """
    settings = dict(steps=steps, batch_size=batch_size, calibration=calibration,
                    test_subset=test_subset, seconds=seconds, qat_steps=qat_steps)
    what = _what(label, _run_key(model, data), settings) | {"weights": _weights(model)}
    rows, entry = measurements.measured(
        "compression", what, lambda: _measure(model, data, Path(out_dir), label=label,
                                              commit=commit, progress=progress, **settings),
        remeasure=remeasure, root=root)
    if entry is not None and progress:
        gone = [r["path"] for r in rows if not Path(r["path"]).exists()]
        print(f"[cached] {label}: {len(rows)} variants measured on this machine at commit "
              f"{entry['commit']}; --remeasure measures them again"
              + (f" (their files are not in {Path(gone[0]).parent}/)" if gone else ""),
              flush=True)
    return rows


def _what(label: str, run: str, settings: dict) -> dict:
    """What determines a model's rows, but its weights (a plan looks them up by run)."""
    return {"label": label, "run": run, "settings": {**settings, "rounds": ROUNDS},
            "hardware": hardware("cpu")}


def _run_key(model: nn.Module, data: cdata.CifarData) -> str:
    """The run cache's key of the run that trained ``model`` ("" when its config does not read)."""
    try:
        config = RunConfig.from_dict(model.meta["config"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return ""
    return cache.run_key(config, cdata.fingerprint(data))


def _weights(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):  # a module's extra state
            digest.update(f"{name}:{t!r}".encode())
            continue
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def recorded(label: str, configs: list[RunConfig], settings: dict, root=None,
             data_root=None) -> bool:
    """Whether the rows of ``label`` for the run of one of ``configs`` with ``settings`` are
    in the run cache for this machine (a plan's look-up; nothing is measured)."""
    what = _what(label, "", settings)
    found = measurements.stored_measurements("compression", root, label=label,
                                      settings=what["settings"], hardware=what["hardware"])
    keys = {cache.run_key(c, cache.data_fingerprint(c.dataset, data_root))
            for c in configs} if found else ()
    return any(entry["what"].get("run") in keys for entry in found)


def _measure(model: nn.Module, data: cdata.CifarData, out_dir: Path, *, label: str,
             commit: str, progress: bool, steps: int, batch_size: int, calibration: int,
             test_subset: int, seconds: float, qat_steps: int) -> list[dict]:
    origin = {"seed": model.meta["config"].get("seed"), "hardware": hardware("cpu"),
              "commit": commit}
    mean, std = model.meta["mean"], model.meta["std"]
    train, test = _splits(model, data, test_subset)
    rows, loaded = [], {}
    if progress:
        print(f"[{label}] building and measuring its variants (fine-tuning {steps} steps each)",
              flush=True)
    for variant, method, compressed in _variants(
            model, train, mean, std, steps=steps, batch_size=batch_size,
            calibration=calibration, qat_steps=qat_steps, progress=progress):
        path = out_dir / f"{label}-{_slug(variant)}.{'onnx' if compressed is None else 'pt'}"
        if compressed is None:
            export_onnx(model, path)
            params, zeros = count_parameters(model), sparsity(model)
        else:
            _save_variant(compressed, path, fp32=method == "none")
            params, zeros = _params_and_sparsity(compressed)
        loaded[variant] = load_model(path)
        acc = evaluate(loaded[variant], test.images, test.labels, mean, std,
                       batch_size=500)["acc"]
        rows.append({"model": label, "arch": model.meta["config"]["model"], "variant": variant,
                     "method": method, "params": params, "sparsity": zeros,
                     "size_mb": file_size_mb(path), "zip_mb": zipped_size_mb(path),
                     "test_acc": acc, **origin, "path": str(path)})
        if progress:
            print(f"[{label}] {variant:<20} test acc {acc:.4f}  {rows[-1]['size_mb']:.3f} MB",
                  flush=True)
    t0 = time.monotonic()

    def timed(done: int, rounds: int) -> None:
        if progress:
            left = (time.monotonic() - t0) / done * (rounds - done)
            print(f"[{label}] timing: round {done}/{rounds} of {len(loaded)} variants done, "
                  f"about {left:.0f} s left", flush=True)

    timings = time_models(loaded, seconds=seconds, progress=timed)
    for row in rows:
        row.update(timings[row["variant"]])
        if progress:
            t = timings[row["variant"]]
            print(f"[{label}] {row['variant']:<20} {row['latency_ms_b1']:.2f} ms at batch 1 "
                  f"({t['latency_ms_b1_min']:.2f}-{t['latency_ms_b1_max']:.2f}), "
                  f"{row['throughput_b256']:.0f} images/s at batch 256 "
                  f"({t['throughput_b256_min']:.0f}-{t['throughput_b256_max']:.0f})", flush=True)
    return _relative(rows)


def _save_variant(model: nn.Module, path: Path, fp32: bool) -> None:
    if not fp32:
        save_compressed(model, path)
        return
    meta = model.meta  # the uncompressed model, in the trainer's own format
    save_atomic(model_checkpoint(model, meta["config"], classes=meta["classes"], mean=meta["mean"],
                                 std=meta["std"], metrics=meta.get("metrics")), path)


def _params_and_sparsity(model: nn.Module) -> tuple[int, float | None]:
    if isinstance(model, QuantizedModel):
        return model.recipe["params"], None
    return count_parameters(model), sparsity(model)


def _relative(rows: list[dict]) -> list[dict]:
    """Add accuracy change (percentage points) and speedups against the fp32 row."""
    base = rows[0]
    for r in rows:
        r["acc_change_pp"] = 100 * (r["test_acc"] - base["test_acc"])
        r["speedup_b1"] = base["latency_ms_b1"] / r["latency_ms_b1"]
        r["speedup_b256"] = r["throughput_b256"] / base["throughput_b256"]
        r["size_ratio"] = base["size_mb"] / r["size_mb"]
    return rows


# Timings: the median of ROUNDS rounds, then its range (lowest and highest round).
COLUMNS = ["model", "arch", "variant", "method", "params", "sparsity", "size_mb", "zip_mb",
           "latency_ms_b1", "throughput_b256", "test_acc", "acc_change_pp", "speedup_b1",
           "speedup_b256", "size_ratio", "latency_ms_b1_min", "latency_ms_b1_max",
           "throughput_b256_min", "throughput_b256_max", "timing_rounds", "threads", "seed",
           "hardware", "commit", "path"]


def results_frame(rows: list[dict]):
    return pd.DataFrame(rows, columns=COLUMNS)

