"""Model compression: pruning, int8 quantization and ONNX export, with checkpoints for each.

- Unstructured pruning (:func:`magnitude_prune`): global L1 magnitude pruning of the conv
  and linear weights with ``torch.nn.utils.prune``; :func:`make_permanent` removes the masks.
  Zeros alone do not shrink a dense file, so pruned checkpoints store sparse weights as a
  bit mask plus the nonzero values.
- Structured pruning (:func:`prune_channels`): removes whole output channels of convs
  (and the matching BatchNorm entries and input channels of the next layer), so the
  network really gets smaller and faster. Supported: ``baseline`` (every conv of the
  plain network; only the inner conv of each residual pair) and ``fastnet`` (every conv
  but the whitening layer).
- :func:`fine_tune`: a few hundred steps with the run's own recipe and ``BatchLoader``.
- int8 (:func:`quantize_int8`, :func:`quantize_qat`): static quantization in FX graph mode
  for the x86 backend (fbgemm kernels, per-channel int8 weights, uint8 activations),
  calibrated on training images. It runs eagerly, with no compiler. FX mode is marked
  deprecated upstream in favour of torchao's PT2E, whose int8 graphs only run fast
  through ``torch.compile``; FX still ships with the torch versions in requirements.txt.
- ONNX (:func:`export_onnx`, :func:`load_onnx`): the fp32 model for onnxruntime, with the
  checkpoint metadata embedded so that the file stands alone.

Checkpoints load with ``weights_only=True``: a pruned one is an fp32 checkpoint plus the
channel widths to rebuild; an int8 one holds the converted model's state (int8 weights,
scales, zero points) and is rebuilt at load time by quantizing the same architecture
again and loading that state. Importing this module registers both kinds with
:func:`cnnlib.checkpoint.load_model`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import tempfile
import time
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from . import data as cdata
from .augment import BatchLoader, normalize
from .checkpoint import FORMAT, model_checkpoint, register_kind, save_atomic
from .evaluate import evaluate
from .models import count_parameters, create_model
from .models.baseline import BaselineCNN, ConvBNReLU, ResidualPair
from .models.fastnet import FastNet
from .train import RunConfig, lr_factor, make_optimizer, set_lr, soft_cross_entropy

__all__ = [
    "OnnxModel",
    "QuantizedModel",
    "SETTINGS",
    "benchmark",
    "channel_widths",
    "compress_model",
    "export_onnx",
    "file_size_mb",
    "fine_tune",
    "load_onnx",
    "magnitude_prune",
    "make_permanent",
    "plot_tradeoffs",
    "prunable_weights",
    "prune_channels",
    "quantize_int8",
    "quantize_qat",
    "results_frame",
    "save_compressed",
    "settings",
    "sparsity",
    "time_models",
    "time_per_call",
    "zipped_size_mb",
]

BACKEND = "x86"
MB = 1e6  # sizes are decimal megabytes

# ---------------------------------------------------------------------------
# Unstructured (magnitude) pruning


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every conv and linear layer whose weight trains.

    fastnet's whitening filters are frozen statistics of the data, not learned weights.
    """
    return [(m, "weight") for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and _weight(m).requires_grad]


def _weight(m: nn.Module) -> torch.Tensor:
    return getattr(m, "weight_orig", m.weight)  # a pruned module trains weight_orig


