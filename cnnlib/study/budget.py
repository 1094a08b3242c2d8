"""Training speed on this machine, and the epochs that fill a wall-clock budget.

A study that compares networks "under the same wall-clock budget" needs each network's
speed on the machine at hand: `images_per_second` times a few training steps of the
config (its model, batch size, resolved precision and memory format, on random images)
and keeps the figure in a JSON store, one entry per machine and config shape. Later calls
read the store, so a rerun builds the same configs (same epochs, same run-cache keys)
instead of re-timing and drifting by a few percent. `estimate_seconds` turns the same
speeds into a plan's time estimate.

A store's budgets are pinned to one machine per device type (`PIN`): the first machine that
turns a budget into epochs there names itself in the store, and every later machine reading it
takes that machine's speeds for budgets (`budget_speed`), so it builds the same configs, finds
the runs the first one recorded, and trains the missing ones with the same epochs. A budget thus
means "seconds of training steps on the pinned machine"; what a run took elsewhere is in its
own record. A store moved aside (or a fresh run cache) pins the next machine.

The speed excludes the loader and evaluation: a run's measured wall time, recorded in
its results row, is somewhat longer than its budget, and its assessment comes on top.

What a notebook takes besides training (loading, evaluation, figures, and its measurements:
range tests, compression) is measured by the pipeline as each notebook runs and kept per
machine and profile (`notebook_seconds`), for the next plan's estimate.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlib import _fileio as fileio
from cnnlib.data.corruptions import CORRUPTIONS, SEVERITIES
from cnnlib.data.obtain import NUM_CLASSES
from cnnlib.models.registry import create_model
from cnnlib.training.assess import assessment_subset
from cnnlib.training.config import RunConfig
from cnnlib.training.device import AUTO_MACHINES, AUTOCAST_DTYPES, hardware, resolve_precision

TRAIN_IMAGES = 50000  # both official training sets
TTA_VIEWS = {0: 1, 1: 2, 2: 6}  # forward passes per test image at each TTA level
EVAL_SPEEDUP = 3.0  # a forward pass costs about a third of a training step
WARMUP_STEPS = 2  # the first steps pay for kernel selection and allocation
STEP_TRIES = 5  # timed steps after the warm-up; the fastest counts (as timeit does)
# A timing during which other processes kept more than this share of the machine's CPU time
# busy (Linux /proc/stat, less the timing process's own time) ran beside other work: its figure
# is used by this process and not stored, since a stored speed fixes the epochs a budget buys
# (so the run-cache keys) for good. A training beside it takes half of 2 cores or more.
BUSY_OTHERS = 0.2
_UNSTORED: dict[str, float] = {}  # figures of busy timings, kept for this process only
PIN = "budgets on "  # + device type: {"machine": hardware, "auto": what `auto` resolved to there}


class BudgetError(ValueError):
    """A budget the store's pinned machine never timed (one line, for the user)."""


def train_images(config: RunConfig) -> int:
    """Images per epoch: the subset, or the training set minus the validation split."""
    return config.train_subset or TRAIN_IMAGES - config.val_size


def _key(config: RunConfig, machine: str, precision: str) -> str:
    shape = {"model": config.model, "options": config.model_options, "batch": config.batch_size,
             "classes": NUM_CLASSES[config.dataset], "precision": precision,
             "channels_last": config.channels_last}
    return f"{machine} | {json.dumps(shape, sort_keys=True)}"


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
    key = _key(config, hardware(str(device)), precision)
    path = Path(store) if store else None
    table = {**_UNSTORED, **_read_speeds(path)}
    if key not in table:
        what = _shape_words(config, precision)
        print(f"[speed] timing {what} once on this machine", file=sys.stderr, flush=True)
        before = _cpu_clock()
        table[key] = round(_measure(config, device, precision), 1)
        others = _others_share(device, before)
        if others > BUSY_OTHERS:
            print(f"[speed] {what}: other processes kept {others:.0%} of the CPUs busy during "
                  "the timing; its figure is used by this process and not stored (an idle "
                  "machine gives the true one)", file=sys.stderr, flush=True)
            _UNSTORED[key] = table[key]
            return float(table[key])
        if path:
            measured = table[key]  # another process's stored figure, if any, wins
            table = _update_store(path, _is_speed, "speed",
                                  lambda latest: {**latest, key: latest.get(key, measured)})
    return float(table[key])


