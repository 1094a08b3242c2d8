"""Networks against their cost: test accuracy against measured training time.

Notebook 06 trains each network at several wall-clock budgets; this figure draws, per dataset
(a panel), one line per network through its budgets at the mean over seeds (+-std bars both
ways where a budget ran several), each point labelled with the epochs it bought, and each
network's published accuracy after its paper's full schedule as a star at the right edge.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from cnnlib.viz._figure import (
    describe,
    legend_outside,
    new_figure,
    palette,
    percent_axis,
    pretty,
    save_figure,
)

__all__ = ["plot_frontier"]


def _metric_name(column: str) -> str:
    return pretty(column).replace("acc", "accuracy")  # test_acc -> test accuracy


def _mean_sd(values) -> tuple[float, float]:
    """Mean and std over the rows (seeds); std 0 for a single row."""
    return float(values.mean()), float(np.nan_to_num(values.std()))


def plot_frontier(df, published: dict | None = None, x: str = "minutes", y: str = "test_acc",
                  line: str = "network", group: str = "budget", panel: str = "dataset",
                  annotate: str = "epochs", path=None, title: str | None = None) -> Figure:
    """Mean ``y`` (a fraction) against mean ``x`` (log scale), a panel per ``panel`` value, a
    line per ``line`` value through its ``group`` values (budgets), in order of ``x``; each
    point labelled with its mean ``annotate`` ("0.57 ep"). ``published``: (panel, line) ->
    accuracy in percent, drawn as a star of the line's colour right of the data."""
    panels, names = list(dict.fromkeys(df[panel])), list(dict.fromkeys(df[line]))
    colors = dict(zip(names, palette(len(names)), strict=True))
    fig, axes = new_figure(1, len(panels), figsize=(1.8 + 4.6 * len(panels), 4.6))
    handles = [Line2D([], [], marker="o", ms=5, color=colors[n]) for n in names]
    labels = [str(n) for n in names]
    stars = False
    for ax, p in zip(axes[0], panels, strict=True):
        part = df[df[panel] == p]
        right = part[x].max()
        for name, rows in part.groupby(line, sort=False):
            points = sorted((_mean_sd(g[x]), _mean_sd(g[y]), float(g[annotate].mean()))
                            for _, g in rows.groupby(group, sort=False))
            xs, ys = [m for (m, _), _, _ in points], [m for _, (m, _), _ in points]
            ax.errorbar(xs, ys, xerr=[s for (_, s), _, _ in points],
                        yerr=[s for _, (_, s), _ in points], color=colors[name], marker="o",
                        ms=5, capsize=2, elinewidth=1, lw=1.5)
            for (mx, _), (my, _), epochs in points:
                ax.annotate(f"{epochs:.2g} ep", (mx, my), xytext=(4, -10),
                            textcoords="offset points", fontsize=7, color=colors[name])
            value = (published or {}).get((p, name))
            if value is not None:
                ax.plot([right * 2.2], [value / 100], marker="*", ms=11, ls="",
                        color=colors[name], clip_on=False)
                stars = True
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("measured minutes per run (log scale)")
        ax.set_title(pretty(p))
        ax.margins(x=0.15, y=0.08)
        ax.grid(alpha=0.3)
        percent_axis(ax.yaxis)
    axes[0, 0].set_ylabel(_metric_name(y))
    if stars:
        handles.append(Line2D([], [], marker="*", ms=11, ls="", color="0.4"))
        labels.append("published, full schedule")
    legend_outside(axes[0, -1], handles, labels)
    if title:
        fig.suptitle(title)
    describe(fig, _alt(df, published, x, y, line, group, panel, annotate, title))
    return save_figure(fig, path)


def _alt(df, published, x, y, line, group, panel, annotate, title) -> str:
    parts = []
    for p, part in df.groupby(panel, sort=False):
        means = part.groupby([group, line], sort=False)[[y, x, annotate]].mean()
        for budget, rows in means.groupby(level=0, sort=False):
            top = rows[y].idxmax()
            parts.append(f"{pretty(p)}, {group} {budget}: highest {top[1]} "
                         f"({100 * rows.loc[top, y]:.1f}% after {rows.loc[top, x]:.1f} min, "
                         f"{rows.loc[top, annotate]:.2g} {annotate})")
    marks = [f"{name} {value:g}% on {pretty(p)}" for (p, name), value in (published or {}).items()
             if value is not None and p in set(df[panel]) and name in set(df[line])]
    return (f"{title + '. ' if title else ''}Line plots of mean {_metric_name(y)} against "
            f"measured minutes (log scale), one line per {line} through its {group}s, one "
            "panel per dataset, standard-deviation bars over seeds; " + "; ".join(parts)
            + (f". Published accuracy after the full schedule (stars): {', '.join(marks)}"
               if marks else "") + ".")
