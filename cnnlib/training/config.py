"""The one run config: `RunConfig` (every field, its default and its check) and named recipes.

A config is plain data: the trainer, the run cache, the studies and the CLI all read
this one dataclass, and the batch loader gets its augmentation strengths from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import torch

from cnnlib._checks import check_int
from cnnlib.data.augment import PAD_MODES, AugmentOptions, parse_augment
from cnnlib.data.obtain import DATASETS
from cnnlib.models.registry import list_models
from cnnlib.training.device import PRECISIONS
from cnnlib.training.evaluate import TTA_LEVELS

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "muon")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
EARLY_STOP_METRICS = ("val_acc", "val_loss")


@dataclass
class RunConfig:
    """Everything that defines a training run. Two equal configs give the same run."""

    dataset: str = "cifar10"
    model: str = "baseline"
    model_options: dict = field(default_factory=dict)
    epochs: float = 10  # fractional epochs allowed: the last epoch stops early
    batch_size: int = 256
    optimizer: str = "nesterov"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.15  # fraction of all steps spent warming up (onecycle, cosine)
    warmup_start: float = 0.1  # lr factor at step 0
    final_lr: float = 0.0  # lr factor at the last step (onecycle, cosine)
    label_smoothing: float = 0.0
    # Augmentation: `augment` names them ("crop+flip"); the fields below set their strengths.
    augment: str = "crop+flip"
    crop_padding: int = 4  # pixels; crop = pad, then a random 32x32 window (a translation)
    pad_mode: str = "reflect"  # reflect | zeros
    jitter: float = 0.4  # brightness / contrast / saturation factors in [1 - jitter, 1 + jitter]
    cutout_size: int = 8  # side of the square zeroed after normalization (= the channel mean)
    mixup_alpha: float = 0.2  # Beta(alpha, alpha) mixing weight
    cutmix_alpha: float = 1.0
    # Chance that a batch is mixed (MixUp / CutMix); 1 = every batch. The CutMix paper's CIFAR
    # code mixes a batch with probability 0.5.
    mix_prob: float = 1.0
    randaugment_ops: int = 2  # RandAugment: ops per image
    randaugment_magnitude: int = 9  # RandAugment: magnitude bin, 0..30
    val_size: int = 5000
    early_stop_patience: int = 0  # epochs without improvement before stopping; 0 = off
    early_stop_metric: str = "val_acc"
    # Epochs that count neither as best nor towards patience (e.g. up to the lr peak, where a
    # one-cycle schedule's validation numbers still get worse); 0 = count from the first.
    early_stop_after: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto = bf16 on CUDA and on CPUs with native bf16, else fp32
    channels_last: bool = True
    compile: bool = False
    train_subset: int = 0  # 0 = the whole training split
    test_subset: int = 0  # 0 = the whole test set (only smoke runs shrink it)
    tta: int = 0  # test-time augmentation level for the final test metrics
    norm_lr_scale: float = 1.0  # lr multiplier for BatchNorm parameters (airbench uses 64)
    lookahead: bool = False  # airbench's lookahead EMA of the weights
    sync_bn: bool = False  # DDP: BatchNorm statistics over the global batch; no effect in 1 process
    # optimizer="muon": conv filters take Muon steps (training/muon.py) at these settings;
    # every other parameter takes the Nesterov SGD step set by lr, momentum, weight_decay.
    muon_lr: float = 0.24
    muon_momentum: float = 0.6
    # Epochs over which a whitening layer's bias (fastnet's) trains, its lr falling linearly
    # to 0, after which it is frozen and the backward pass stops at the first conv group
    # (airbench's idea); 0 = it trains with the other biases for the whole run.
    whiten_epochs: float = 0

    def __post_init__(self):
        self.model_options = dict(self.model_options or {})
        self.validate()

    # -- validation -------------------------------------------------------
    def validate(self) -> None:
        def bad(name, allowed):
            value = getattr(self, name)
            raise ValueError(f"{name}: {value!r} is not allowed; allowed: {allowed}")

        # NaN and inf first: NaN passes checks such as "not x <= 0", inf fails only mid-run.
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                bad(f.name, "a finite number")
        for k, v in self.model_options.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"model_options: {k}={v} is not allowed; allowed: a finite number")
        if self.dataset not in DATASETS:
            bad("dataset", ", ".join(DATASETS))
        if self.model not in list_models():
            bad("model", ", ".join(list_models()))
        for name, allowed in [("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("precision", PRECISIONS), ("early_stop_metric", EARLY_STOP_METRICS),
                              ("pad_mode", PAD_MODES)]:
            if getattr(self, name) not in allowed:
                bad(name, ", ".join(allowed))
        if self.tta not in TTA_LEVELS:
            bad("tta", ", ".join(map(str, TTA_LEVELS)))
        if not (isinstance(self.epochs, int | float) and self.epochs > 0):
            bad("epochs", "a number > 0")
        # Stored back as plain ints: a numpy integer would not serialise into the config hash.
        ints = {"batch_size": (1, None), "seed": (0, 2**63 - 1),  # torch.manual_seed: 64-bit
                "randaugment_magnitude": (0, 30)}
        for name in ("val_size", "train_subset", "test_subset", "early_stop_patience",
                     "early_stop_after", "crop_padding", "cutout_size", "randaugment_ops"):
            ints[name] = (0, None)
        for name, (low, high) in ints.items():
            setattr(self, name, check_int(name, getattr(self, name), low, high))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", "a finite number > 0")
        for name in ("weight_decay", "label_smoothing", "jitter"):
            if not getattr(self, name) >= 0:
                bad(name, "a number >= 0")
        for name in ("mixup_alpha", "cutmix_alpha"):  # Beta(0, 0) is undefined
            if not getattr(self, name) > 0:
                bad(name, "a number > 0")
        for name in ("momentum", "warmup", "warmup_start", "final_lr", "mix_prob"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, "a number in [0, 1]")
        if not 0 <= self.muon_momentum < 1:
            bad("muon_momentum", "a number in [0, 1)")
        if not self.muon_lr > 0:
            bad("muon_lr", "a number > 0")
        if not (isinstance(self.whiten_epochs, int | float) and self.whiten_epochs >= 0):
            bad("whiten_epochs", "a number >= 0")
        if self.label_smoothing >= 1:
            bad("label_smoothing", "a number in [0, 1)")
        if self.norm_lr_scale <= 0:
            bad("norm_lr_scale", "a number > 0")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            bad("device", "auto, cpu, cuda, cuda:N")
        if self.early_stop_patience and not self.val_size:
            raise ValueError("early_stop_patience: needs a validation split; set val_size > 0")
        parse_augment(self.augment)  # raises on unknown names

    # -- identity ---------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable short hash of every field's value: equal configs (6 == 6.0) share it.

        A field in `LATER_FIELDS` joins the hash only when it differs from its default, so
        adding an option leaves the keys of every run recorded before it unchanged.
        """
        d = self.to_dict()
        for name in LATER_FIELDS:
            if _normalized(d[name]) == _normalized(_DEFAULTS[name]):
                del d[name]
        blob = json.dumps(_normalized(d), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        return cls(**d)

    def augment_options(self) -> AugmentOptions:
        return AugmentOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AugmentOptions)})

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device: {self.device!r} asked for but CUDA is not available; use cpu or auto")
        return torch.device(self.device)


