"""Class-level figures: confusion matrices (CIFAR-100 grouped by superclass) and per-class accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from cnnlib.viz._figure import (
    as_numpy,
    describe,
    legend_outside,
    listing,
    new_figure,
    percent_axis,
    pretty,
    save_figure,
)

__all__ = ["plot_confusion", "plot_per_class_accuracy", "superclass_confusion", "superclass_order"]

MANY_CLASSES = 20  # above this, class-level plots switch to their compact layout


# -- confusion matrices --------------------------------------------------------------------------


def superclass_order(fine_to_coarse) -> tuple[list[int], list[int]]:
    """Fine classes sorted by superclass (stable), and where each new superclass starts.

    ``bounds`` are the positions in ``order`` between two groups (0 and the end
    excluded), ready for ``plot_confusion(group_bounds=...)``. Fine classes of
    unknown superclass (-1) go last, as one group.
    """
    coarse = as_numpy(fine_to_coarse).astype(np.int64)
    key = np.where(coarse < 0, coarse.max(initial=0) + 1, coarse)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    bounds = (np.flatnonzero(np.diff(ordered)) + 1).tolist()
    return order.tolist(), bounds


def superclass_confusion(confusion, fine_to_coarse, n_coarse: int = 20) -> torch.Tensor:
    """Fine confusion counts [C, C] summed into superclass counts [n_coarse, n_coarse].

    Counts of a fine class with unknown superclass (-1) are left out.
    """
    conf = torch.as_tensor(as_numpy(confusion))
    coarse = torch.as_tensor(as_numpy(fine_to_coarse)).long()
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
    groups: Sequence[str] | None = None,
    alt: str | None = None,
) -> Figure:
    """Heatmap of a confusion matrix (rows: true class, columns: predicted).

    ``normalize`` divides each row by its count, so cells are shares of the true
    class, coloured on a log scale from one image of the class to all of them:
    errors of 1-10% show next to a diagonal of 60-90%; empty cells stay white.
    Up to 20 classes the cells carry their percentage. With more classes, give
    ``order`` and ``group_bounds`` (from ``superclass_order``) and ``groups``, one
    name per group: the axes then name the groups (CIFAR-100's 20 superclasses)
    with lines between them, instead of 100 class names too small to read.
    """
    conf = as_numpy(confusion).astype(np.float64)
    names = [pretty(c) for c in classes]
    if order is not None:
        order = list(order)
        conf = conf[np.ix_(order, order)]
        names = [names[i] for i in order]
    totals = conf.sum(1, keepdims=True)
    n = len(names)
    if groups is not None and len(groups) != len(group_bounds or ()) + 1:
        raise ValueError(f"groups: {len(groups)} names for {len(group_bounds or ()) + 1} groups")
    size = 6.5 if n <= 10 else 8.5 if (n <= MANY_CLASSES or groups is not None) else 14
    fig, axes = new_figure(figsize=(size + 1, size))
    ax = axes[0, 0]
    if normalize:
        conf = conf / np.maximum(totals, 1)
        # Blues without its white end, so that a 1-image cell stands out from an empty one
        cmap = ListedColormap(matplotlib.colormaps["Blues"](np.linspace(0.12, 1, 256)), "Blues")
        cmap = cmap.with_extremes(bad="white")
        floor = min(0.1, max(1e-4, 1 / max(float(totals.max(initial=1)), 1)))
        norm = LogNorm(vmin=floor, vmax=1, clip=True)
        im = ax.imshow(np.ma.masked_equal(conf, 0), cmap=cmap, norm=norm)
        bar = fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class (log scale)")
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        im = ax.imshow(conf, cmap="Blues")
        fig.colorbar(im, ax=ax, shrink=0.8, label="count")
    if groups is not None:
        edges = [0, *group_bounds, n]
        centres = [(a + b - 1) / 2 for a, b in zip(edges, edges[1:], strict=False)]
        labels = [pretty(g) for g in groups]
        ax.set_xticks(centres, labels, rotation=90, fontsize=8)
        ax.set_yticks(centres, labels, fontsize=8)
        ax.tick_params(length=0)
    else:
        fontsize = 9 if n <= MANY_CLASSES else 4
        ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set_xlabel("predicted" + (" (grouped by superclass)" if groups is not None else ""))
    ax.set_ylabel("true" + (" (grouped by superclass)" if groups is not None else ""))
    if n <= MANY_CLASSES:
        _annotate(ax, conf, normalize, im.norm)
    for b in group_bounds or ():
        ax.axhline(b - 0.5, color="0.4", linewidth=0.5)
        ax.axvline(b - 0.5, color="0.4", linewidth=0.5)
    if title:
        ax.set_title(title)
    describe(fig, alt or _confusion_alt(conf, names, normalize, title))
    return save_figure(fig, path)


def _annotate(ax, conf: np.ndarray, normalize: bool, norm) -> None:
    """Percent (or count) in each cell; shares that round to 0% stay blank."""
    for (i, j), v in np.ndenumerate(conf):
        if normalize and round(100 * v) == 0:
            continue
        text = f"{100 * v:.0f}" if normalize else f"{int(v)}"
        color = "white" if norm(v) > 0.6 else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)


def _confusion_alt(conf: np.ndarray, names: list[str], normalize: bool, title: str | None) -> str:
    off = conf.copy()
    np.fill_diagonal(off, 0)
    top = np.argsort(off, axis=None)[::-1][:3]
    unit = (lambda v: f"{100 * v:.0f}% of its images") if normalize else (lambda v: f"{int(v)} images")
    pairs = "; ".join(f"{names[i]} predicted as {names[j]} ({unit(off[i, j])})"
                      for i, j in zip(*np.unravel_index(top, off.shape), strict=True) if off[i, j] > 0)
    head = f"{title}. " if title else ""
    return (f"{head}Confusion matrix of {len(names)} classes, true class down, predicted class "
            f"across; the diagonal holds the correct predictions. Largest errors: {pairs or 'none'}.")


# -- per-class accuracy --------------------------------------------------------------------------


def plot_per_class_accuracy(acc, classes: Sequence[str], path=None, title: str | None = None,
                            alt: str | None = None) -> Figure:
    """Accuracy of each class; ``acc`` is one vector or ``{label: vector}`` to compare runs.

    Up to 20 classes: grouped vertical bars. More: classes sorted by the first
    series' accuracy on a vertical axis, horizontal bars for one series and
    markers for several, so 100 class names stay legible.
    """
    series = acc if isinstance(acc, dict) else {"accuracy": acc}
    series = {k: as_numpy(v).astype(np.float64) for k, v in series.items()}
    names = [pretty(c) for c in classes]
    for label, values in series.items():
        if len(values) != len(names):
            raise ValueError(f"per-class accuracy {label!r}: {len(values)} values for {len(names)} classes")
    if len(names) <= MANY_CLASSES:
        fig = _grouped_bars(series, names)
    else:
        fig = _sorted_strip(series, names)
    if title:
        fig.suptitle(title)
    first_label, first = next(iter(series.items()))
    lo, hi = int(np.argmin(first)), int(np.argmax(first))
    describe(fig, alt or f"{title + '. ' if title else ''}Test accuracy of each of {len(names)} "
                         f"classes for {listing(series)}. {first_label}: lowest {names[lo]} "
                         f"({100 * first[lo]:.0f}%), highest {names[hi]} ({100 * first[hi]:.0f}%).")
    return save_figure(fig, path)


def _grouped_bars(series: dict[str, np.ndarray], names: list[str]) -> Figure:
    fig, axes = new_figure(figsize=(max(6, 0.6 * len(names) * max(1, len(series) ** 0.5)), 4))
    ax = axes[0, 0]
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    percent_axis(ax.yaxis)
    ax.set_ylabel("test accuracy")
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        legend_outside(ax)
    return fig


def _sorted_strip(series: dict[str, np.ndarray], names: list[str]) -> Figure:
    first = next(iter(series.values()))
    order = np.argsort(first, kind="stable")
    fig, axes = new_figure(figsize=(7, max(6, 0.15 * len(names))))
    ax = axes[0, 0]
    y = np.arange(len(names))
    if len(series) == 1:
        ax.barh(y, first[order], height=0.8)
    else:
        for label, values in series.items():
            ax.plot(values[order], y, "o", markersize=3.5, label=label)
        legend_outside(ax)
    ax.set_yticks(y, [names[i] for i in order], fontsize=6.5)
    ax.set_ylim(-1, len(names))
    ax.set_xlim(0, 1)
    percent_axis(ax.xaxis)
    ax.xaxis.set_tick_params(labeltop=True, top=True)
    ax.set_xlabel("test accuracy")
    ax.grid(axis="x", alpha=0.3)
    return fig
