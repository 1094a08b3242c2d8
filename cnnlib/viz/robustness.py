"""Figures of robustness and calibration: one image under every corruption and severity, clean
accuracy against corruption accuracy and calibration error, reliability diagrams, accuracy per
corruption family."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from cnnlib.data.corruptions import GROUPS, NOT_IMPLEMENTED, SEVERITIES, corrupt
from cnnlib.viz._figure import (
    as_numpy,
    describe,
    legend_outside,
    listing,
    new_figure,
    palette,
    percent_axis,
    pretty,
    save_figure,
    to_hwc,
)

__all__ = ["clean_against", "corruption_families", "corruption_grid", "reliability_diagram"]


def corruption_grid(image, seed: int = 0, path=None, title: str | None = None,
                    alt: str | None = None) -> Figure:
    """One uint8 image (``[3, 32, 32]`` or ``[1, 3, 32, 32]``) under every implemented
    corruption (rows, in the benchmark's groups) at every severity (columns, after the clean
    image); ``seed`` as in ``corrupt``."""
    batch = torch.as_tensor(image)
    batch = batch[None] if batch.ndim == 3 else batch
    names = [name for group in GROUPS.values() for name in group]
    group_of = {name: group for group, group_names in GROUPS.items() for name in group_names}
    # 1.1 in per image: 6 columns at DPI 120 fit a report unscaled, 32 px shown as 4 x 4 blocks
    fig, axes = new_figure(len(names), 1 + len(SEVERITIES),
                           figsize=(1.1 * (1 + len(SEVERITIES)) + 1.2, 1.1 * len(names)))
    for row, name in zip(axes, names, strict=True):
        shown = [batch[0]] + [corrupt(batch, name, s, seed=seed)[0] for s in SEVERITIES]
        for ax, img in zip(row, shown, strict=True):
            ax.imshow(to_hwc(img), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"{pretty(name)}\n({group_of[name]})", rotation=0, ha="right",
                          va="center", fontsize=9)
    for ax, label in zip(axes[0], ["clean"] + [f"severity {s}" for s in SEVERITIES],
                         strict=True):
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title)
    describe(fig, alt or (
        f"Grid of one test image: the clean image in the first column, then {len(names)} "
        f"corruptions (rows: {listing([pretty(n) for n in names], most=len(names))}) at "
        f"severities {SEVERITIES[0]} to {SEVERITIES[-1]} (columns), each row harsher to the "
        f"right. Not shown: {listing([pretty(n) for n in NOT_IMPLEMENTED])}."))
    return save_figure(fig, path)


def clean_against(points: list[dict], metrics: dict[str, str], path=None,
                  title: str | None = None, alt: str | None = None) -> Figure:
    """One panel per dataset (rows) and metric (columns): each label's mean clean test accuracy
    (horizontal) against its mean of the metric (vertical), one point per label, with the
    paired 95% intervals of its change against the reference drawn around its mean (none for
    the reference itself, or below two seeds).

    ``points``: dicts with ``dataset``, ``label``, ``reference`` (bool) and per axis name
    (``test_acc`` and each of ``metrics``) the mean (fraction) and ``<name>_ci``, the paired
    interval of the change in percentage points or None. ``metrics``: name -> axis label.
    """
    datasets = list(dict.fromkeys(p["dataset"] for p in points))
    labels = list(dict.fromkeys(p["label"] for p in points))
    colors = dict(zip(labels, palette(len(labels)), strict=True))
    fig, axes = new_figure(len(datasets), len(metrics),
                           figsize=(3.6 * len(metrics) + 2.2, 3.2 * len(datasets)))
    for row, dataset in zip(axes, datasets, strict=True):
        for ax, (metric, label) in zip(row, metrics.items(), strict=True):
            for p in (p for p in points if p["dataset"] == dataset):
                x, y = 100 * p["test_acc"], 100 * p[metric]
                xerr, yerr = (_around(p.get(f"{k}_ci"), p.get(f"{k}_change")) for k in ("test_acc", metric))
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="s" if p["reference"] else "o",
                            color=colors[p["label"]], markersize=6 if p["reference"] else 5,
                            capsize=2, elinewidth=0.8, label=p["label"])
            ax.set_xlabel("clean test accuracy (%)")
            ax.set_ylabel(label)
            ax.set_title(pretty(dataset), fontsize=10)
            ax.grid(alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    legend_outside(axes[0, -1], handles, names, title="square: reference")
    if title:
        fig.suptitle(title)
    describe(fig, alt or (
        f"{title + '. ' if title else ''}Scatter of clean test accuracy against "
        f"{listing(list(metrics.values()))} per label on {listing([pretty(d) for d in datasets])}, "
        "one point per label (mean over seeds) with the paired 95% confidence intervals of its "
        "change against the reference."))
    return save_figure(fig, path)


def _around(ci, change):
    """Error bar lengths that put a paired interval of a change (pp) around a mean."""
    if not ci or change is None or ci[0] != ci[0]:
        return None
    return [[max(0.0, change - ci[0])], [max(0.0, ci[1] - change)]]


def reliability_diagram(panels: list[tuple[str, object, object, object]], bins: int = 15,
                        path=None, title: str | None = None, alt: str | None = None) -> Figure:
    """Per panel (title, probabilities [N, C], labels [N], probabilities after temperature
    scaling or None): the accuracy in each of ``bins`` equal-width confidence bins before
    (bars) and after scaling (dots at the bins' mean confidence), the diagonal of perfect calibration, and the share of
    predictions per bin (grey, right axis)."""
    fig, axes = new_figure(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.6))
    edges = np.linspace(0, 1, bins + 1)
    parts = []
    for ax, (name, probs, labels, after) in zip(axes[0], panels, strict=True):
        for which, p in (("before", probs), ("after", after)):
            if p is None:
                continue
            conf, acc, share = _binned(as_numpy(p), as_numpy(labels), edges)
            if which == "before":
                ax.bar(edges[:-1], acc, width=1 / bins, align="edge", color="tab:blue", alpha=0.55,
                       edgecolor="tab:blue", label="before scaling")
                twin = ax.twinx()
                twin.bar(edges[:-1], share, width=1 / bins, align="edge", color="0.6", alpha=0.3)
                twin.set_ylim(0, 4 * max(share.max(), 1e-9))
                twin.set_yticks([])
            else:  # the bins that hold predictions, at their mean confidence
                held = share > 0
                ax.plot(conf[held], acc[held], "o-", color="tab:orange", markersize=3,
                        linewidth=1, label="after scaling")
        ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=0.8, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        percent_axis(ax.xaxis)
        percent_axis(ax.yaxis)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy in the bin")
        ax.set_title(name, fontsize=10)
        parts.append(name)
    legend_outside(axes[0, -1])
    if title:
        fig.suptitle(title)
    describe(fig, alt or (
        f"{title + '. ' if title else ''}Reliability diagrams of {listing(parts)}: accuracy per "
        f"confidence bin ({bins} bins) before temperature scaling (bars) and after (dots), "
        "against the diagonal of perfect calibration; grey bars show how many predictions fall "
        "in each bin."))
    return save_figure(fig, path)


def _binned(probs: np.ndarray, labels: np.ndarray, edges: np.ndarray):
    conf, pred = probs.max(1), probs.argmax(1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, len(edges) - 2)
    n = np.bincount(which, minlength=len(edges) - 1)
    right = np.bincount(which, weights=(pred == labels).astype(float), minlength=len(edges) - 1)
    total = np.bincount(which, weights=conf, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / n, np.where(n > 0, right / np.maximum(n, 1), 0.0), n / max(1, n.sum())


def corruption_families(accuracies: dict[str, dict[str, float]], clean: dict[str, float],
                        path=None, title: str | None = None, alt: str | None = None) -> Figure:
    """Per model (``accuracies``: name -> family -> accuracy, mean over severities) a bar per
    corruption family, families grouped as the benchmark groups them, and the model's clean
    accuracy on the same images as a dashed line."""
    names = [n for group in GROUPS.values() for n in group]
    models = list(accuracies)
    colors = palette(len(models))
    fig, axes = new_figure(1, 1, figsize=(7.5, 1.2 + 0.32 * len(names) * max(1, len(models)) ** 0.5))
    ax = axes[0, 0]
    step = 0.8 / len(models)
    for k, (model, color) in enumerate(zip(models, colors, strict=True)):
        pos = np.arange(len(names)) + (k - (len(models) - 1) / 2) * step
        ax.barh(pos, [100 * accuracies[model].get(n, np.nan) for n in names], height=step,
                color=color, label=model)
        ax.axvline(100 * clean[model], color=color, linestyle="--", linewidth=1)
    ax.set_yticks(range(len(names)), [pretty(n) for n in names])
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy under the corruption, mean of severities 1-5 (%); dashed: clean")
    ax.grid(axis="x", alpha=0.3)
    legend_outside(ax)
    if title:
        fig.suptitle(title)
    worst = {m: min(accuracies[m], key=accuracies[m].get) for m in models}
    describe(fig, alt or (
        f"{title + '. ' if title else ''}Bar chart of accuracy per corruption family for "
        f"{listing(models)}, with each model's clean accuracy as a dashed line; lowest: "
        + "; ".join(f"{m}: {pretty(worst[m])} ({100 * accuracies[m][worst[m]]:.1f}%)"
                    for m in models) + "."))
    return save_figure(fig, path)
