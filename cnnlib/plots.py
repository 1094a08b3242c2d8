"""Figures of the study: training curves, confusion matrices, per-class accuracy, sweeps.

Every function builds a fresh ``matplotlib.figure.Figure`` (not registered with
pyplot, so nothing is shown twice in a notebook and no global state leaks),
returns it, and also writes it as a PNG when given ``path``. Inputs are plain
lists, dicts, tensors, arrays or DataFrames: the trainer's history rows and the
metrics of ``evaluate`` go in as they are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "image_grid",
    "new_figure",
    "plot_bars",
    "plot_confusion",
    "plot_history",
    "plot_lines",
    "plot_lr_find",
    "plot_per_class_accuracy",
    "plot_time_to_accuracy",
    "save_figure",
    "superclass_confusion",
    "superclass_order",
    "to_hwc",
]

DPI = 120
MANY_CLASSES = 20  # above this, class-level plots switch to their compact layout


def save_figure(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Write ``fig`` as a PNG at ``path`` (folders created) when a path is given; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4), **kwargs):
    """A pyplot-free Figure with constrained layout and its axes as a 2-D array."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


# -- training curves -----------------------------------------------------------------------------


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """Epochs and values of ``key`` over the rows that have it (val keys may be absent)."""
    pairs = [(r.get("epoch", i + 1), r[key]) for i, r in enumerate(rows) if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_history(histories: dict[str, list[dict]], path=None) -> Figure:
    """Loss and accuracy per epoch; one colour per run, train solid, validation dashed."""
    fig, axes = new_figure(1, 2, figsize=(11, 4))
    colors = _colors(len(histories))
    for (label, rows), color in zip(histories.items(), colors, strict=True):
        for ax, metric in zip(axes[0], ("loss", "acc"), strict=True):
            for split, style in (("train", "-"), ("val", "--")):
                epochs, values = _series(rows, f"{split}_{metric}")
                if values:
                    ax.plot(epochs, values, style, color=color, label=f"{label} ({split})")
    for ax, name in zip(axes[0], ("loss", "accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if histories:
        axes[0, 1].legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# -- confusion matrices --------------------------------------------------------------------------


def superclass_order(fine_to_coarse) -> tuple[list[int], list[int]]:
    """Fine classes sorted by superclass (stable), and where each new superclass starts.

    ``bounds`` are the positions in ``order`` between two groups (0 and the end
    excluded), ready for ``plot_confusion(group_bounds=...)``. Fine classes of
    unknown superclass (-1) go last, as one group.
    """
    coarse = _numpy(fine_to_coarse).astype(np.int64)
    key = np.where(coarse < 0, coarse.max(initial=0) + 1, coarse)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    bounds = (np.flatnonzero(np.diff(ordered)) + 1).tolist()
    return order.tolist(), bounds


def superclass_confusion(confusion, fine_to_coarse, n_coarse: int = 20) -> torch.Tensor:
    """Fine confusion counts [C, C] summed into superclass counts [n_coarse, n_coarse].

    Counts of a fine class with unknown superclass (-1) are left out.
    """
    conf = torch.as_tensor(_numpy(confusion))
    coarse = torch.as_tensor(_numpy(fine_to_coarse)).long()
    if coarse.shape[0] != conf.shape[0]:
        raise ValueError(
            f"fine_to_coarse: has {coarse.shape[0]} entries, the confusion matrix {conf.shape[0]}"
        )
    if coarse.max() >= n_coarse:
        raise ValueError(f"fine_to_coarse: superclass {int(coarse.max())} >= n_coarse={n_coarse}")
    known = coarse >= 0
    onehot = torch.zeros(conf.shape[0], n_coarse, dtype=conf.dtype)
    onehot[known.nonzero().squeeze(1), coarse[known]] = 1
    return onehot.T @ conf @ onehot


def plot_confusion(
    confusion,
    classes: Sequence[str],
    path=None,
    normalize: bool = True,
    order: Sequence[int] | None = None,
    title: str | None = None,
    group_bounds: Sequence[int] | None = None,
) -> Figure:
    """Heatmap of a confusion matrix (rows: true class, columns: predicted).

    ``normalize`` divides each row by its count, so cells are shares of the true
    class. Up to 20 classes the cells are annotated; beyond that tick labels get
    small and ``order`` (e.g. from ``superclass_order``) plus ``group_bounds``
    (thin lines between groups) keep 100 classes readable.
    """
    conf = _numpy(confusion).astype(np.float64)
    names = list(classes)
    if order is not None:
        order = list(order)
        conf = conf[np.ix_(order, order)]
        names = [names[i] for i in order]
    if normalize:
        conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(names)
    size = 6.5 if n <= MANY_CLASSES else 14
    fig, axes = new_figure(figsize=(size + 1, size))
    ax = axes[0, 0]
    im = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of true class" if normalize else "count")
    fontsize = 9 if n <= MANY_CLASSES else 4
    ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MANY_CLASSES:
        _annotate(ax, conf, normalize)
    for b in group_bounds or ():
        ax.axhline(b - 0.5, color="0.4", linewidth=0.5)
        ax.axvline(b - 0.5, color="0.4", linewidth=0.5)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def _annotate(ax, conf: np.ndarray, normalize: bool) -> None:
    top = conf.max() if conf.size else 0
    for (i, j), v in np.ndenumerate(conf):
        text = f"{v:.2f}" if normalize else f"{int(v)}"
        color = "white" if top and v > 0.6 * top else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)


# -- per-class accuracy --------------------------------------------------------------------------


def plot_per_class_accuracy(acc, classes: Sequence[str], path=None, title: str | None = None) -> Figure:
    """Accuracy of each class; ``acc`` is one vector or ``{label: vector}`` to compare runs.

    Up to 20 classes: grouped vertical bars. More: classes sorted by the first
    series' accuracy on a vertical axis, horizontal bars for one series and
    markers for several, so 100 class names stay legible.
    """
    series = acc if isinstance(acc, dict) else {"accuracy": acc}
    series = {k: _numpy(v).astype(np.float64) for k, v in series.items()}
    names = list(classes)
    for label, values in series.items():
        if len(values) != len(names):
            raise ValueError(f"per-class accuracy {label!r}: {len(values)} values for {len(names)} classes")
    if len(names) <= MANY_CLASSES:
        fig = _grouped_bars(series, names)
    else:
        fig = _sorted_strip(series, names)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _grouped_bars(series: dict[str, np.ndarray], names: list[str]) -> Figure:
    fig, axes = new_figure(figsize=(max(6, 0.6 * len(names) * max(1, len(series) ** 0.5)), 4))
    ax = axes[0, 0]
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return fig


def _sorted_strip(series: dict[str, np.ndarray], names: list[str]) -> Figure:
    first = next(iter(series.values()))
    order = np.argsort(first, kind="stable")
    fig, axes = new_figure(figsize=(6, max(6, 0.14 * len(names))))
    ax = axes[0, 0]
    y = np.arange(len(names))
    if len(series) == 1:
        ax.barh(y, first[order], height=0.8)
    else:
        for label, values in series.items():
            ax.plot(values[order], y, "o", markersize=3, label=label)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, [names[i] for i in order], fontsize=5)
    ax.set_ylim(-1, len(names))
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("accuracy")
    ax.grid(axis="x", alpha=0.3)
    return fig


# -- results tables: bars and sweeps -------------------------------------------------------------


def plot_bars(df, x: str, y: str, hue: str | None = None, path=None, ylabel: str | None = None,
              title: str | None = None) -> Figure:
    """Mean of ``y`` per ``x`` (and ``hue``) over the rows (seeds), std error bars, values on bars."""
    import seaborn as sns

    n_bars = df[x].nunique() * (df[hue].nunique() if hue else 1)
    fig, axes = new_figure(figsize=(max(5, 0.5 * n_bars + 2), 4))
    ax = axes[0, 0]
    sns.barplot(data=df, x=x, y=y, hue=hue, errorbar="sd", capsize=0.15, ax=ax,
                err_kws={"linewidth": 1})
    for container in ax.containers:
        ax.bar_label(container, fmt="%.3g", fontsize=7, padding=2, label_type="edge")
    if max((len(str(v)) for v in df[x].unique()), default=0) > 8:
        ax.tick_params(axis="x", labelrotation=30)
    _labels(ax, ylabel or y, title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_lines(df, x: str, y: str, hue: str | None = None, path=None, ylabel: str | None = None,
               title: str | None = None, logx: bool = False) -> Figure:
    """Mean of ``y`` against ``x`` per ``hue`` with a +-std band over the rows (seeds)."""
    import seaborn as sns

    fig, axes = new_figure(figsize=(6, 4))
    ax = axes[0, 0]
    sns.lineplot(data=df, x=x, y=y, hue=hue, errorbar="sd", marker="o", ax=ax)
    if logx:
        ax.set_xscale("log")
    _labels(ax, ylabel or y, title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _labels(ax, ylabel: str, title: str | None) -> None:
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


# -- learning-rate range test --------------------------------------------------------------------


def plot_lr_find(result: dict, path=None) -> Figure:
    """Smoothed loss against lr (log scale) from ``train.lr_find``, the suggestion marked."""
    lrs = np.asarray(result["lrs"], dtype=np.float64)
    losses = np.asarray(result["losses"], dtype=np.float64)
    fig, axes = new_figure(figsize=(6, 4))
    ax = axes[0, 0]
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    suggested = result.get("suggested_lr")
    if suggested is not None and len(lrs):
        i = int(np.argmin(np.abs(np.log(lrs) - math.log(suggested))))
        ax.plot([lrs[i]], [losses[i]], "o", color="red", label=f"suggested lr {suggested:.2g}")
        ax.axvline(suggested, color="red", linestyle=":", linewidth=1)
        ax.legend(fontsize=8)
    finite = losses[np.isfinite(losses)]
    if finite.size:
        ax.set_ylim(*_lr_find_ylim(finite))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def _lr_find_ylim(losses: np.ndarray) -> tuple[float, float]:
    """The last steps diverge: cap the axis a little above the starting loss."""
    low, start = float(losses.min()), float(losses[0])
    margin = max(0.05 * abs(low), 1e-3)
    high = min(float(losses.max()), start + 2 * (start - low))
    return low - margin, max(high, low) + margin


# -- images --------------------------------------------------------------------------------------


def to_hwc(image) -> np.ndarray:
    """A uint8 CHW tensor/array as an HWC array for ``imshow``."""
    return np.ascontiguousarray(_numpy(image).transpose(1, 2, 0))


def image_grid(images, titles: Sequence[str] | None = None, ncols: int = 8, path=None) -> Figure:
    """uint8 images ``[N, 3, H, W]`` in a grid, with optional per-image titles."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = new_figure(nrows, ncols, figsize=(1.3 * ncols, 1.45 * nrows if titles else 1.3 * nrows))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_hwc(images[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=6)
    return save_figure(fig, path)


def plot_time_to_accuracy(points, path=None, targets=(0.90, 0.94), title: str | None = None) -> Figure:
    """Mean test accuracy against mean wall-clock minutes per (recipe, budget), with +-std
    error bars over seeds in both directions, and dashed lines at the target accuracies.

    ``points``: a DataFrame with columns recipe, minutes_mean, minutes_std, test_acc_mean,
    test_acc_std, epochs (as written by benchmarks/time_to_accuracy.py).
    """
    from matplotlib.ticker import PercentFormatter

    fig, axes = new_figure(figsize=(7, 4.2))
    ax = axes[0, 0]
    for color, (name, part) in zip(_colors(points["recipe"].nunique()),
                                   points.groupby("recipe", sort=False), strict=True):
        part = part.sort_values("minutes_mean")
        ax.errorbar(part["minutes_mean"], part["test_acc_mean"] * 100,
                    xerr=part["minutes_std"].fillna(0), yerr=part["test_acc_std"].fillna(0) * 100,
                    marker="o", capsize=3, color=color, label=name)
        for _, r in part.iterrows():
            ax.annotate(f"{r['epochs']:g} ep", (r["minutes_mean"], r["test_acc_mean"] * 100),
                        textcoords="offset points", xytext=(5, -11), fontsize=8, color=color)
    for t in targets:
        ax.axhline(t * 100, ls="--", lw=0.8, color="0.5")
        ax.annotate(f"{t:.0%}", (1.0, t * 100), xycoords=("axes fraction", "data"),
                    xytext=(3, -3), textcoords="offset points", fontsize=8, color="0.4")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_xlabel("wall-clock minutes per run (training + evaluation)")
    _labels(ax, "CIFAR-10 test accuracy", title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.06, 1.0), frameon=False)
    return save_figure(fig, path)

