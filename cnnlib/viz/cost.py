"""Networks against their cost: accuracy against measured wall time and against parameters.

Notebook 06 trains each network for the same wall-clock budget; this figure places every
network (a marker) of every dataset (a colour) at its mean over seeds, with +-std bars in
both directions. ``plots`` re-exports it (the notebooks' one figure import).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from cnnlib.viz._figure import (
    describe,
    legend_outside,
    new_figure,
    palette,
    percent_axis,
    pretty,
    save_figure,
)

__all__ = ["plot_tradeoff_points"]


def _count_text(v: float, _=None) -> str:
    """A count for a log axis or a sentence: 20k, 1.5M, 2.35."""
    return next((f"{v / k:.3g}{u}" for k, u in ((1e6, "M"), (1e3, "k")) if v >= k), f"{v:.3g}")


def _metric_name(column: str) -> str:
    return pretty(column).replace("acc", "accuracy")  # test_acc -> test accuracy


def _mean_sd(values) -> tuple[float, float]:
    """Mean and std over the rows (seeds); std 0 for a single row."""
    return float(values.mean()), float(np.nan_to_num(values.std()))


def plot_tradeoff_points(df, xs: dict[str, str], y: str = "test_acc", marker: str = "label",
                         hue: str = "dataset", logx=(), marks: dict | None = None, path=None,
                         title: str | None = None, alt: str | None = None) -> Figure:
    """Mean ``y`` (a fraction) against the mean of each ``xs`` column (its axis label), a panel
    each: a point per (``hue``, ``marker``) group, +-std bars over its rows (seeds) both ways.

    A marker per ``marker`` value, a colour per ``hue`` value, one legend outside the data
    (text beside points would overlap where networks cluster). ``logx``: columns on a log
    scale (counts read 20k, 1.5M); ``marks``: column -> (value, label), a dashed line.
    """
    names, hues = list(dict.fromkeys(df[marker])), list(dict.fromkeys(df[hue]))
    shapes = dict(zip(names, "osD^vPX*hp<>", strict=False))
    colors = dict(zip(hues, palette(len(hues)), strict=True))
    fig, axes = new_figure(1, len(xs), figsize=(1.8 + 4.3 * len(xs), 4.4), sharey=True)
    handles = [Line2D([], [], ls="", marker="o", ms=7, color=colors[h]) for h in hues]
    handles += [Line2D([], [], ls="", marker=shapes.get(n, "o"), ms=7, color="0.4") for n in names]
    labels = [pretty(h) for h in hues] + [str(n) for n in names]
    for ax, (x, xlabel) in zip(axes[0], xs.items(), strict=True):
        for (h, name), part in df.groupby([hue, marker], sort=False):
            (mx, sx), (my, sy) = _mean_sd(part[x]), _mean_sd(part[y])
            ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt=shapes.get(name, "o"), color=colors[h],
                        ms=7, capsize=2, elinewidth=1)
        if x in logx:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_count_text))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if x in (marks or {}):
            handles.append(ax.axvline(marks[x][0], color="0.4", ls="--", lw=1))
            labels.append(marks[x][1])
        ax.margins(x=0.08, y=0.1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(_metric_name(y))
    percent_axis(axes[0, 0].yaxis)
    legend_outside(axes[0, -1], handles, labels)
    if title:
        fig.suptitle(title)
    describe(fig, alt or _alt(df, xs, y, marker, hue, title))
    return save_figure(fig, path)


def _alt(df, xs, y, marker, hue, title) -> str:
    parts = []
    for h, part in df.groupby(hue, sort=False):
        means = part.groupby(marker, sort=False)[[y, *xs]].mean()
        top, low = means[y].idxmax(), means[y].idxmin()
        at = ", ".join(f"{_count_text(means.loc[top, x])} {x}" for x in xs)
        parts.append(f"{pretty(h)}: highest {top} ({100 * means.loc[top, y]:.1f}% at {at}), "
                     f"lowest {low} ({100 * means.loc[low, y]:.1f}%)")
    return (f"{title + '. ' if title else ''}Scatter plots of mean {_metric_name(y)} against "
            f"{' and against '.join(xs.values())}, one marker per {marker}, one colour per {hue}, "
            "standard-deviation bars over seeds; " + "; ".join(parts) + ".")