def _shape_words(config: RunConfig, precision: str) -> str:
    options = f" {config.model_options}" if config.model_options else ""
    return f"{config.model}{options} on {config.dataset} at batch {config.batch_size} ({precision})"


def budget_machine(store: str | Path | None, device: str = "cpu") -> str | None:
    """The machine whose speeds set the budgets of `store` on `device` ("cpu", "cuda"), once one
    did; None before."""
    pin = _read_speeds(Path(store) if store else None).get(PIN + device)
    return pin["machine"] if pin else None


def budget_speed(config: RunConfig, store: str | Path | None = None) -> float:
    """The images per second that turn a budget of `config` into epochs: the pinned machine's
    (`PIN`), or this machine's, which it pins when the store has no pin for its device type."""
    device = config.resolved_device()
    here, path = hardware(str(device)), Path(store) if store else None
    table = _read_speeds(path)
    pin = table.get(PIN + device.type)
    if pin is None or pin["machine"] == here:
        speed = images_per_second(config, store)
        if path is not None and pin is None:
            key = _key(config, here, resolve_precision(config.precision, device))
            entry = {"machine": here, "auto": resolve_precision("auto", device)}
            _update_store(path, _is_speed, "speed", lambda latest: (
                {**latest, PIN + device.type: entry}  # only from a stored, idle timing
                if PIN + device.type not in latest and key in latest else None))
        return speed
    precision = pin["auto"] if config.precision == "auto" else config.precision
    key = _key(config, pin["machine"], precision)
    if key not in table:
        raise BudgetError(
            f"budget: {_shape_words(config, precision)} was never timed on {pin['machine']}, the machine the budgets of {path} are pinned to; "
            f"time it there, or move {path} aside to pin the budgets to this machine (its "
            "budgeted runs then train anew)")
    return float(table[key])