# Fields added after the study's first recorded runs (see `RunConfig.key`).
LATER_FIELDS = ("muon_lr", "muon_momentum", "mix_prob", "early_stop_after", "whiten_epochs")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _normalized(value):
    """JSON-ready value in one canonical form: integral floats as ints, tuples as lists."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _normalized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalized(v) for v in value]
    return value


# Named starting points; a recipe is a dict of RunConfig fields.
RECIPES: dict[str, dict] = {
    # The study's simple CNN with a standard, robust recipe.
    "baseline": dict(model="baseline", batch_size=256, optimizer="nesterov", lr=0.05, momentum=0.9,
                     weight_decay=5e-4, schedule="onecycle", warmup=0.15, augment="crop+flip",
                     label_smoothing=0.1),
    # airbench94's hyperparameters, rewritten for a mean-reduced loss:
    # lr 11.5 per 1024 examples over (1 + 1/(1-momentum)) -> 1.5 at batch 1024; decoupled
    # weight decay 0.0153 per 1024 examples -> 0.00133 coupled; triangle schedule 0.2 -> 1 -> 0.07.
    "fastnet": dict(model="fastnet", batch_size=1024, optimizer="nesterov", lr=1.5, momentum=0.85,
                    weight_decay=0.00133, schedule="onecycle", warmup=0.23, warmup_start=0.2,
                    final_lr=0.07, label_smoothing=0.2, augment="crop+flip", crop_padding=2,
                    pad_mode="reflect", norm_lr_scale=64.0, lookahead=True, tta=2, val_size=0),
    # The CIFAR recipe of the ResNet, WRN and DenseNet papers: SGD with momentum 0.9, lr 0.1 at
    # batch 128, weight decay 5e-4 (WRN's; ResNet and DenseNet used 1e-4 over longer
    # schedules), no label smoothing, crops from a 4-pixel zero padding and flips; a cosine
    # schedule from the first step (WRN and later work; the papers' steps need a fixed length).
    "sgd_cosine": dict(model="resnet20", batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                       weight_decay=5e-4, schedule="cosine", warmup=0.0, final_lr=0.0,
                       label_smoothing=0.0, augment="crop+flip", crop_padding=4,
                       pad_mode="zeros"),
    # The same network trained the way airbench94_muon trains it (94% in 8 epochs on a GPU):
    # Muon for the conv filters (lr 0.24, momentum 0.6); Nesterov SGD, momentum 0.85, for the
    # head and the biases. airbench's sum-reduced lrs at batch 2000 (head 0.67, biases 0.053)
    # for a mean-reduced loss and fastnet's 1/9 output scale (airbench: 1/256 with a unit-std
    # head): head 0.67 * 2000 * (9/256)^2 = 1.66, biases 64x that; weight decay 0.004 of the
    # weights per step = 0.0024 coupled. The lr falls linearly to 0 from the first step (no
    # warmup, no lookahead); alternating flips; the batch of 2000 halves the steps per epoch.
    # The whitening bias trains for 3 epochs, its lr falling to 0, then freezes, as airbench's:
    # backward then skips the first conv group's input gradient (3% faster steps on a CPU).
    "fastnet_muon": dict(model="fastnet", batch_size=2000, optimizer="muon", muon_lr=0.24,
                         muon_momentum=0.6, lr=1.66, momentum=0.85, weight_decay=0.0024,
                         norm_lr_scale=64.0, schedule="onecycle", warmup=0.0, final_lr=0.0,
                         label_smoothing=0.2, augment="crop+altflip", crop_padding=2,
                         pad_mode="reflect", lookahead=False, tta=2, val_size=0, epochs=8,
                         whiten_epochs=3),
}


def recipe(name: str, **overrides) -> RunConfig:
    """A RunConfig from a named recipe plus overrides."""
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown {name!r}; allowed: {', '.join(RECIPES)}")
    return RunConfig(**{**RECIPES[name], **overrides})