def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the fraction ``amount`` of smallest-magnitude weights, ranked over all layers at once.

    Works in place and keeps the masks (so fine-tuning keeps the zeros); call
    :func:`make_permanent` afterwards.
    """
    if not 0 <= amount < 1:
        raise ValueError(f"amount: must be in [0, 1), got {amount!r}")
    params = prunable_weights(model)
    if not params:
        raise ValueError("magnitude_prune: the model has no trainable conv or linear weights")
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(amount))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold pruning masks into the weights (``prune.remove``), leaving plain parameters."""
    for m in model.modules():
        for name in [k[: -len("_mask")] for k, _ in m.named_buffers(recurse=False)
                     if k.endswith("_mask")]:
            prune.remove(m, name)
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the prunable conv and linear weights."""
    weights = [m.weight for m, _ in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, total)


# ---------------------------------------------------------------------------
# Structured (channel) pruning


@dataclass
class _Unit:
    """A conv whose output channels can go: its BatchNorm, activation and the layers it feeds."""

    name: str
    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    act: nn.Module
    consumers: list[nn.Module]


def _units(model: nn.Module) -> list[_Unit]:
    names = {m: n for n, m in model.named_modules()}
    if isinstance(model, FastNet):
        raw = _fastnet_units(model)
    elif isinstance(model, BaselineCNN):
        raw = _baseline_units(model)
    else:
        raise ValueError(f"prune_channels: supports baseline and fastnet; got "
                         f"{type(model).__name__}")
    return [_Unit(names[c], c, n, a, cons) for c, n, a, cons in raw]


def _fastnet_units(model: FastNet) -> list[tuple]:
    groups = list(model.features)[2:]
    out = []
    for i, g in enumerate(groups):
        after = [groups[i + 1].conv1] if i + 1 < len(groups) else [model.head]
        out += [(g.conv1, g.norm1, g.act1, [g.conv2]), (g.conv2, g.norm2, g.act2, after)]
    return out


def _baseline_units(model: BaselineCNN) -> list[tuple]:
    blocks = [m for m in model.features.modules() if isinstance(m, (ConvBNReLU, ResidualPair))]
    if any(isinstance(b, ResidualPair) for b in blocks):
        # A skip connection ties a block's output width to its input: only the inner conv goes.
        return [(b.conv1, b.bn1, b.relu1, [b.conv2]) for b in blocks if isinstance(b, ResidualPair)]
    heads = [b[0] for b in blocks[1:]] + [model.head]
    return [(b[0], b[1], b[2], [after]) for b, after in zip(blocks, heads, strict=True)]


def channel_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of each prunable conv (empty for families without channel pruning)."""
    try:
        return {u.name: u.conv.out_channels for u in _units(model)}
    except ValueError:
        return {}


def _keep_param(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.clone(), requires_grad=old.requires_grad)


@torch.no_grad()
def _shrink(unit: _Unit, keep: torch.Tensor) -> None:
    """Keep output channels ``keep`` of the unit's conv, norm, and the inputs of its consumers."""
    conv, norm = unit.conv, unit.norm
    conv.weight = _keep_param(conv.weight, conv.weight[keep])
    if conv.bias is not None:
        conv.bias = _keep_param(conv.bias, conv.bias[keep])
    conv.out_channels = len(keep)
    norm.weight = _keep_param(norm.weight, norm.weight[keep])
    norm.bias = _keep_param(norm.bias, norm.bias[keep])
    norm.running_mean = norm.running_mean[keep].clone()
    norm.running_var = norm.running_var[keep].clone()
    norm.num_features = len(keep)
    for m in unit.consumers:
        m.weight = _keep_param(m.weight, m.weight[:, keep])
        if isinstance(m, nn.Conv2d):
            m.in_channels = len(keep)
        else:
            m.in_features = len(keep)


@torch.no_grad()
def _channel_scores(model: nn.Module, units: list[_Unit], x: torch.Tensor,
                    batch_size: int) -> list[torch.Tensor]:
    """Per channel: mean |activation| on ``x`` times the L1 norm of its outgoing weights.

    BatchNorm makes a filter's own norm meaningless (and fastnet freezes the BN scale),
    so a channel is judged by what it sends on: how strongly it fires and how much the
    next layer listens.
    """
    sums = [torch.zeros(u.conv.out_channels) for u in units]
    hooks = [u.norm.register_forward_hook(_accumulate(u.act, s)) for u, s in zip(units, sums,
                                                                                   strict=True)]
    was_training = model.training
    model.eval()
    try:
        for chunk in x.split(batch_size):
            model(chunk)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [s * sum(_outgoing_l1(m) for m in u.consumers) for u, s in zip(units, sums,
                                                                          strict=True)]


