"""Figures of the study: training curves, sweeps and ablations, LR range test, images, compression,
time to accuracy; the one import for notebooks (it also offers ``class_plots``, ``cost_plots``
and the ``figures`` helpers).

Every function builds a fresh ``matplotlib.figure.Figure``, returns it, and also
writes it as a PNG when given ``path``. Inputs are plain lists, dicts, tensors,
arrays or DataFrames: the trainer's history rows and the metrics of ``evaluate``
go in as they are. Value axes are zoomed to the data when effects are a few
points: then dots with error bars, never bars (which must start at 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from cnnlib.viz._figure import (
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

# -- training curves -----------------------------------------------------------------------------


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """Epochs and values of ``key`` over the rows that have it (val keys may be absent)."""
    pairs = [(r.get("epoch", i + 1), r[key]) for i, r in enumerate(rows) if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_history(histories: dict[str, list[dict]], path=None, title: str | None = None,
                 alt: str | None = None, marks: dict[str, dict[str, int]] | None = None) -> Figure:
    """Loss and accuracy per epoch; one colour per run, train solid, validation dashed.

    ``marks`` names epochs of a run to mark on both panels, e.g. ``{"early stopping":
    {"best validation loss": 7, "stopped": 12}}``: a vertical line in the run's colour, one
    line style per mark name, each in the legend (an epoch of None is left out). A marked run
    is drawn wide and translucent beneath the others: where its curves coincide with another
    run's (an early-stopped run and the same run without it), both stay visible.
    """
    fig, axes = new_figure(1, 2, figsize=(11, 4))
    colors = palette(len(histories))
    styles = {"train": "-", "val": "--"}
    marks = {run: kept for run, m in (marks or {}).items()
             if run in histories and (kept := {k: e for k, e in m.items() if e is not None})}
    widths = {run: dict(linewidth=5, alpha=0.4, zorder=1) if run in marks else {}
              for run in histories}
    for (run, rows), color in zip(histories.items(), colors, strict=True):
        for ax, metric in zip(axes[0], ("loss", "acc"), strict=True):
            for split, style in styles.items():
                epochs, values = _series(rows, f"{split}_{metric}")
                if values:
                    ax.plot(epochs, values, style, color=color, **widths[run])
    marked = [(run, name, epoch, color) for run, color in zip(histories, colors, strict=True)
              for name, epoch in marks.get(run, {}).items()]
    mark_styles = dict(zip(dict.fromkeys(m[1] for m in marked), _MARK_STYLES, strict=False))
    for _, name, epoch, color in marked:
        for ax in axes[0]:
            ax.axvline(epoch, color=color, linestyle=mark_styles[name], linewidth=1.2)
    for ax, name in zip(axes[0], ("loss", "accuracy"), strict=True):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    percent_axis(axes[0, 1].yaxis)
    named = [f"{run}: {name} at epoch {epoch}" for run, name, epoch, _ in marked]
    if histories:
        runs = [Line2D([], [], color=c, **widths[r]) for r, c in zip(histories, colors, strict=True)]
        splits = [Line2D([], [], color="0.3", linestyle=s) for s in styles.values()]
        lines = [Line2D([], [], color=c, linestyle=mark_styles[n]) for _, n, _, c in marked]
        legend_outside(axes[0, 1], runs + splits + lines,
                       [*histories, "train", "validation", *named])
    if title:
        fig.suptitle(title)
    describe(fig, alt or f"Line charts of loss (left) and accuracy (right) per epoch for "
                         f"{listing(histories)}; solid lines train, dashed lines validation"
                         + (f"; vertical lines: {'; '.join(named)}." if named else "."))
    return save_figure(fig, path)


_MARK_STYLES = (":", "-.", (0, (5, 2, 1, 2, 1, 2)))


# -- results tables: category dots and sweeps ---------------------------------------------------


def _mean_sd(df, keys: list[str], y: str):
    """Mean and std of ``y`` over the rows (seeds) of each ``keys`` group, groups in first-seen order."""
    stats = df.groupby(keys, sort=False)[y].agg(["mean", "std"])
    return stats.assign(std=stats["std"].fillna(0))


def _panels(df, panel: str | None) -> list:
    return [(None, df)] if panel is None else [(v, df[df[panel] == v]) for v in dict.fromkeys(df[panel])]


def _value_text(v: float, percent: float | None) -> str:
    return f"{100 * v / percent:.1f}%" if percent else f"{v:.3g}"


def _axis_label(label: str, percent: float | None) -> str:
    """``label`` without a trailing ``%`` / ``(%)`` when the ticks already say percent."""
    return label.removesuffix("(%)").removesuffix("%").rstrip() if percent else label


def plot_points(df, x: str, y: str, hue: str | None = None, path=None,
                value_label: str | None = None, title: str | None = None, panel: str | None = None,
                percent: float | None = None, alt: str | None = None) -> Figure:
    """Mean of ``y`` per category ``x`` over the rows (seeds): a dot, +-std bars, the value beside it.

    Categories run down the page in first-seen order, values along the
    horizontal axis, zoomed to the data so that effects of a few points show.
    ``hue`` draws several dodged series per category; ``panel`` one panel per
    value (own value range, e.g. CIFAR-10 beside CIFAR-100). ``percent`` is the
    value that means 100% (1 for fractions, 100 for values already in percent).
    """
    cats = list(dict.fromkeys(df[x]))
    hues = list(dict.fromkeys(df[hue])) if hue else [None]
    panels = _panels(df, panel)
    fig, axes = new_figure(1, len(panels), sharey=True,
                           figsize=(3 + 3.2 * len(panels), 1 + (0.22 + 0.13 * len(hues)) * len(cats)))
    step = 0.75 / len(hues)
    for ax, (name, part) in zip(axes[0], panels, strict=True):
        for k, (h, color) in enumerate(zip(hues, palette(len(hues)), strict=True)):
            sub = part if h is None else part[part[hue] == h]
            stats = _mean_sd(sub, [x], y).reindex(cats)
            pos = np.arange(len(cats)) + (k - (len(hues) - 1) / 2) * step
            ax.errorbar(stats["mean"], pos, xerr=stats["std"], fmt="o", color=color, markersize=5,
                        capsize=2, elinewidth=1, label=None if h is None else str(h))
            for v, sd, yy in zip(stats["mean"], stats["std"], pos, strict=True):
                if not np.isnan(v):
                    ax.annotate(_value_text(v, percent), (v + sd, yy), xytext=(4, 0),
                                textcoords="offset points", va="center", fontsize=7)
        ax.margins(x=0.12)
        if percent:
            percent_axis(ax.xaxis, percent)
        ax.set_xlabel(_axis_label(value_label or y, percent))
        ax.grid(axis="x", alpha=0.3)
        if name is not None:
            ax.set_title(pretty(name))
    axes[0, 0].set_yticks(range(len(cats)), [str(c) for c in cats])
    axes[0, 0].set_ylim(len(cats) - 0.5, -0.5)
    if hue:
        legend_outside(axes[0, -1], title=hue)
    if title:
        fig.suptitle(title)
    describe(fig, alt or _points_alt(df, x, y, panel, percent, title, value_label, hue))
    return save_figure(fig, path)


def _points_alt(df, x, y, panel, percent, title, value_label, hue=None) -> str:
    parts = []
    for name, part in _panels(df, panel):
        for h, sub in _panels(part, hue):  # each series on its own: means of one quantity
            means = _mean_sd(sub, [x], y)["mean"]
            where = " ".join(pretty(n) for n in (name, h) if n is not None)
            parts.append(f"{where + ': ' if where else ''}highest {means.idxmax()} "
                         f"({_value_text(means.max(), percent)}), lowest {means.idxmin()} "
                         f"({_value_text(means.min(), percent)})")
    head = f"{title}. " if title else ""
    return (f"{head}Dot chart of mean {value_label or y} per {x} with standard-deviation bars; "
            + "; ".join(parts) + ".")


def plot_deltas(deltas, path=None, value_label: str = "test accuracy", order=None,
                title: str | None = None, alt: str | None = None) -> Figure:
    """Paired changes against a reference (``stats.Delta``, percentage points): per label
    the mean change with its confidence interval (at the level of its Holm step among the
    comparisons of its family: `stats.Delta.interval`), one panel per dataset, a line at 0.

    The colour is the verdict (the interval above 0, below 0, or spanning it); one seed has
    no interval, only a dot. ``order``: the labels top to bottom (default: first seen).
    """
    datasets = list(dict.fromkeys(d.dataset for d in deltas))
    labels = [x for x in (order or [d.label for d in deltas]) if any(d.label == x for d in deltas)]
    labels = list(dict.fromkeys(labels))
    fig, axes = new_figure(1, max(1, len(datasets)), sharey=True,
                           figsize=(3 + 3.4 * max(1, len(datasets)), 1.2 + 0.3 * len(labels)))
    legend = {}
    for ax, dataset in zip(axes[0], datasets, strict=False):
        for d in (d for d in deltas if d.dataset == dataset and d.label in labels):
            low, high = d.interval
            color = ("tab:blue" if d.mean > 0 else "tab:red") if d.detectable else "0.55"
            xerr = [[d.mean - low], [high - d.mean]] if d.n > 1 else None
            legend[d.verdict] = ax.errorbar(d.mean, labels.index(d.label), xerr=xerr, fmt="o",
                                            color=color, markersize=5, capsize=3, elinewidth=1)
            ax.annotate(f"{d.mean:+.1f}", (high if d.n > 1 else d.mean, labels.index(d.label)),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ax.axvline(0, color="0.3", linewidth=0.8)
        ax.margins(x=0.15)
        reference = next(d.reference for d in deltas if d.dataset == dataset)
        ax.set_xlabel(f"{value_label} minus {reference} (pp)")
        ax.set_title(pretty(dataset))
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(labels)), labels)
    axes[0, 0].set_ylim(len(labels) - 0.5, -0.5)
    if legend:
        legend_outside(axes[0, -1], list(legend.values()), list(legend), title="CI, paired, at\nits Holm step's level")
    if title:
        fig.suptitle(title)
    describe(fig, alt or _deltas_alt(deltas, datasets, value_label, title))
    return save_figure(fig, path)


def _deltas_alt(deltas, datasets, value_label, title) -> str:
    parts = [f"{pretty(ds)}: " + ", ".join(f"{d.label} {d.mean:+.1f} pp ({d.verdict})"
                                           for d in deltas if d.dataset == ds) for ds in datasets]
    head = f"{title}. " if title else ""
    return (f"{head}Dot chart of the paired change in {value_label} of each variant, with 95% "
            "confidence intervals; " + "; ".join(parts) + ".")


def plot_lines(df, x: str, y: str, hue: str | None = None, path=None, ylabel: str | None = None,
               title: str | None = None, logx: bool = False, panel: str | None = None,
               percent: float | None = None, alt: str | None = None) -> Figure:
    """Mean of ``y`` against ``x`` per ``hue`` with +-std error bars over the rows (seeds).

    ``panel`` gives one panel per value with its own y range; ``percent`` is the
    value that means 100%. A y range that spans 0 gets a line at 0.
    """
    hues = list(dict.fromkeys(df[hue])) if hue else [None]
    panels = _panels(df, panel)
    fig, axes = new_figure(1, len(panels), figsize=(1.5 + 4.5 * len(panels), 4))
    for ax, (name, part) in zip(axes[0], panels, strict=True):
        for h, color in zip(hues, palette(len(hues)), strict=True):
            sub = part if h is None else part[part[hue] == h]
            if sub.empty:
                continue
            stats = _mean_sd(sub, [x], y).sort_index()
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], fmt="-o", color=color,
                        markersize=5, capsize=3, elinewidth=1, label=None if h is None else str(h))
        if logx:
            ax.set_xscale("log")
        if percent:
            percent_axis(ax.yaxis, percent)
        low, high = ax.get_ylim()
        if low < 0 < high:
            ax.axhline(0, color="0.4", linewidth=0.8)
        ax.margins(y=0.12)
        ax.set_xlabel(x)
        ax.set_ylabel(_axis_label(ylabel or y, percent))
        ax.grid(alpha=0.3)
        if name is not None:
            ax.set_title(pretty(name))
    if hue and hue != panel:
        legend_outside(axes[0, -1], title=hue)
    if title and panel:
        fig.suptitle(title)
    elif title:
        axes[0, 0].set_title(title)
    describe(fig, alt or _lines_alt(df, x, y, hue, panel, percent, title, ylabel))
    return save_figure(fig, path)


def _lines_alt(df, x, y, hue, panel, percent, title, ylabel) -> str:
    keys = [k for k in dict.fromkeys([panel, hue]) if k]
    groups = df.groupby(keys, sort=False) if keys else [("all", df)]
    parts = []
    for name, part in groups:
        means = _mean_sd(part, [x], y)["mean"].sort_index()
        label = " ".join(pretty(n) for n in name) if isinstance(name, tuple) else pretty(name)
        parts.append(f"{label}: " + ", ".join(f"{_value_text(v, percent)} at {x} {xv}"
                                               for xv, v in means.items()))
    head = f"{title}. " if title else ""
    return f"{head}Line chart of mean {ylabel or y} against {x}; " + "; ".join(parts) + "."


# -- learning-rate range test --------------------------------------------------------------------


def plot_lr_find(result: dict, path=None, title: str | None = None, alt: str | None = None) -> Figure:
    """Smoothed loss against lr (log scale) from ``train.lr_find``, the suggestion marked.

    ``result`` is one range test, or ``{name: range test}`` for several curves on one axis
    (one colour each, e.g. one per optimizer), each with its own suggestion.
    """
    curves = {"": result} if "lrs" in result else result
    fig, axes = new_figure(figsize=(6 if "" in curves else 7, 4))
    ax = axes[0, 0]
    limits, found = [], []
    for order, ((name, r), color) in enumerate(zip(curves.items(), palette(len(curves)),
                                                   strict=True)):
        lrs, losses = (np.asarray(r[k], dtype=np.float64) for k in ("lrs", "losses"))
        s = r.get("suggested_lr")
        text = f"suggested lr {s:.2g}" if s is not None else ""
        # Each curve narrower than the one before: curves that coincide all stay visible.
        ax.plot(lrs, losses, color=color, linewidth=1.5 + 0.8 * (len(curves) - 1 - order),
                label=f"{name} ({text})" if name else None)
        if s is not None and len(lrs):
            i = int(np.argmin(np.abs(np.log(lrs) - math.log(s))))
            mark = color if name else "red"  # one curve: its suggestion stands out in red
            ax.plot([lrs[i]], [losses[i]], "o", color=mark, label=None if name else text)
            ax.axvline(s, color=mark, linestyle=":", linewidth=1)
            found.append(f"{name} {s:.2g}".strip())
        finite = losses[np.isfinite(losses)]
        if finite.size:
            limits.append((*_lr_find_ylim(finite), lrs.min(), lrs.max()))
    ax.set_xscale("log")
    if limits:
        ax.set_ylim(min(x[0] for x in limits), max(x[1] for x in limits))
    if found:
        legend_outside(ax)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title(title or "Learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    names = "" if "" in curves else f" for {listing(curves)}"
    span = f" from {min(x[2] for x in limits):.2g} to {max(x[3] for x in limits):.2g}" if limits else ""
    lrs = f"; suggested learning rate {', '.join(found)}" if found else ""
    describe(fig, alt or f"Line chart of the smoothed training loss against the learning rate "
                         f"(log scale){names}{span}{lrs}.")
    return save_figure(fig, path)


def plot_lr_grid(scores, chosen: dict, suggested: dict | None = None, path=None,
                 title: str | None = None) -> Figure:
    """Validation accuracy against the learning rate (log scale), one panel per optimizer:
    ``scores`` has optimizer, lr and val_acc (``study.lr_grid.scores``); ``chosen`` maps each
    optimizer to its chosen rate (a star) and ``suggested`` to its range test's (a dotted line)."""
    names = list(dict.fromkeys(scores["optimizer"]))
    suggested = suggested or {}
    fig, axes = new_figure(1, len(names), figsize=(1.5 + 3.2 * len(names), 3.8), sharey=True)
    parts = []
    for ax, name in zip(axes[0], names, strict=True):
        part = scores[scores["optimizer"] == name].sort_values("lr")
        ax.plot(part["lr"], part["val_acc"], "-o", color="C0", markersize=5)
        best = part[part["lr"] == chosen[name]]
        ax.plot(best["lr"], best["val_acc"], "*", color="C3", markersize=14)
        if name in suggested:
            ax.axvline(suggested[name], color="0.3", linestyle=":", linewidth=1.2)
        ax.set_xscale("log")
        ax.set_xticks(part["lr"], [f"{lr:g}" for lr in part["lr"]], rotation=45)
        ax.xaxis.set_minor_formatter(NullFormatter())  # the grid's rates label the axis
        percent_axis(ax.yaxis, 1)
        ax.set_xlabel("learning rate (peak)")
        ax.set_title(name)
        ax.grid(alpha=0.3, which="both")
        parts.append(f"{name}: " + ", ".join(f"{v * 100:.1f}% at {lr:g}"
                                             for lr, v in zip(part["lr"], part["val_acc"],
                                                              strict=True))
                     + f", chosen {chosen[name]:g}"
                     + (f", range test {suggested[name]:.2g}" if name in suggested else ""))
    axes[0, 0].set_ylabel("validation accuracy")
    handles = [Line2D([], [], marker="*", color="C3", linestyle="", markersize=12)]
    if suggested:
        handles.append(Line2D([], [], color="0.3", linestyle=":"))
    legend_outside(axes[0, -1], handles, ["chosen", "range test"][:len(handles)])
    fig.suptitle(title or "Learning-rate grid per optimizer")
    describe(fig, f"{title or 'Learning-rate grid'}. Line charts of validation accuracy against "
                  f"the learning rate (log scale), one per optimizer; " + "; ".join(parts) + ".")
    return save_figure(fig, path)


