"""The trainer: one `train(config)` call, early stopping, atomic per-epoch checkpoints.

The loop is deliberately plain (nanoGPT-style): the config comes from config.py, data
and augmentation live in the batch loader, the model comes from the registry, metrics
from evaluate.py.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cnnlib import _fileio as fileio
from cnnlib._checks import check_int
from cnnlib.data import cifar as cdata
from cnnlib.data.augment import BatchLoader, normalize
from cnnlib.models.registry import create_model
from cnnlib.training import distributed as cdist
from cnnlib.training.checkpoint import load_safe, model_checkpoint, save_atomic
from cnnlib.training.config import RunConfig
from cnnlib.training.device import AUTOCAST_DTYPES, precision_note, resolve_precision
from cnnlib.training.evaluate import metrics_from_logits, predict_logits, scalar_metrics
from cnnlib.training.muon import Muon

STEP_MILESTONES = (0.5, 0.75)  # fractions of training where "step" divides the lr by 10


# ---------------------------------------------------------------------------
# Pieces of the loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(config: RunConfig, step: int, total: int) -> float:
    """Multiplier of config.lr at a given optimizer step."""
    t = step / max(1, total)
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return 0.1 ** sum(t >= m for m in STEP_MILESTONES)
    w = config.warmup
    if t < w:
        return config.warmup_start + (1 - config.warmup_start) * t / w
    u = (t - w) / max(1e-12, 1 - w)
    if config.schedule == "cosine":
        return config.final_lr + (1 - config.final_lr) * 0.5 * (1 + math.cos(math.pi * u))
    return 1 + (config.final_lr - 1) * u  # onecycle: linear up, linear down


def lr_peak_epoch(config: RunConfig) -> int:
    """The epoch in which the schedule's learning rate peaks: the end of warmup rounded up to
    a whole epoch (onecycle, cosine); 0 for a schedule that starts at its peak (constant, step)."""
    if config.schedule in ("constant", "step"):
        return 0
    return math.ceil(config.warmup * config.epochs - 1e-9)  # 0.15 * 20 is 3.0000000000000004


@dataclass
class EarlyStopping:
    """Early stopping's one rule. Fed one epoch's history row at a time (`update`): an epoch
    after `after` whose `metric` beats the best so far becomes the best; `patience` counted
    epochs in a row without a new best stop the run (0: it never stops, the best is still
    tracked). The trainer feeds it each epoch it trains, `replay` a stored history."""

    metric: str
    patience: int = 0
    after: int = 0
    best: tuple[float, int] | None = None  # (value, higher is better; its epoch)
    bad_epochs: int = 0
    stopped: bool = False

    @classmethod
    def of(cls, config: RunConfig) -> EarlyStopping:
        return cls(config.early_stop_metric, config.early_stop_patience, config.early_stop_after)

    def update(self, row: dict) -> bool:
        """Count one epoch's history row; True when it is the new best."""
        if row["epoch"] <= self.after:
            return False
        if self.metric in row:
            value = row[self.metric] if self.metric == "val_acc" else -row[self.metric]
            if self.best is None or value > self.best[0]:
                self.best, self.bad_epochs = (value, row["epoch"]), 0
                return True
        self.bad_epochs += 1
        self.stopped = bool(self.patience and self.bad_epochs >= self.patience)
        return False