def _accumulate(act: nn.Module, total: torch.Tensor):
    def hook(module, inputs, output):
        total.add_(act(output).abs().mean((2, 3)).sum(0).cpu())
    return hook


def _outgoing_l1(m: nn.Module) -> torch.Tensor:
    w = m.weight.detach().abs().cpu()
    return w.sum((0, 2, 3)) if w.ndim == 4 else w.sum(0)


def prune_channels(model: nn.Module, amount: float, images: torch.Tensor, mean, std, *,
                   batch_size: int = 256) -> nn.Module:
    """A copy of ``model`` with about ``amount`` of the prunable conv weights removed as channels.

    A conv's weights scale with its input times output channels, so keeping
    ``sqrt(1 - amount)`` of the channels of every prunable layer removes about ``amount``
    of their weights. Channels are ranked by :func:`_channel_scores` on ``images``
    (uint8 training images). The copy keeps ``model.meta``.
    """
    if not 0 <= amount < 1:
        raise ValueError(f"amount: must be in [0, 1), got {amount!r}")
    pruned = copy.deepcopy(model)
    make_permanent(pruned)
    units = _units(pruned)
    x = normalize(images, mean, std).to(_device(pruned))
    scores = _channel_scores(pruned, units, x, batch_size)
    keep_frac = math.sqrt(1 - amount)
    for unit, score in zip(units, scores, strict=True):
        n = max(1, round(unit.conv.out_channels * keep_frac))
        keep = score.topk(n).indices.sort().values  # original order: the sliced layout stays valid
        _shrink(unit, keep.to(unit.conv.weight.device))
    return pruned