def _cpu_clock() -> tuple[float, float, float] | None:
    """(CPU seconds all processes spent busy, this process's CPU seconds, wall seconds); None
    where /proc/stat is not there to read."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait
    return busy, time.process_time(), time.perf_counter()


def _others_share(device: torch.device, before) -> float:
    """The share of the CPUs' time other processes kept busy since `before` (`_cpu_clock`);
    0 on a GPU, where /proc/stat is missing, or over too short a span to tell."""
    after = _cpu_clock()
    if device.type != "cpu" or before is None or after is None or after[2] - before[2] < 0.5:
        return 0.0
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / ((after[2] - before[2]) * (os.cpu_count() or 1)))


def _read_speeds(path: Path | None, repair: bool = False) -> dict:
    """The stored speeds and pins ({} when there are none). A damaged store (content hash,
    JSON, a speed that is not a positive number, a pin that is not one) reads as empty, so the
    speeds are measured again; with `repair` (under the store's lock) it is set aside as
    `speeds.json.damaged`."""
    return _read_store(path, _is_speed, "speed", repair)


def _is_speed(k: str, v) -> bool:
    if k.startswith(PIN):
        return (isinstance(v, dict) and set(v) == {"machine", "auto"}
                and isinstance(v["machine"], str) and bool(v["machine"])
                and v["auto"] in AUTOCAST_DTYPES)
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) and v > 0


def _read_store(path: Path | None, valid, what: str, repair: bool) -> dict:
    """A JSON store of `what`s ({} when absent or damaged; with `repair` a damaged one is set
    aside, and its figures are measured again)."""
    if path is None or not (path.exists() or path.is_symlink()):
        return {}
    try:
        if not path.is_file() or path.is_symlink():
            raise fileio.DamagedFileError(f"{path}: not a regular file")
        table = fileio.read_json(path)
        bad = [k for k, v in table.items() if not valid(k, v)]
        if bad:
            raise fileio.DamagedFileError(f"{path}: damaged, {bad[0]!r} is not a {what}")
        return table
    except fileio.DamagedFileError as e:
        if repair:
            fileio.set_aside(path)
            print(f"[damaged] {e}; set aside as *.damaged, the {what}s are measured again",
                  file=sys.stderr, flush=True)
        return {}


def _update_store(path: Path, valid, what: str, change) -> dict:
    """Under the store's lock, read it (a damaged one set aside) and write `change(table)`,
    unless that is None; the table as it then stands."""
    with fileio.hold_folder(path.parent, wait=True):
        table = _read_store(path, valid, what, repair=True)
        changed = change(table)
        if changed is None:
            return table
        fileio.write_json(changed, path)
        return changed


def epochs_for(config: RunConfig, seconds: float, store: str | Path | None = None,
               min_batches: int = 1) -> float:
    """Epochs of `config` whose training steps take `seconds` on the store's pinned machine
    (`budget_speed`; at least `min_batches` batches: budgets that give each a floor of their
    own never collapse into one config).

    Rounded down to 0.01 epoch, so that the same stored speed always gives the same config.
    """
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"budget: {seconds!r} seconds is not allowed; allowed: a number > 0")
    n = train_images(config)
    epochs = math.floor(seconds * budget_speed(config, store) / n * 100) / 100
    return max(epochs, math.ceil(min_batches * config.batch_size / n * 100) / 100)


def estimate_seconds(config: RunConfig, store: str | Path | None = None,
                     test_images: int = 10000) -> float:
    """Expected wall time of one run here: training steps, a validation pass per epoch, the
    test, and the assessment every study run gets (`training.assess`: the corrupted copies of
    its image subset, the validation split as the test was scored, the test without TTA)."""
    speed = images_per_second(config, store)
    train = config.epochs * train_images(config) / speed
    test = config.test_subset or test_images
    evaluated = math.ceil(config.epochs) * config.val_size + test * TTA_VIEWS[config.tta]
    evaluated += (len(assessment_subset(test)) * (len(CORRUPTIONS) * len(SEVERITIES) + 1)
                  + config.val_size * TTA_VIEWS[config.tta] + (test if config.tta else 0))
    return train + evaluated / (EVAL_SPEEDUP * speed)


# -- a notebook's time besides training ---------------------------------------------------------

NOTEBOOK_PARTS = ("other", "measure")  # besides training and measurements; its measurements


def _is_times(_name: str, v) -> bool:
    return (isinstance(v, dict) and bool(v) and set(v) <= set(NOTEBOOK_PARTS)
            and all(not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)
                    and x >= 0 for x in v.values()))


def _notebook_key(profile: str, notebook: str) -> str:
    return f"{hardware(str(RunConfig().resolved_device()))} | {profile} | {notebook}"


def notebook_seconds(profile: str, notebook: str, store: str | Path | None) -> dict:
    """What `notebook` took here on `profile` besides training: {"other": seconds of the
    rest, "measure": seconds of its measurements when last taken}; {} when not yet measured."""
    table = _read_store(Path(store) if store else None, _is_times, "notebook time", False)
    return table.get(_notebook_key(profile, notebook), {})


def record_notebook_seconds(profile: str, notebook: str, store: str | Path, other: float,
                            measure: float | None = None) -> None:
    """Keep what `notebook` took besides training; `measure` None keeps the last figure."""
    key = _notebook_key(profile, notebook)

    def change(table: dict) -> dict:
        entry = {**table.get(key, {}), "other": round(max(0.0, other), 1)}
        if measure is not None:
            entry["measure"] = round(max(0.0, measure), 1)
        return {**table, key: entry}

    _update_store(Path(store), _is_times, "notebook time", change)


def duration(seconds: float) -> str:
    """A time span in words, to the precision an estimate deserves: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


@dataclass
class Work:
    """What executing one notebook will do here: its distinct runs (config keys), those
    recorded in the run cache, those to train (an earlier notebook trains the rest) and their
    seconds estimated from speeds measured here; what it took here besides training last time
    (`notebook_seconds`, {} when not yet measured); what it measures besides training, how
    many, how many of them are recorded; the runs not recorded whose configs wait for those
    measurements (notebook 03's runs at its range tests' lrs: trained, or found recorded)."""

    name: str
    keys: frozenset = field(repr=False)
    recorded: frozenset = field(repr=False)
    to_train: int
    train_seconds: float
    spent: dict
    measures: str = ""
    measures_total: int = 0
    measures_recorded: int = 0
    waiting: int = 0
    waiting_seconds: float = 0.0
    # The training of every run it lists first (recorded or not): the study from scratch.
    scratch_seconds: float = 0.0
    # Per precision, how many of its runs to train the cache holds in a precision `auto` does
    # not resolve to here (`cache.recorded_elsewhere`): records of another kind of machine.
    elsewhere: dict = field(default_factory=dict)

    @property
    def other_seconds(self) -> float | None:
        """Seconds besides training: the rest as last time, plus the measurements to take as
        long as they took last time; None when either is not yet measured here."""
        missing = self.measures_total - self.measures_recorded
        if "other" not in self.spent or (missing and "measure" not in self.spent):
            return None
        extra = self.spent["measure"] * missing / self.measures_total if missing else 0.0
        return self.spent["other"] + extra

    @property
    def seconds(self) -> float | None:
        other = self.other_seconds
        return None if other is None else self.train_seconds + other

    def expected(self) -> str:
        if self.seconds is not None:
            return f"about {duration(self.seconds)} expected"
        return "its time here is not yet measured" + (
            f"; its training about {duration(self.train_seconds)}" if self.to_train else "")


def work_lines(work: list[Work], machine: str, precision: str) -> list[str]:
    """A line per notebook, then the total: runs recorded and to train, time expected here;
    then, where the cache holds some of the runs to train in a precision other than the one
    `auto` resolves to here (`precision`), why those records do not count."""
    lines = []
    for w in work:
        earlier = len(w.keys) - len(w.recorded) - w.to_train - w.waiting
        other = w.other_seconds
        missing = w.measures_total - w.measures_recorded
        lines.append(
            f"{w.name}: {len(w.keys)} runs, {len(w.recorded)} recorded, {w.to_train} to train"
            + (f" (about {duration(w.train_seconds)})" if w.to_train else "")
            + (f", {earlier} trained by an earlier notebook" if earlier else "")
            + (f", {w.waiting} waiting for the {w.measures} (up to "
               f"{duration(w.waiting_seconds)})" if w.waiting else "")
            + ("; besides training not yet measured on this machine" if other is None
               else f"; about {duration(other)} besides training")
            + (f"; {missing} {w.measures} to measure" if missing else
               f"; {w.measures} recorded" if w.measures else ""))
    to_train, waiting = sum(w.to_train for w in work), sum(w.waiting for w in work)
    train = (f"about {duration(sum(w.train_seconds for w in work))} of training (from "
             "training speeds measured here)" if to_train else "no training")
    if waiting:
        train += (f", up to {duration(sum(w.waiting_seconds for w in work))} more for the "
                  f"{waiting} runs waiting for measurements")
    what = ", ".join(["evaluation", "figures", *(w.measures for w in work if w.measures)])
    known = [w.other_seconds for w in work if w.other_seconds is not None]
    unknown = [w.name for w in work if w.other_seconds is None]
    rest = f"about {duration(sum(known))} of {what}" if known else what
    if unknown:
        rest += (f" (not yet measured on this machine for {', '.join(unknown)})" if known
                 else " not yet measured on this machine")
    keys = frozenset().union(*(w.keys for w in work))
    recorded = frozenset().union(*(w.recorded for w in work))
    lines.append(f"total: {len(keys)} runs, {len(recorded)} recorded, {to_train} to train"
                 + (f", {waiting} waiting for measurements" if waiting else "") + "; "
                 f"{train}; {rest}; on {machine}")
    for other in dict.fromkeys(p for w in work for p in w.elsewhere):
        count = sum(w.elsewhere.get(other, 0) for w in work)
        lines.append(f"not counted: the run cache holds {count} of these {to_train + waiting} "
                     f"runs in {other}, trained where `auto` resolves to {other} "
                     f"({AUTO_MACHINES[other]}); here it resolves to {precision} and the cache "
                     "keys a run by its precision, so they would train again. On such a machine "
                     "this plan finds them recorded.")
    return lines


def scratch_line(work: list[Work]) -> str:
    """The training the notebooks' runs take from scratch here (none recorded), per notebook."""
    runs = len(frozenset().union(*(w.keys for w in work)))
    return (f"from scratch (no run recorded): about "
            f"{duration(sum(w.scratch_seconds for w in work))} of training for the {runs} runs ("
            + ", ".join(f"{w.name.split('_')[0]} {duration(w.scratch_seconds)}" for w in work)
            + ")")