def replay(history: list[dict], metric: str, patience: int, after: int = 0) -> tuple[int, int | None]:
    """What a run stopped by `EarlyStopping(metric, patience, after)` would have done, read
    from the history of the same run without early stopping (same config and seed, so its
    first epochs are the same): (its last epoch, the epoch whose weights it restores; None
    when no epoch counted, and it keeps its final weights)."""
    rule, last = EarlyStopping(metric, patience, after), 0
    for row in history:
        rule.update(row)
        last = row["epoch"]
        if rule.stopped:
            break
    return last, None if rule.best is None else rule.best[1]


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """BatchNorm parameters (lr scaled, decay scaled inversely) and the rest; with Muon,
    conv filters form a third group and every bias joins the BatchNorm group."""
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    muon = config.optimizer == "muon"
    filters = [p for p in params if muon and p.ndim == 4]
    scaled = [p for p in params if id(p) in norm_ids or (muon and p.ndim == 1)]
    taken = {id(p) for p in filters + scaled}
    rest = [p for p in params if id(p) not in taken]
    s = config.norm_lr_scale
    groups = [dict(params=rest, lr=config.lr, weight_decay=config.weight_decay),
              dict(params=scaled, lr=config.lr * s, weight_decay=config.weight_decay / s)]
    if config.whiten_epochs:  # the whitening bias in a group of its own (Trainer.whiten_lr)
        bias = whitening_bias(model)
        if bias is None:
            raise ValueError(f"whiten_epochs: {config.model} has no trainable whitening bias; "
                             "allowed: 0 for this model")
        home = next(g for g in groups if any(p is bias for p in g["params"]))
        home["params"] = [p for p in home["params"] if p is not bias]
        groups.append(dict(params=[bias], lr=home["lr"], weight_decay=home["weight_decay"],
                           whiten=True))  # the lr and decay of the group it leaves
    if muon:
        groups.append(dict(params=filters, lr=config.muon_lr, momentum=config.muon_momentum,
                           orthogonalize=True))
    for g in groups:
        g["base_lr"] = g["lr"]
    groups = [g for g in groups if g["params"]]
    if muon:
        return Muon(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    if config.optimizer in ("sgd", "nesterov"):
        return torch.optim.SGD(groups, momentum=config.momentum, nesterov=config.optimizer == "nesterov")
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, betas=(config.momentum, 0.999))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


def whitening_bias(model: nn.Module) -> nn.Parameter | None:
    """The trainable bias of a model's whitening layer (fastnet's `whiten`), if it has one."""
    bias = getattr(getattr(model, "whiten", None), "bias", None)
    return bias if isinstance(bias, nn.Parameter) and bias.requires_grad else None


class Lookahead:
    """airbench's lookahead: every 5 steps the weights move to an EMA of themselves."""

    every = 5

    def __init__(self, model: nn.Module):
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            if k in self.ema:
                self.ema[k].lerp_(v, 1 - decay)
                v.copy_(self.ema[k])

    @staticmethod
    def decay(step: int, total: int) -> float:
        return 0.95**5 * (step / total) ** 3


def _hard(target: torch.Tensor) -> torch.Tensor:
    return target.argmax(1) if target.ndim == 2 else target


# ---------------------------------------------------------------------------
# The run


