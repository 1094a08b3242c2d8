"""Looking inside a trained CNN: feature maps, first-layer filters, Grad-CAM, saliency, mistakes.

Attributions use captum. They need gradients with respect to the input or to a
layer's output only, so frozen parameters (fastnet's whitening conv) and
channels_last models work as they are. While attributing, the model is put in
eval mode and every module with an ``inplace`` flag (``nn.ReLU(inplace=True)``)
runs out of place, because captum's hooks must see a layer's output unchanged;
both are restored afterwards. In-place ops called functionally inside a
``forward`` cannot be switched off this way (the study's models have none).

Images follow the project convention: uint8 ``[N, 3, H, W]``; the model's
input is the normalized float batch (``(x / 255 - mean) / std``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnlib.data.augment import normalize
from cnnlib.training.evaluate import model_device
from cnnlib.viz._figure import describe, new_figure, pretty, save_figure, to_hwc

__all__ = [
    "conv_layers",
    "feature_maps",
    "gradcam",
    "layer_labels",
    "misclassified",
    "mistake_titles",
    "plot_attributions",
    "plot_first_layer_filters",
    "saliency",
    "save_feature_maps",
]


# -- layers and feature maps ---------------------------------------------------------------------


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's ``Conv2d`` layers as ``(name, module)``, in registration order.

    That is forward order for the study's models, except that a block's 1x1
    projection shortcut comes after the block's own convs.
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _resolve(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer:
                return name, m
        raise ValueError("layer: the module given is not part of the model")
    try:
        return layer, model.get_submodule(layer)
    except AttributeError:
        names = ", ".join(n for n, _ in conv_layers(model))
        raise ValueError(f"layer: {layer!r} is not a module of the model; convs: {names}") from None


def _resolve_all(model: nn.Module, layers) -> list[tuple[str, nn.Module]]:
    if layers is None:
        return conv_layers(model)
    return [_resolve(model, layer) for layer in layers]


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor, layers=None) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` (names or modules; default: every conv) for a normalized batch.

    The maps are the raw conv outputs, before normalization and nonlinearity,
    as float32 CPU tensors ``[B, C, H, W]``. The model runs in eval mode; hooks
    and the train/eval mode are restored even if the forward pass fails.
    """
    pairs = _resolve_all(model, layers)
    maps: dict[str, torch.Tensor] = {}
    handles = []
    was_training = model.training
    try:
        for name, module in pairs:
            handles.append(module.register_forward_hook(_keeper(maps, name)))
        model.eval()
        model(x.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return maps


def _keeper(maps: dict, name: str):
    def hook(_module, _inputs, output):
        maps[name] = output.detach().float().cpu().contiguous()

    return hook


def _mosaic(tiles: np.ndarray, ncols: int | None = None, gap: float = np.nan) -> np.ndarray:
    """Tiles ``[n, h, w(, 3)]`` in one array with 1-pixel gaps: one ``imshow`` instead of n axes."""
    n, h, w = tiles.shape[:3]
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    out = np.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1, *tiles.shape[3:]), gap)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return out