def _lr_find_ylim(losses: np.ndarray) -> tuple[float, float]:
    """The last steps diverge: cap the axis a little above the starting loss."""
    low, start = float(losses.min()), float(losses[0])
    margin = max(0.05 * abs(low), 1e-3)
    high = min(float(losses.max()), start + 2 * (start - low))
    return low - margin, max(high, low) + margin


# -- images --------------------------------------------------------------------------------------


def image_grid(images, titles: Sequence[str] | None = None, ncols: int = 8, path=None,
               alt: str | None = None) -> Figure:
    """uint8 images ``[N, 3, H, W]`` in a grid, with optional per-image titles."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    # 1.6 in per image and 9 pt titles: at DPI 120 a 4-column grid is 770 px wide, so a report
    # shows it unscaled and its titles stay readable.
    fig, axes = new_figure(nrows, ncols, figsize=(1.6 * ncols, 2.0 * nrows if titles else 1.6 * nrows))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_hwc(images[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    listed = f": {listing(titles, most=8)}" if titles is not None else ""
    describe(fig, alt or f"Grid of {n} test images{listed}.")
    return save_figure(fig, path)


def plot_tradeoffs(df, path=None, title: str | None = None, alt: str | None = None) -> Figure:
    """Accuracy against size on disk and against batch-1 latency: colour per model, marker per variant.

    ``df`` is the compression study's table (``compression_study.results_frame``).
    Markers with a legend rather than text beside each point, which would
    overlap where variants cluster. A column ``<x>_std`` (e.g.
    ``latency_ms_b1_std``), when present, draws error bars along that axis.
    """
    markers = dict(zip(dict.fromkeys(df["variant"]), "osD^vPX*hp<>", strict=False))
    models = list(dict.fromkeys(df["model"]))
    colors = dict(zip(models, palette(len(models)), strict=True))
    fig, axes = new_figure(1, 2, figsize=(11, 4.4), sharey=True)
    panels = (("size_mb", "size on disk (MB, log scale)", "Accuracy against size"),
              ("latency_ms_b1", "CPU latency at batch 1 (ms, log scale)", "Accuracy against latency"))
    for ax, (x, xlabel, panel_title) in zip(axes[0], panels, strict=True):
        for _, r in df.iterrows():
            std = r.get(f"{x}_std")
            ax.errorbar(r[x], r["test_acc"], xerr=std if std is not None and std == std else None,
                        fmt=markers[r["variant"]], color=colors[r["model"]], markersize=7,
                        capsize=2, alpha=0.85)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy")
    percent_axis(axes[0, 0].yaxis)
    handles = [Line2D([], [], linestyle="", marker="o", markersize=7, color=colors[m]) for m in models]
    handles += [Line2D([], [], linestyle="", marker=mk, markersize=7, color="0.4")
                for mk in markers.values()]
    legend_outside(axes[0, 1], handles, [*models, *markers])
    if title:
        fig.suptitle(title)
    describe(fig, alt or _tradeoffs_alt(df, title))
    return save_figure(fig, path)


def _tradeoffs_alt(df, title: str | None) -> str:
    parts = []
    for model, part in df.groupby("model", sort=False):
        small, fast = part.loc[part["size_mb"].idxmin()], part.loc[part["latency_ms_b1"].idxmin()]
        parts.append(f"{model}: smallest {small['variant']} ({small['size_mb']:.2g} MB, "
                     f"{100 * small['test_acc']:.1f}%), fastest {fast['variant']} "
                     f"({fast['latency_ms_b1']:.2g} ms, {100 * fast['test_acc']:.1f}%)")
    head = f"{title}. " if title else ""
    return (f"{head}Scatter plots of test accuracy against size on disk and against CPU latency "
            f"for each compressed variant; " + "; ".join(parts) + ".")


# -- time to accuracy ----------------------------------------------------------------------------


def plot_time_to_accuracy(points, path=None, targets=(0.90, 0.94), title: str | None = None) -> Figure:
    """Mean test accuracy against mean wall-clock minutes per (recipe, epoch budget), with
    +-std error bars over seeds in both directions and dashed lines at the targets.

    ``points``: a DataFrame with columns recipe, epochs, n, minutes_mean, minutes_std,
    test_acc_mean, test_acc_std (as benchmarks/time_to_accuracy.py writes them).
    """
    fig, axes = new_figure(figsize=(7, 4.2))
    ax = axes[0, 0]
    groups = list(points.groupby("recipe", sort=False))
    for color, (name, part) in zip(palette(len(groups)), groups, strict=True):
        part = part.sort_values("minutes_mean")
        ax.errorbar(part["minutes_mean"], part["test_acc_mean"],
                    xerr=part["minutes_std"].fillna(0), yerr=part["test_acc_std"].fillna(0),
                    marker="o", capsize=3, color=color, label=name)
        for _, r in part.iterrows():
            ax.annotate(f"{r['epochs']:g} ep, {int(r['n'])} seeds",
                        (r["minutes_mean"], r["test_acc_mean"]), textcoords="offset points",
                        xytext=(6, -12), fontsize=8, color=color)
    for t in targets:
        ax.axhline(t, ls="--", lw=0.8, color="0.5")
    percent_axis(ax.yaxis)
    ax.set_xlabel("wall-clock minutes per run (training + evaluation)")
    ax.set_ylabel("CIFAR-10 test accuracy")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    best = points.loc[points["test_acc_mean"].idxmax()]
    describe(fig, f"Test accuracy against minutes per run; dashed lines at "
                  f"{', '.join(f'{t:.0%}' for t in targets)}. Highest mean: {best['recipe']} "
                  f"{best['epochs']:g} epochs, {best['test_acc_mean']:.1%} in "
                  f"{best['minutes_mean']:.1f} min.")
    return save_figure(fig, path)