@dataclass
class TrainResult:
    config: dict
    history: list[dict]
    test: dict  # scalar test metrics: loss, acc, top5 (+ superclass_acc)
    val: dict
    best_epoch: int | None
    stopped_early: bool
    wall_seconds: float
    device: str
    checkpoint: str | None
    precision: str = "fp32"  # what `auto` resolved to: the autocast of training and evaluation
    diverged: str | None = None  # why training stopped on a non-finite loss (scored as chance)
    model: nn.Module | None = field(default=None, repr=False)
    test_metrics: dict | None = field(default=None, repr=False)  # full metrics incl. confusion

    def summary(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model", "test_metrics")}


class Trainer:
    """Holds the state of one run, so that it can be checkpointed and resumed."""

    def __init__(self, config: RunConfig, out_dir=None, *, data_root=None, progress=True):
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.dist = cdist.setup(config)  # one process unless torchrun started several
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device if self.dist.enabled else config.resolved_device()
        self.precision = resolve_precision(config.precision, self.device)
        self.amp_dtype = AUTOCAST_DTYPES[self.precision]
        seed_everything(config.seed)

        with cdist.local_main_first(self.dist):  # under DDP: one download per node
            self.data = cdata.load_cifar(config.dataset, root=data_root)
        self.train_split, self.val_split = cdata.train_split(
            self.data, val_size=config.val_size, subset=config.train_subset, seed=config.seed)
        self.test_split = cdata.test_split(self.data, config.test_subset)
        self.mean, self.std = cdata.channel_stats(self.train_split.images)
        nc = self.data.num_classes
        if len(self.train_split) < config.batch_size:
            raise ValueError(f"batch_size: {config.batch_size} exceeds the {len(self.train_split)} "
                             "training images; lower it or enlarge train_subset")
        self.loader = BatchLoader(
            self.train_split.images, self.train_split.labels,
            batch_size=cdist.per_rank_batch(config.batch_size, self.dist.world_size),
            mean=self.mean, std=self.std, augment=config.augment, options=config.augment_options(),
            num_classes=nc, shuffle=True, seed=config.seed, device=self.device,
            channels_last=config.channels_last,
            rank=self.dist.rank, world_size=self.dist.world_size)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = max(1, round(config.epochs * self.steps_per_epoch))
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        self.model = create_model(config.model, nc, **config.model_options).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if hasattr(self.model, "init_from_data"):
            sample = self.train_split.images[:5000]
            self.model.init_from_data(normalize(sample, self.mean, self.std).to(self.device))
        net = cdist.wrap(self.model, self.dist, sync_bn=config.sync_bn)  # DDP under torchrun
        self.forward = torch.compile(net) if config.compile else net
        self.optimizer = make_optimizer(config, self.model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.lookahead = Lookahead(self.model) if config.lookahead else None

        self.step = 0
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.stopping = EarlyStopping.of(config)  # tracks the best epoch even when off
        self.best_weights = None  # the best epoch's state_dict, kept only under early stopping
        self.diverged: str | None = None  # set when the training loss stops being finite
        self.scored_as_chance = False  # finish(): a diverged model predicts uniform probabilities
        self.elapsed = 0.0  # training seconds over all sessions of this run

    # -- checkpoint state ---------------------------------------------------
    @property
    def last_path(self) -> Path | None:
        return self.out_dir / "last.pt" if self.out_dir else None

    def state(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lookahead": self.lookahead.ema if self.lookahead else None,
            "history": self.history, "bad_epochs": self.stopping.bad_epochs,
            "stopped_early": self.stopped_early,
            "best": None if self.stopping.best is None else
            {"value": self.stopping.best[0], "epoch": self.stopping.best[1],
             "model": self.best_weights},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }

    def load_state(self, s: dict) -> None:
        if not same_config(s["config"], self.config):
            raise ValueError(f"resume: {self.last_path} belongs to a different config; "
                             "use another out dir or delete it")
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scaler.load_state_dict(s["scaler"])
        if self.lookahead:
            self.lookahead.ema = {k: v.to(self.device) for k, v in s["lookahead"].items()}
        self.epoch, self.step, self.elapsed = s["epoch"], s["step"], s["elapsed"]
        self.history, self.stopping.bad_epochs = s["history"], s["bad_epochs"]
        self.stopping.stopped = s["stopped_early"]
        b = s["best"]
        self.stopping.best = None if b is None else (b["value"], b["epoch"])
        self.best_weights = None if b is None else b["model"]
        torch.set_rng_state(s["rng"])
        if s["cuda_rng"]:
            torch.cuda.set_rng_state_all(s["cuda_rng"])

    def try_resume(self) -> bool:
        # Under DDP rank 0 reads last.pt and hands it to every rank.
        s = cdist.from_main(self.dist, self._read_last) if self.dist.enabled else self._read_last()
        if s is not None:
            try:
                self.load_state(s)
            except (KeyError, TypeError, RuntimeError) as e:
                raise ValueError(f"resume: {self.last_path} does not fit this run "
                                 f"({fileio.first_line(e)}); "
                                 "restart it or use another out dir") from None
        return s is not None

    def _read_last(self) -> dict | None:
        # On the CPU: the RNG states must be CPU tensors, load_state_dict moves the weights
        # and optimizer state to the model's device, and under DDP it is sent to every rank.
        if self.last_path is None or not self.last_path.exists():
            return None
        try:
            return load_safe(self.last_path)
        except fileio.DamagedFileError as e:
            aside = fileio.set_aside(self.last_path)
            print(f"resume: {e}; set aside as {aside.name}, {self.out_dir} trains from scratch",
                  file=sys.stderr, flush=True)
            return None

    # -- the loop -------------------------------------------------------------
    def train_epoch(self) -> dict:
        cfg, model = self.config, self.model
        model.train()
        self.loader.set_epoch(self.epoch)
        steps = min(self.steps_per_epoch, self.total_steps - self.step)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        bar = tqdm(total=steps, desc=f"epoch {self.epoch + 1}/{self.num_epochs}", leave=False,
                   disable=not self.progress, mininterval=2.0, unit="batch")
        for i, (x, y) in enumerate(self.loader):
            if i >= steps:
                break
            set_lr(self.optimizer, lr_factor(cfg, self.step, self.total_steps))
            if cfg.whiten_epochs:
                self.whiten_lr()
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.forward(x)
                # hard labels, or soft MixUp/CutMix targets
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            # On a GPU, checking every step would force a sync; NaN/inf also poisons the sum.
            # Under DDP all ranks stop together, on the summed loss after the epoch.
            if (not self.dist.enabled and (self.device.type != "cuda" or i % 25 == 0)
                    and not torch.isfinite(loss_sum + loss)):
                self.diverged = self._diverged(loss.item())
                break
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            if self.lookahead and self.step % Lookahead.every == 0:
                self.lookahead.update(model, Lookahead.decay(self.step, self.total_steps))
            loss_sum += loss.detach() * len(x)
            correct += (logits.argmax(1) == _hard(y)).sum()
            seen += len(x)
            bar.update(1)
        bar.close()
        if self.lookahead and self.step >= self.total_steps:
            self.lookahead.update(model, 1.0)  # end on the averaged weights
        if self.dist.enabled:  # sums over the ranks: the metrics of the global batches
            loss_sum, correct, seen = cdist.all_reduce_sum(self.dist, loss_sum, correct, seen)
        train_loss = loss_sum.item() / max(1, seen)
        if not math.isfinite(train_loss) and self.diverged is None:  # after the last check
            self.diverged = self._diverged(train_loss)
        return {"train_loss": train_loss, "train_acc": correct.item() / max(1, seen),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def whiten_lr(self) -> None:
        """The whitening bias's lr falls linearly to 0 over `whiten_epochs`; from then on the
        bias takes no gradient, so backward skips the first conv's input gradient. Under DDP it
        keeps its gradient (every rank must reduce the same parameters) at lr 0: same weights."""
        until = max(1, round(self.config.whiten_epochs * self.steps_per_epoch))
        left = max(0.0, 1 - self.step / until)
        for g in self.optimizer.param_groups:
            if g.get("whiten"):
                g["lr"] = g["base_lr"] * left
                if not self.dist.enabled:
                    g["params"][0].requires_grad_(left > 0)

    def _diverged(self, loss: float) -> str:
        return (f"training loss became {loss} at epoch {self.epoch + 1}, step {self.step}; "
                f"lower lr (now {self.config.lr}) or use precision fp32")

    def predict(self, split: cdata.Split, tta: int = 0) -> torch.Tensor:
        if self.scored_as_chance:  # its weights may hold NaN, which would score NaN
            return torch.zeros(len(split.labels), self.data.num_classes)
        return predict_logits(self.model, split.images, self.mean, self.std, tta=tta,
                              device=self.device, channels_last=self.config.channels_last,
                              autocast_dtype=self.amp_dtype)

    def validate(self) -> dict:
        if self.val_split is None:
            return {}
        m = metrics_from_logits(self.predict(self.val_split), self.val_split.labels)
        return {"val_loss": m["loss"], "val_acc": m["acc"]}

    @property
    def stopped_early(self) -> bool:
        return self.stopping.stopped

    def run(self, *, save_diverged: bool = True) -> TrainResult:
        self.run_epochs()
        return self.finish(save_diverged=save_diverged)

    def run_epochs(self) -> None:
        """Train the remaining epochs, checkpointing after each."""
        cfg = self.config
        while self.epoch < self.num_epochs and not self.stopped_early:
            t0 = time.perf_counter()
            row = {"epoch": self.epoch + 1, **self.train_epoch()}
            if self.diverged:  # the unfinished epoch leaves no history row and no checkpoint,
                self.elapsed += time.perf_counter() - t0  # but its time was spent
                break
            row.update(cdist.from_main(self.dist, self.validate))  # under DDP: rank 0's numbers
            row["seconds"] = time.perf_counter() - t0
            self.elapsed += row["seconds"]
            self.epoch += 1
            self.history.append(row)
            # Only early stopping restores the best weights: without it, copying them (and
            # saving the copy in last.pt) would only cost memory and disk.
            if self.stopping.update(row) and cfg.early_stop_patience:
                self.best_weights = copy.deepcopy(self.model.state_dict())
            if self.last_path and self.dist.is_main:
                save_atomic(self.state(), self.last_path)
            if self.progress:
                tqdm.write(_format_row(row, self.num_epochs))

    def finish(self, *, save_diverged: bool = True) -> TrainResult:
        """Evaluate and, with an out dir, write model.pt; a diverged run writes it only with
        `save_diverged` (the run cache needs it to count the run finished)."""
        cfg = self.config
        best_epoch = None
        if cfg.early_stop_patience and self.stopping.best is not None:
            self.model.load_state_dict(self.best_weights)  # early stopping keeps the best-validation weights
            best_epoch = self.stopping.best[1]
        # A diverged run without early-stopped weights scores as uniform probabilities (chance).
        self.scored_as_chance = self.diverged is not None and best_epoch is None
        if not self.dist.is_main:
            return self._finish_other_rank(best_epoch)
        t0 = time.perf_counter()
        val = self.validate()
        test_metrics = metrics_from_logits(
            self.predict(self.test_split, tta=cfg.tta), self.test_split.labels,
            coarse=self.test_split.coarse, fine_to_coarse=self.data.fine_to_coarse)
        self.elapsed += time.perf_counter() - t0
        test = scalar_metrics(test_metrics)
        ckpt_path = None
        if self.out_dir and (save_diverged or self.diverged is None):
            ckpt = model_checkpoint(self.model, cfg.to_dict(), classes=self.data.classes,
                                    mean=self.mean, std=self.std,
                                    metrics={**scalar_metrics(test_metrics, "test_"), **val},
                                    evaluation={"tta": cfg.tta, "precision": self.precision,
                                                "channels_last": cfg.channels_last})
            ckpt_path = str(save_atomic(ckpt, self.out_dir / "model.pt"))
        if self.dist.enabled:  # the other ranks wait in _finish_other_rank for these
            cdist.share(self.dist, (val, test, ckpt_path, self.elapsed))
        device = cdist.device_label(self.device, self.dist)  # str(self.device) in one process
        return TrainResult(config=cfg.to_dict(), history=self.history, test=test, val=val,
                           best_epoch=best_epoch, stopped_early=self.stopped_early,
                           wall_seconds=self.elapsed, device=device, checkpoint=ckpt_path,
                           precision=self.precision, diverged=self.diverged, model=self.model,
                           test_metrics=test_metrics)

    def _finish_other_rank(self, best_epoch: int | None) -> TrainResult:
        """DDP ranks other than 0: rank 0 evaluates and writes model.pt; return its numbers."""
        val, test, ckpt_path, elapsed = cdist.share(self.dist)
        return TrainResult(config=self.config.to_dict(), history=self.history, test=test, val=val,
                           best_epoch=best_epoch, stopped_early=self.stopped_early,
                           wall_seconds=elapsed, device=cdist.device_label(self.device, self.dist),
                           checkpoint=ckpt_path, precision=self.precision, diverged=self.diverged,
                           model=self.model)


def same_config(saved: dict, config: RunConfig) -> bool:
    """Equal after normalization (a JSON round trip turns tuples into lists; fields added
    since a checkpoint was written take their defaults)."""
    try:
        return RunConfig.from_dict(saved).key() == config.key()
    except (ValueError, TypeError):
        return False


def _format_row(row: dict, total: int) -> str:
    parts = [f"epoch {row['epoch']}/{total}"]
    for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        if k in row:
            parts.append(f"{k}={row[k]:.4g}")
    parts.append(f"{row['seconds']:.1f}s")
    return " ".join(parts)


def train(config: RunConfig, out_dir=None, *, resume: bool = True, data_root=None,
          progress: bool = True, save_diverged: bool = True) -> TrainResult:
    """Train one run. With `out_dir`, each epoch is checkpointed there and a rerun resumes.

    The out dir is locked first (`fileio.hold_folder`, the run cache's lock): an unusable
    folder, or one another process is writing, stops the call before any work. A run whose
    loss became non-finite still finishes (scored as chance); with `save_diverged=False` it
    writes no model.pt (`result.checkpoint` is None), so nothing mistakes it for a model.
    """
    main = out_dir is not None and cdist.is_main()  # under torchrun rank 0 writes
    with fileio.hold_folder(out_dir) if main else contextlib.nullcontext():
        trainer = Trainer(config, out_dir, data_root=data_root, progress=progress)
        if trainer.progress:
            tqdm.write(f"{config.dataset} {config.model} on {trainer.device}: "
                       f"{precision_note(config.precision, trainer.precision, trainer.device)}")
        if resume and trainer.try_resume() and trainer.progress:
            tqdm.write(f"resuming {out_dir} after epoch {trainer.epoch}/{trainer.num_epochs}")
        return trainer.run(save_diverged=save_diverged)


def lr_find(config: RunConfig, *, start_lr: float = 1e-5, end_lr: float = 10.0, steps: int = 100,
            data_root=None, diverge: float = 4.0) -> dict:
    """LR range test (Smith 2015): raise the lr exponentially for `steps` batches.

    Returns the lrs, the smoothed losses and a suggested lr: the point of steepest
    descent of the smoothed loss, capped at a tenth of the lr of the lowest loss.
    """
    if not 0 < start_lr < end_lr < math.inf:
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr < inf, got {start_lr}, {end_lr}")
    check_int("steps", steps, 3)  # the suggestion needs a curve
    if cdist.env_info().enabled:
        raise ValueError("lr_find: runs in a single process; start it without torchrun")
    trainer = Trainer(config.replace(schedule="constant", lookahead=False), None,
                      data_root=data_root, progress=False)
    opt, model = trainer.optimizer, trainer.model
    model.train()
    gamma = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs, losses, best, epoch = [], [], math.inf, 0
    while len(lrs) < steps:
        trainer.loader.set_epoch(epoch)
        epoch += 1
        for x, y in trainer.loader:
            lr = start_lr * gamma ** len(lrs)
            for g in opt.param_groups:
                g["lr"] = lr * g["base_lr"] / config.lr
            loss_t = F.cross_entropy(trainer.forward(x).float(), y,
                                     label_smoothing=config.label_smoothing)
            loss = loss_t.item()
            if not math.isfinite(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            opt.step()
            smooth = 0.9 * losses[-1] + 0.1 * loss if losses else loss
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if len(lrs) >= steps or smooth > diverge * best:
                break
        if not lrs or len(lrs) >= steps or losses[-1] > diverge * best or not math.isfinite(loss):
            break
    return {"lrs": lrs, "losses": losses, "suggested_lr": suggest_lr(lrs, losses)}


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    log_lr = np.log10(np.asarray(lrs))
    loss = np.asarray(losses)
    if len(loss) < 3:
        return float(lrs[0])
    ok = np.isfinite(loss)
    grad = np.gradient(loss[ok], log_lr[ok])
    steepest = float(10 ** log_lr[ok][int(np.argmin(grad))])
    at_min = float(10 ** log_lr[ok][int(np.argmin(loss[ok]))])
    return min(steepest, at_min / 10) if at_min / 10 > lrs[0] else steepest