def _unit_range(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Min-max scale to [0, 1] over ``axes`` (constant slices become 0)."""
    low = a.min(axis=axes, keepdims=True)
    span = a.max(axis=axes, keepdims=True) - low
    return (a - low) / np.where(span > 0, span, 1)


def layer_labels(model: nn.Module, names=None) -> dict[str, str]:
    """Names a reader understands for conv layers: ``"conv 3 of 8"`` (``"..., 1x1 shortcut"``).

    Convs count in registration order (``conv_layers``); ``names`` (default:
    every conv) may include other modules, which keep their module name.
    """
    convs = conv_layers(model)
    index = {name: i for i, (name, _) in enumerate(convs, 1)}
    labels = {}
    for name in names if names is not None else index:
        if name not in index:
            labels[name] = f"module {name}"
            continue
        conv = model.get_submodule(name)
        kernel = "x".join(str(k) for k in conv.kernel_size)
        shortcut = ", 1x1 shortcut" if kernel == "1x1" and index[name] > 1 else ""
        labels[name] = f"conv {index[name]} of {len(convs)}{shortcut}"
    return labels


def _feature_map_figure(image, maps: torch.Tensor, title: str) -> Figure:
    fig, axes = new_figure(1, 2, figsize=(9, 4.5), width_ratios=(1, 2))
    axes[0, 0].imshow(to_hwc(image), interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=9)
    tiles = _unit_range(maps.numpy(), (1, 2))
    im = axes[0, 1].imshow(_mosaic(tiles), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[0, 1].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    bar = fig.colorbar(im, ax=axes[0, 1], shrink=0.7, ticks=[0, 1],
                       label="activation, each map scaled to its own range")
    bar.ax.set_yticklabels(["lowest", "highest"])
    return fig


def _overview_figure(image, maps: dict[str, torch.Tensor], i: int, caption: str,
                     labels: dict[str, str]) -> Figure:
    """The input and, per layer, the mean absolute activation over channels."""
    n = len(maps) + 1
    nrows = math.ceil(n / 7)
    ncols = math.ceil(n / nrows)
    fig, axes = new_figure(nrows, ncols, figsize=(1.9 * ncols + 1, 2.1 * nrows + 0.4))
    flat = axes.flat
    flat[0].imshow(to_hwc(image), interpolation="nearest")
    flat[0].set_title(caption, fontsize=8)
    im = None
    for ax, (name, act) in zip(flat[1:], maps.items(), strict=False):
        c, h, w = act.shape[1:]
        mean = act[i].abs().mean(0).numpy()
        im = ax.imshow(mean / max(float(mean.max()), 1e-12), cmap="viridis", vmin=0, vmax=1,
                       interpolation="nearest")
        ax.set_title(f"{labels[name]}\n{c} maps, {h}x{w}", fontsize=7)
    for ax in flat:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, ticks=[0, 0.5, 1],
                     label="mean |activation| over the maps, / layer maximum")
    fig.suptitle("Where each conv layer responds, first layer to last", fontsize=9)
    return fig


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name) or "model"


def _caption(i: int, classes, labels) -> str:
    if classes is None or labels is None:
        return f"sample {i}"
    return f"sample {i}: {classes[int(labels[i])]}"


def save_feature_maps(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    out_dir: str | os.PathLike,
    max_channels: int = 16,
    classes: Sequence[str] | None = None,
    labels=None,
    layers=None,
) -> list[Path]:
    """Write, per sample image, one PNG per conv layer and an overview; return the paths.

    ``out_dir/sample{i}_{layer}.png`` shows the input next to the first
    ``max_channels`` maps of the layer (each min-max scaled), and
    ``out_dir/sample{i}_overview.png`` every layer's mean absolute activation.
    """
    out_dir = Path(out_dir)
    maps = feature_maps(model, normalize(images.to(model_device(model)), mean, std), layers)
    names = layer_labels(model, list(maps))
    paths = []
    for i in range(len(images)):
        caption = _caption(i, classes, labels)
        for name, act in maps.items():
            c, h, w = act.shape[1:]
            shown = f"its {c} maps" if c <= max_channels else f"first {max_channels} of its {c} maps"
            title = f"{caption}: {names[name]}, {shown} ({h}x{w})"
            fig = _feature_map_figure(images[i], act[i, :max_channels], title)
            describe(fig, f"Feature maps of {caption}: {names[name]} (module {name}), "
                          f"{min(c, max_channels)} of {c} maps at {h}x{w} pixels, next to the input.")
            path = out_dir / f"sample{i}_{_safe_name(name)}.png"
            save_figure(fig, path)
            paths.append(path)
        fig = _overview_figure(images[i], maps, i, caption, names)
        describe(fig, f"Mean absolute activation of each of {len(maps)} conv layers for {caption}, "
                      f"from {list(maps.values())[0].shape[-1]} pixels wide in the first layer "
                      f"to {list(maps.values())[-1].shape[-1]} in the last.")
        overview = out_dir / f"sample{i}_overview.png"
        save_figure(fig, overview)
        paths.append(overview)
    return paths


def plot_first_layer_filters(model: nn.Module, path=None, title: str | None = None,
                             alt: str | None = None) -> Figure:
    """The filters of the first conv that reads RGB, each min-max scaled to an RGB patch."""
    first = next(((n, m) for n, m in conv_layers(model) if m.in_channels == 3), None)
    if first is None:
        raise ValueError("first-layer filters: the model has no Conv2d with 3 input channels")
    name, conv = first
    w = conv.weight.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # [out, k, k, 3]
    tiles = _unit_range(w, (1, 2, 3))
    k = "x".join(str(s) for s in conv.kernel_size)
    fig, axes = new_figure(figsize=(5, 5.3))
    axes[0, 0].imshow(_mosaic(tiles, gap=1.0), interpolation="nearest")
    head = f"{title}\n" if title else ""
    axes[0, 0].set_title(f"{head}first conv layer: {len(tiles)} filters of {k} pixels\n"
                         "(RGB weights, each filter scaled to its own range)", fontsize=9)
    axes[0, 0].axis("off")
    describe(fig, alt or f"{head}The {len(tiles)} filters of the first conv layer (module {name}), "
                         f"{k} pixels each, shown as colour patches: the colour and edge patterns "
                         f"the network looks for first.")
    return save_figure(fig, path)


# -- attributions --------------------------------------------------------------------------------


@contextlib.contextmanager
def _attribution_mode(model: nn.Module):
    """Eval mode, out-of-place activations and grad enabled; all restored on exit."""
    was_training = model.training
    inplace = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    try:
        model.eval()
        for m in inplace:
            m.inplace = False
        with torch.enable_grad():
            yield
    finally:
        for m in inplace:
            m.inplace = True
        model.train(was_training)


def _target(target, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.long, device=device)
    return t.expand(n) if t.dim() == 0 else t


def _per_image_unit(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative maps [B, H, W] divided by their per-image maximum (all-zero stays zero)."""
    maps = torch.nan_to_num(maps.detach().float()).clamp_min(0)
    top = maps.flatten(1).amax(1).view(-1, 1, 1)
    return (maps / torch.where(top > 0, top, torch.ones_like(top))).cpu()


def default_gradcam_layer(model: nn.Module) -> str:
    """Name of the last conv with a spatial kernel (1x1 shortcut projections are skipped)."""
    convs = conv_layers(model)
    spatial = [n for n, m in convs if m.kernel_size != (1, 1)]
    if not convs:
        raise ValueError("gradcam: the model has no Conv2d layer; pass `layer`")
    return (spatial or [n for n, _ in convs])[-1]


def gradcam(model: nn.Module, x: torch.Tensor, target, layer=None) -> torch.Tensor:
    """Grad-CAM maps ``[B, H, W]`` in [0, 1] for the classes ``target`` (int or ``[B]``).

    ``layer`` (name or module) defaults to the last spatial conv (its raw output,
    see :func:`default_gradcam_layer`); ``"features"`` gives the block output
    every model exposes. The coarse map is ReLU'd, upsampled bilinearly to the
    input size and scaled per image so its maximum is 1.
    """
    from captum.attr import LayerAttribution, LayerGradCam  # lazy: ~0.3 s, for attributions only

    _, module = _resolve(model, layer if layer is not None else default_gradcam_layer(model))
    x = x.to(model_device(model))
    with _attribution_mode(model):
        attr = LayerGradCam(model, module).attribute(
            x, target=_target(target, len(x), x.device), relu_attributions=True
        )
        attr = LayerAttribution.interpolate(attr.float(), tuple(x.shape[-2:]), "bilinear")
    return _per_image_unit(attr.sum(1)).contiguous()


def saliency(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Vanilla gradient saliency ``[B, H, W]`` in [0, 1]: max over channels of |d logit / d x|."""
    from captum.attr import Saliency  # lazy: ~0.3 s, for attributions only

    x = x.to(model_device(model)).detach().requires_grad_(True)
    with _attribution_mode(model):
        grads = Saliency(model).attribute(x, target=_target(target, len(x), x.device), abs=True)
    return _per_image_unit(grads.amax(1)).contiguous()


def plot_attributions(images: torch.Tensor, maps: dict[str, torch.Tensor], titles=None,
                      path=None, title: str | None = None, alt: str | None = None) -> Figure:
    """One row per image: the input, then each map (``{name: [B, H, W]}``) over it in jet.

    The method names head the columns and one colour bar explains the scale.
    """
    n, ncols = len(images), 1 + len(maps)
    fig, axes = new_figure(n, ncols, figsize=(1.9 * ncols + 0.8, 1.9 * n + 0.5))
    overlay = None
    for i in range(n):
        image = to_hwc(images[i])
        axes[i, 0].imshow(image, interpolation="nearest")
        axes[i, 0].set_title(titles[i] if titles is not None else "input", fontsize=8)
        for ax, (name, m) in zip(axes[i, 1:], maps.items(), strict=True):
            ax.imshow(image, interpolation="nearest")
            overlay = ax.imshow(m[i].detach().float().cpu().numpy(), cmap="jet", alpha=0.5,
                                vmin=0, vmax=1, interpolation="bilinear")
            if i == 0:
                ax.set_title(name, fontsize=8, fontweight="bold")
    for ax in axes.flat:
        ax.axis("off")
    if overlay is not None:
        bar = fig.colorbar(overlay, ax=axes, shrink=0.6, ticks=[0, 0.5, 1],
                           label="attribution, share of the image's maximum")
        bar.solids.set_alpha(1)
    if title:
        fig.suptitle(title)
    describe(fig, alt or f"{title + '. ' if title else ''}{n} test images "
                         f"({', '.join(map(str, titles)) if titles is not None else 'inputs'}), each "
                         f"followed by {', '.join(maps)} as heat maps over the image: red marks the "
                         f"pixels that raised the class score most, blue the least.")
    return save_figure(fig, path)


# -- mistakes ------------------------------------------------------------------------------------


def _confidence(preds: torch.Tensor, probs) -> torch.Tensor:
    """Probability of the predicted class; ``probs`` is ``[N, C]`` or already ``[N]``."""
    probs = torch.as_tensor(probs).detach().cpu().double()
    if probs.dim() == 2:
        return probs.gather(1, preds.view(-1, 1)).squeeze(1)
    return probs


def misclassified(preds, labels, probs, k: int = 16) -> list[int]:
    """Indices of the ``k`` most confident wrong predictions, most confident first."""
    preds = torch.as_tensor(preds).detach().cpu().long()
    labels = torch.as_tensor(labels).detach().cpu().long()
    wrong = (preds != labels).nonzero().squeeze(1)
    confidence = _confidence(preds, probs)[wrong]
    order = torch.sort(confidence, descending=True, stable=True).indices[:k]
    return wrong[order].tolist()


def mistake_titles(indices, preds, labels, probs, classes: Sequence[str]) -> list[str]:
    """``"true ->\npredicted (p)"`` for each index, as two-line titles for ``plots.image_grid``."""
    preds = torch.as_tensor(preds).detach().cpu().long()
    labels = torch.as_tensor(labels).detach().cpu().long()
    confidence = _confidence(preds, probs)
    return [f"{pretty(classes[int(labels[i])])} ->\n{pretty(classes[int(preds[i])])} "
            f"({float(confidence[i]):.2f})" for i in indices]
