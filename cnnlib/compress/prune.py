"""Pruning: unstructured (global magnitude) and structured (whole conv channels).

- :func:`magnitude_prune`: global L1 magnitude pruning of the conv and linear weights with
  ``torch.nn.utils.prune``; :func:`make_permanent` removes the masks.
- :func:`prune_channels`: removes whole output channels of convs (and the matching
  BatchNorm entries and input channels of the next layer), so the network really gets
  smaller and faster. Supported: ``baseline`` (every conv of the plain network; only the
  inner conv of each residual pair) and ``fastnet`` (every conv but the whitening layer).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from cnnlib.data.augment import normalize
from cnnlib.models.baseline import BaselineCNN, ConvBNReLU, ResidualPair
from cnnlib.models.fastnet import FastNet
from cnnlib.training.evaluate import model_device

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
    x = normalize(images, mean, std).to(model_device(pruned))
    scores = _channel_scores(pruned, units, x, batch_size)
    keep_frac = math.sqrt(1 - amount)
    for unit, score in zip(units, scores, strict=True):
        n = max(1, round(unit.conv.out_channels * keep_frac))
        keep = score.topk(n).indices.sort().values  # original order: the sliced layout stays valid
        _shrink(unit, keep.to(unit.conv.weight.device))
    return pruned


def with_widths(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """Give a freshly built model the channel widths recorded in a checkpoint."""
    for unit in _units(model) if widths else []:
        n = widths.get(unit.name, unit.conv.out_channels)
        if n != unit.conv.out_channels:
            _shrink(unit, torch.arange(n))
    return model


