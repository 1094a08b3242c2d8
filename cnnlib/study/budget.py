"""Training speed on this machine, and the epochs that fill a wall-clock budget.

A study that compares networks "under the same wall-clock budget" needs each network's
speed on the machine at hand: `images_per_second` times a few training steps of the
config (its model, batch size, resolved precision and memory format, on random images)
and keeps the figure in a JSON store, one entry per machine and config shape. Later calls
read the store, so a rerun builds the same configs (same epochs, same run-cache keys)
instead of re-timing and drifting by a few percent. `estimate_seconds` turns the same
speeds into a plan's time estimate.

The speed excludes the loader and evaluation: a run's measured wall time, recorded in
its results row, is somewhat longer than its budget.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlib import _fileio as fileio
from cnnlib.data.obtain import NUM_CLASSES
from cnnlib.models.registry import create_model
from cnnlib.training.config import RunConfig
from cnnlib.training.device import AUTOCAST_DTYPES, hardware, resolve_precision

TRAIN_IMAGES = 50000  # both official training sets
TTA_VIEWS = {0: 1, 1: 2, 2: 6}  # forward passes per test image at each TTA level
EVAL_SPEEDUP = 3.0  # a forward pass costs about a third of a training step
WARMUP_STEPS = 2  # the first steps pay for kernel selection and allocation
STEP_TRIES = 5  # timed steps after the warm-up; the fastest counts (as timeit does)


def train_images(config: RunConfig) -> int:
    """Images per epoch: the subset, or the training set minus the validation split."""
    return config.train_subset or TRAIN_IMAGES - config.val_size


def _key(config: RunConfig, device: torch.device, precision: str) -> str:
    shape = {"model": config.model, "options": config.model_options, "batch": config.batch_size,
             "classes": NUM_CLASSES[config.dataset], "precision": precision,
             "channels_last": config.channels_last}
    return f"{hardware(str(device))} | {json.dumps(shape, sort_keys=True)}"


def _measure(config: RunConfig, device: torch.device, precision: str) -> float:
    torch.manual_seed(0)
    model = create_model(config.model, NUM_CLASSES[config.dataset], **config.model_options)
    model = model.to(device).train()
    x = torch.randn(config.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, NUM_CLASSES[config.dataset], (config.batch_size,), device=device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True)
    dtype = AUTOCAST_DTYPES[precision]

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for _ in range(WARMUP_STEPS):
        step()
    return config.batch_size / min(step() for _ in range(STEP_TRIES))


def images_per_second(config: RunConfig, store: str | Path | None = None) -> float:
    """Training images per second of `config` here; measured once per machine into `store`."""
    device = config.resolved_device()
    precision = resolve_precision(config.precision, device)
    key = _key(config, device, precision)
    path = Path(store) if store else None
    table = _read_speeds(path)
    if key not in table:
        options = f" {config.model_options}" if config.model_options else ""
        print(f"[speed] timing {config.model}{options} at batch {config.batch_size} "
              f"({precision}) once on this machine; an idle machine gives the true figure",
              file=sys.stderr, flush=True)
        table[key] = round(_measure(config, device, precision), 1)
        if path:
            with fileio.hold_folder(path.parent, wait=True):
                latest = _read_speeds(path, repair=True)
                table = {**latest, key: latest.get(key, table[key])}
                fileio.write_json(table, path)
    return float(table[key])


def _read_speeds(path: Path | None, repair: bool = False) -> dict:
    """The stored speeds ({} when there are none). A damaged store (content hash, JSON, a
    speed that is not a positive number) reads as empty, so the speeds are measured again;
    with `repair` (under the store's lock) it is set aside as `speeds.json.damaged`."""
    if path is None or not (path.exists() or path.is_symlink()):
        return {}
    try:
        if not path.is_file() or path.is_symlink():
            raise fileio.DamagedFileError(f"{path}: not a regular file")
        table = fileio.read_json(path)
        bad = [k for k, v in table.items() if isinstance(v, bool)
               or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0)]
        if bad:
            raise fileio.DamagedFileError(f"{path}: damaged, {bad[0]!r} is not a speed")
        return table
    except fileio.DamagedFileError as e:
        if repair:
            fileio.set_aside(path)
            print(f"[damaged] {e}; set aside as *.damaged, the speeds are measured again",
                  file=sys.stderr, flush=True)
        return {}


def epochs_for(config: RunConfig, seconds: float, store: str | Path | None = None) -> float:
    """Epochs of `config` whose training steps take `seconds` here (at least one batch).

    Rounded down to 0.01 epoch, so that the same stored speed always gives the same config.
    """
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"budget: {seconds!r} seconds is not allowed; allowed: a number > 0")
    n = train_images(config)
    epochs = math.floor(seconds * images_per_second(config, store) / n * 100) / 100
    return max(epochs, math.ceil(config.batch_size / n * 100) / 100)


def estimate_seconds(config: RunConfig, store: str | Path | None = None,
                     test_images: int = 10000) -> float:
    """Expected wall time of one run here: training steps, a validation pass per epoch, the test."""
    speed = images_per_second(config, store)
    train = config.epochs * train_images(config) / speed
    evaluated = math.ceil(config.epochs) * config.val_size
    evaluated += (config.test_subset or test_images) * TTA_VIEWS[config.tta]
    return train + evaluated / (EVAL_SPEEDUP * speed)