def _with_widths(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """Give a freshly built model the channel widths recorded in a checkpoint."""
    for unit in _units(model) if widths else []:
        n = widths.get(unit.name, unit.conv.out_channels)
        if n != unit.conv.out_channels:
            _shrink(unit, torch.arange(n))
    return model


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------
# Fine-tuning


def _num_classes(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def fine_tune(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, *,
              steps: int, config: dict | None = None, batch_size: int = 256,
              lr_scale: float = 0.1, seed: int = 0, progress: bool = False) -> nn.Module:
    """Train ``model`` for ``steps`` batches with its run's recipe, then leave it in eval mode.

    ``config`` is the run's config dict (``model.meta["config"]``; the baseline recipe
    when None): optimizer, weight decay, label smoothing and augmentation come from it.
    The learning rate is ``lr_scale`` times the run's peak rate (scaled to
    ``batch_size``), decayed to zero on a cosine. Pruning masks stay in force.
    """
    cfg = RunConfig.from_dict(config) if config else RunConfig()
    batch_size = min(batch_size, len(images))
    cfg = cfg.replace(batch_size=batch_size, lr=cfg.lr * lr_scale * batch_size / cfg.batch_size,
                      schedule="cosine", warmup=0.0, final_lr=0.0, lookahead=False)
    device = _device(model)
    loader = BatchLoader(images, labels, batch_size=batch_size, mean=mean, std=std,
                         augment=cfg.augment, options=cfg.augment_options(),
                         num_classes=_num_classes(model), seed=seed, device=device)
    optimizer = make_optimizer(cfg, model)
    model.train()
    step, epoch, loss = 0, 0, torch.zeros(())
    while step < steps:
        loader.set_epoch(epoch)
        epoch += 1
        for x, y in loader:
            if step >= steps:
                break
            set_lr(optimizer, lr_factor(cfg, step, steps))
            loss = soft_cross_entropy(model(x).float(), y, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    model.eval()
    if progress:
        print(f"  fine-tuned {steps} steps (batch {batch_size}); last loss {loss.item():.4f}",
              flush=True)
    return model


# ---------------------------------------------------------------------------
# int8 quantization (FX graph mode, x86 backend)


@contextlib.contextmanager
def _quiet_ao():
    """Silence torch.ao's deprecation notices (see the module docstring); other warnings pass."""
    with warnings.catch_warnings():
        for text in ("torch.ao.quantization is deprecated", "Please use quant_min and quant_max",
                     "quantized tensor creation functions", "must run observer before"):
            warnings.filterwarnings("ignore", message=f".*{text}")
        yield


def _std_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` copy (FX treats only torch's own classes as leaf layers)."""
    padding = conv.padding
    if padding == "same":  # the quantized conv wants numbers
        padding = tuple(k // 2 for k in conv.kernel_size)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=padding, bias=conv.bias is not None)
    out.load_state_dict(conv.state_dict())
    out.weight.requires_grad_(conv.weight.requires_grad)  # fastnet's whitening stays frozen
    return out


def _std_norm(norm: nn.BatchNorm2d) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(norm.num_features, eps=norm.eps, momentum=norm.momentum)
    out.load_state_dict(norm.state_dict())
    out.weight.requires_grad_(norm.weight.requires_grad)
    return out


@torch.no_grad()
def _plain_fastnet(model: FastNet) -> nn.Sequential:
    """fastnet as a sequence of torch's own layers, each BatchNorm right after its conv.

    FX then folds every BatchNorm into its conv (or trains them fused, for QAT). fastnet
    normalizes after the max-pool; a positive per-channel scale commutes with max, so
    moving the norm before the pool gives the same function.
    """
    layers: list[nn.Module] = [_std_conv(model.whiten), nn.GELU()]
    for g in list(model.features)[2:]:
        if not bool((g.norm1.weight > 0).all()):
            raise ValueError("quantize: fastnet's BatchNorm after a max-pool needs a positive "
                             "scale to move before it")
        layers += [_std_conv(g.conv1), _std_norm(g.norm1), copy.deepcopy(g.pool), nn.GELU(),
                   _std_conv(g.conv2), _std_norm(g.norm2), nn.GELU()]
    head = nn.Linear(model.head.in_features, model.head.out_features, bias=False)
    head.weight.copy_(model.head.weight * model.scaling_factor)
    return nn.Sequential(*layers, copy.deepcopy(model.pool), nn.Flatten(), head).eval()


def _quantizable(model: nn.Module) -> nn.Module:
    """An fp32 copy that FX graph mode can trace (FX itself fuses conv-BN(-ReLU))."""
    model = make_permanent(copy.deepcopy(model)).cpu().eval()
    if isinstance(model, FastNet):
        return _plain_fastnet(model)
    return model


class QuantizedModel(nn.Module):
    """An int8 model for the x86 CPU backend; ``recipe`` says how to rebuild it from a checkpoint."""

    def __init__(self, qmodel: nn.Module, recipe: dict):
        super().__init__()
        self.qmodel = qmodel
        self.recipe = dict(recipe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qmodel(x)


def _example(mean, std) -> tuple[torch.Tensor]:
    return (normalize(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), mean, std),)


def _convert(prepared: nn.Module, source: nn.Module, method: str, images: int) -> QuantizedModel:
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet_ao():
        qmodel = convert_fx(prepared.eval())
    recipe = {"backend": BACKEND, "method": method, "calibration_images": images,
              "channels": channel_widths(source), "params": count_parameters(source)}
    q = QuantizedModel(qmodel, recipe)
    if hasattr(source, "meta"):
        q.meta = {**source.meta, "kind": "int8"}
    return q


@torch.no_grad()
def quantize_int8(model: nn.Module, images: torch.Tensor, mean, std, *,
                  batch_size: int = 256) -> QuantizedModel:
    """Post-training static int8: fold BN, observe activations on ``images`` (uint8), convert.

    Weights are int8 per output channel; activations uint8 per tensor with histogram
    calibration (the x86 backend's defaults). Runs on the CPU.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = BACKEND  # the kernels the qconfig was chosen for
    with _quiet_ao():
        prepared = prepare_fx(_quantizable(model), get_default_qconfig_mapping(BACKEND),
                              _example(mean, std))
        for chunk in images.split(batch_size):
            prepared(normalize(chunk, mean, std))
    return _convert(prepared, model, "ptq", len(images))


def quantize_qat(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, *,
                 steps: int, config: dict | None = None, batch_size: int = 256,
                 lr_scale: float = 0.002, seed: int = 0, progress: bool = False) -> QuantizedModel:
    """Quantization-aware training: fake-quantize, fine-tune ``steps`` batches, convert to int8.

    BatchNorm keeps the run's statistics (frozen): a short run only adapts the weights
    to the int8 grid, and fastnet's norms, moved before their max-pool, stay exact.
    """
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    torch.backends.quantized.engine = BACKEND
    with _quiet_ao():
        prepared = prepare_qat_fx(_quantizable(model).train(),
                                  get_default_qat_qconfig_mapping(BACKEND), _example(mean, std))
        prepared.apply(freeze_bn_stats)
        fine_tune(prepared, images, labels, mean, std, steps=steps, config=config,
                  batch_size=batch_size, lr_scale=lr_scale, seed=seed, progress=progress)
    return _convert(prepared, model, "qat", len(images))


# ---------------------------------------------------------------------------
# Checkpoints of compressed models


def _meta(model: nn.Module) -> dict:
    meta = getattr(model, "meta", None)
    if not meta or "config" not in meta:
        raise ValueError("save_compressed: the model has no .meta (load it with "
                         "cnnlib.load_model, or set meta with classes, mean, std and config)")
    return meta


def _pack_sparse(w: torch.Tensor) -> dict | None:
    """A weight as bit mask + nonzero values, or None when that would not be smaller."""
    mask = w != 0
    nnz = int(mask.sum())
    if nnz * w.element_size() + math.ceil(w.numel() / 8) >= w.numel() * w.element_size():
        return None
    bits = torch.from_numpy(np.packbits(mask.flatten().numpy()))
    return {"shape": list(w.shape), "mask": bits, "values": w[mask].clone()}


def _unpack_sparse(packed: dict) -> torch.Tensor:
    shape = packed["shape"]
    n = math.prod(shape)
    mask = torch.from_numpy(np.unpackbits(packed["mask"].numpy(), count=n).astype(bool))
    w = torch.zeros(n, dtype=packed["values"].dtype)
    w[mask] = packed["values"]
    return w.view(shape)


def _pruned_checkpoint(model: nn.Module, meta: dict, metrics: dict | None) -> dict:
    model = make_permanent(copy.deepcopy(model)).cpu()
    ckpt = model_checkpoint(model, meta["config"], classes=meta["classes"], mean=meta["mean"],
                            std=meta["std"], metrics=metrics or meta.get("metrics"))
    ckpt.update(kind="pruned", channels=channel_widths(model), sparsity=sparsity(model),
                sparse={})
    prunable = {id(m) for m, _ in prunable_weights(model)}
    for key in [f"{n}.weight" for n, m in model.named_modules() if id(m) in prunable]:
        packed = _pack_sparse(ckpt["state_dict"][key])
        if packed is not None:
            ckpt["sparse"][key] = packed
            del ckpt["state_dict"][key]
    return ckpt


def _int8_checkpoint(model: QuantizedModel, meta: dict, metrics: dict | None) -> dict:
    config = meta["config"]
    state = model.qmodel.state_dict()
    return {
        "format": FORMAT, "kind": "int8", "model": config["model"],
        "model_options": dict(config.get("model_options") or {}),
        "num_classes": len(meta["classes"]), "recipe": dict(model.recipe),
        "state_dict": _plain_state(state), "state_versions": _versions(state), "config": config,
        "classes": list(meta["classes"]), "mean": list(meta["mean"]), "std": list(meta["std"]),
        "metrics": dict(metrics or meta.get("metrics") or {}),
    }


def _plain_state(state: dict) -> dict:
    """Quantized tensors as int8 values plus scales and zero points: plain tensors to store.

    Pickled quantized tensors are on their way out of torch; plain ones load anywhere.
    """
    return {k: _plain(v) for k, v in state.items()}


def _plain(v):
    if isinstance(v, (tuple, list)):  # a quantized linear keeps (weight, bias) packed
        return type(v)(_plain(x) for x in v)
    if not (isinstance(v, torch.Tensor) and v.is_quantized):
        return v
    if v.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return {"qint": v.int_repr(), "scale": v.q_per_channel_scales().float(),
                "zero_point": v.q_per_channel_zero_points(), "axis": v.q_per_channel_axis(),
                "dtype": str(v.dtype)}
    return {"qint": v.int_repr(), "scale": torch.tensor(v.q_scale()),
            "zero_point": torch.tensor(v.q_zero_point()), "dtype": str(v.dtype)}


_QDTYPES = {str(t): t for t in (torch.qint8, torch.quint8, torch.qint32)}


def _versions(state: dict) -> dict:
    """Per-module state versions: quantized modules read their saved layout from them."""
    return {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()}


def _quantized_state(state: dict, versions: dict) -> dict:
    """Inverse of :func:`_plain_state` (re-quantizing the exact grid values is lossless)."""
    out = OrderedDict((k, _quantized(v)) for k, v in state.items())
    out._metadata = OrderedDict(versions)
    return out


def _quantized(v):
    if isinstance(v, (tuple, list)):
        return type(v)(_quantized(x) for x in v)
    if not (isinstance(v, dict) and "qint" in v):
        return v
    dtype, q, scale, zero = _QDTYPES[v["dtype"]], v["qint"], v["scale"], v["zero_point"]
    if "axis" not in v:
        real = (q.float() - zero) * scale
        return torch.quantize_per_tensor(real, float(scale), int(zero), dtype)
    shape = [-1 if i == v["axis"] else 1 for i in range(q.ndim)]
    real = (q.float() - zero.view(shape)) * scale.view(shape)
    return torch.quantize_per_channel(real, scale.double(), zero, v["axis"], dtype)


def save_compressed(model: nn.Module, path, *, metrics: dict | None = None) -> Path:
    """Save a pruned (or plain fp32) or int8 model as a checkpoint that ``load_model`` reads.

    The model needs ``.meta`` (as ``load_model`` gives it; the compress functions carry it
    over). ``metrics`` replaces the metrics recorded in it.
    """
    meta = _meta(model)
    if isinstance(model, QuantizedModel):
        return save_atomic(_int8_checkpoint(model, meta, metrics), path)
    return save_atomic(_pruned_checkpoint(model, meta, metrics), path)


def _build(ckpt: dict, widths: dict) -> nn.Module:
    model = create_model(ckpt["model"], ckpt["num_classes"], **ckpt["model_options"])
    return _with_widths(model, widths).eval()


def _load_pruned(ckpt: dict) -> nn.Module:
    model = _build(ckpt, ckpt.get("channels") or {})
    state = dict(ckpt["state_dict"])
    state.update({k: _unpack_sparse(v) for k, v in (ckpt.get("sparse") or {}).items()})
    model.load_state_dict(state)
    return model


def _load_int8(ckpt: dict) -> QuantizedModel:
    """Quantize the recorded architecture (any calibration does: the state replaces it)."""
    recipe = ckpt["recipe"]
    if recipe.get("backend") != BACKEND:
        raise ValueError(f"checkpoint: int8 backend {recipe.get('backend')!r} is not supported; "
                         f"supported: {BACKEND}")
    base = _build(ckpt, recipe.get("channels") or {})
    blank = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    q = quantize_int8(base, blank, ckpt["mean"], ckpt["std"])
    with _quiet_ao():
        q.qmodel.load_state_dict(_quantized_state(ckpt["state_dict"], ckpt["state_versions"]))
    q.recipe = dict(recipe)
    return q


register_kind("pruned", _load_pruned)
register_kind("int8", _load_int8)


def file_size_mb(path) -> float:
    return os.path.getsize(path) / MB


def zipped_size_mb(path) -> float:
    """Size after deflate (level 9): what an archive or a download would carry."""
    return len(zlib.compress(Path(path).read_bytes(), 9)) / MB


# ---------------------------------------------------------------------------
# ONNX


ONNX_META_KEY = "cnnlib"


def export_onnx(model: nn.Module, path, *, meta: dict | None = None) -> Path:
    """Export an fp32 model (dynamic batch) to ONNX, with its metadata embedded as JSON.

    ``meta`` (default ``model.meta``) lets ``load_onnx`` and the CLI use the file alone.
    """
    import onnx

    model = make_permanent(copy.deepcopy(model)).cpu().eval()
    meta = meta if meta is not None else getattr(model, "meta", {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, 32, 32)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(_json_meta(meta))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_meta(meta: dict) -> dict:
    return json.loads(json.dumps({k: meta[k] for k in ("classes", "mean", "std", "config",
                                                       "metrics") if k in meta},
                                 default=float))


class OnnxModel(nn.Module):
    """An onnxruntime session behind the ``nn.Module`` call, so ``evaluate`` and ``predict`` work.

    It uses as many threads as torch does, so timings compare like for like.
    """

    def __init__(self, path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        custom = self.session.get_modelmeta().custom_metadata_map
        self.meta = {**json.loads(custom.get(ONNX_META_KEY, "{}")), "kind": "onnx"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def load_onnx(path, threads: int | None = None) -> OnnxModel:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"onnx: {path} does not exist")
    return OnnxModel(path, threads).eval()


# ---------------------------------------------------------------------------
# Measuring


@torch.no_grad()
def time_per_call(model: nn.Module, batch_size: int, *, seconds: float = 1.0,
                  min_calls: int = 5, warmup: int = 2) -> float:
    """Median wall seconds of ``model(x)`` for a normalized batch of ``batch_size`` images."""
    x = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    for _ in range(warmup):
        model(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def benchmark(model: nn.Module, *, seconds: float = 1.0) -> dict:
    """CPU latency at batch 1 (ms) and throughput at batch 256 (images/s), with torch's threads."""
    return {
        "latency_ms_b1": 1e3 * time_per_call(model, 1, seconds=seconds, min_calls=20),
        "throughput_b256": 256 / time_per_call(model, 256, seconds=seconds, min_calls=3),
        "threads": torch.get_num_threads(),
    }


def time_models(models: dict[str, nn.Module], *, seconds: float = 1.0,
                rounds: int = 3) -> dict[str, dict]:
    """:func:`benchmark` of several models, in rounds that each visit every model.

    A burst of other work on the machine then spreads over all models instead of
    landing on one; per model the median over rounds is kept.
    """
    runs = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            runs[name].append(benchmark(model, seconds=seconds))
    return {name: {k: float(np.median([r[k] for r in rs])) if k != "threads" else rs[0][k]
                   for k in rs[0]} for name, rs in runs.items()}


# ---------------------------------------------------------------------------
# The study: every variant of one model, saved, reloaded, measured

# Per profile: fine-tuning steps and batch, calibration images, test images (0 = all),
# seconds per timing, QAT steps (0 = no QAT row).
SETTINGS = {
    "smoke": dict(steps=2, batch_size=32, calibration=64, test_subset=200, seconds=0.05,
                  qat_steps=0),
    "cpu": dict(steps=300, batch_size=128, calibration=2048, test_subset=0, seconds=1.0,
                qat_steps=0),
    "full": dict(steps=500, batch_size=256, calibration=4096, test_subset=0, seconds=1.0,
                 qat_steps=300),
}
AMOUNTS = (0.5, 0.8)
# Removing channels changes the function far more than zeroing small weights: a larger
# fine-tuning rate recovers more of it in the same steps (CIFAR-10 baseline, channels 50%,
# 300 steps: 71.5% at 0.1, 73.3% at 0.3, 74.0% at 1.0, from 77.6%).
CHANNELS_LR_SCALE = 0.3


def settings(profile: str) -> dict:
    if profile not in SETTINGS:
        raise ValueError(f"profile: {profile!r} is not allowed; allowed: {', '.join(SETTINGS)}")
    return dict(SETTINGS[profile])


def _splits(model: nn.Module, data: cdata.CifarData, test_subset: int):
    cfg = model.meta["config"]
    train, _ = cdata.train_split(data, val_size=cfg.get("val_size", 0),
                                 subset=cfg.get("train_subset", 0), seed=cfg.get("seed", 0))
    test = cdata.test_split(data)
    if test_subset:
        test = cdata.Split(test.images[:test_subset], test.labels[:test_subset])
    return train, test


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
                   qat_steps: int = 0, progress: bool = True) -> list[dict]:
    """Every variant of ``model`` (loaded with ``load_model``): build, save, reload, measure.

    Each variant is written to ``out_dir`` and measured as loaded back from there, so the
    rows describe the files: size (MB, and deflated), parameters, sparsity, test accuracy,
    latency at batch 1 and throughput at batch 256 (timed at the end, all variants in
    interleaved rounds: :func:`time_models`). Fine-tuning and calibration use the run's own
    training split.
    """
    from .checkpoint import load_model

    out_dir = Path(out_dir)
    mean, std = model.meta["mean"], model.meta["std"]
    train, test = _splits(model, data, test_subset)
    rows, loaded = [], {}
    for variant, method, compressed in _variants(
            model, train, mean, std, steps=steps, batch_size=batch_size,
            calibration=calibration, qat_steps=qat_steps, progress=progress):
        path = out_dir / f"{label}-{_slug(variant)}.{'onnx' if compressed is None else 'pt'}"
        if compressed is None:
            export_onnx(model, path)
            loaded[variant] = load_onnx(path)
            params, zeros = count_parameters(model), sparsity(model)
        else:
            _save_variant(compressed, path, fp32=method == "none")
            loaded[variant] = load_model(path)
            params, zeros = _params_and_sparsity(compressed)
        acc = evaluate(loaded[variant], test.images, test.labels, mean, std,
                       batch_size=500)["acc"]
        rows.append({"model": label, "arch": model.meta["config"]["model"], "variant": variant,
                     "method": method, "params": params, "sparsity": zeros,
                     "size_mb": file_size_mb(path), "zip_mb": zipped_size_mb(path),
                     "test_acc": acc, "path": str(path)})
        if progress:
            print(f"[{label}] {variant:<20} test acc {acc:.4f}  {rows[-1]['size_mb']:.3f} MB",
                  flush=True)
    timings = time_models(loaded, seconds=seconds)
    for row in rows:
        row.update(timings[row["variant"]])
        if progress:
            print(f"[{label}] {row['variant']:<20} {row['latency_ms_b1']:.2f} ms at batch 1, "
                  f"{row['throughput_b256']:.0f} images/s at batch 256", flush=True)
    return _relative(rows)


def _save_variant(model: nn.Module, path: Path, fp32: bool) -> None:
    if not fp32:
        save_compressed(model, path)
        return
    meta = _meta(model)  # the uncompressed model, in the trainer's own format
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


COLUMNS = ["model", "arch", "variant", "method", "params", "sparsity", "size_mb", "zip_mb",
           "latency_ms_b1", "throughput_b256", "test_acc", "acc_change_pp", "speedup_b1",
           "speedup_b256", "size_ratio", "threads", "path"]


def results_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS)


def plot_tradeoffs(df, path=None):
    """Accuracy against size on disk and against batch-1 latency, one marker series per model."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from .plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(11, 4.2))
    for ax, x, xlabel in ((axes[0, 0], "size_mb", "size on disk (MB, log)"),
                          (axes[0, 1], "latency_ms_b1", "CPU latency at batch 1 (ms, log)")):
        for label, part in df.groupby("model", sort=False):
            ax.scatter(part[x], 100 * part["test_acc"], label=label)
            for _, r in part.iterrows():
                ax.annotate(r["variant"], (r[x], 100 * r["test_acc"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    return save_figure(fig, path)
