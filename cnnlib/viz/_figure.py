"""What every figure of the study shares: construction, conventions, alt text, saving.

Figures are built without pyplot (``new_figure``), so nothing is shown twice in a
notebook and no global state leaks. Conventions, so that a figure reads at a
glance at report width: accuracy axes in percent (``percent_axis``), legends
outside the data (``legend_outside``), class names as a reader writes them
(``pretty``). Each figure carries alt text (its ``label``, set by ``describe``),
which ``report.show`` puts on the image and ``save_figure`` writes into the PNG's
``Description``.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from cnnlib import _fileio as fileio
from cnnlib.data.obtain import TITLES

__all__ = ["as_numpy", "describe", "legend_outside", "listing", "new_figure", "palette",
           "percent_axis", "pretty", "save_figure", "to_hwc"]

DPI = 120


def save_figure(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Write ``fig`` as a PNG at ``path`` (folders created) when a path is given; return it.

    Atomic: the PNG is written to a temporary file in the same folder, then renamed, so a
    failure midway leaves the previous figure as it was.
    """
    if path is not None:
        alt = fig.get_label()
        fileio.atomic_write(Path(path), lambda f: fig.savefig(
            f, format="png", dpi=DPI, bbox_inches="tight",
            metadata={"Description": alt} if alt else None))
    return fig


def describe(fig: Figure, alt: str) -> Figure:
    """Give ``fig`` its alt text (what a reader who cannot see it should learn); return it."""
    fig.set_label(" ".join(alt.split()))
    return fig


def percent_axis(axis, whole: float = 1.0) -> None:
    """Tick labels of ``axis`` (``ax.xaxis`` / ``ax.yaxis``) in percent; ``whole`` is 100%."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v / whole:.4g}%"))


def legend_outside(ax, handles=None, labels=None, **kwargs):
    """The legend to the right of ``ax``, clear of the data (constrained layout makes room)."""
    if handles is not None:
        kwargs.update(handles=handles, labels=labels)
    kwargs = {"fontsize": 8, "frameon": False, **kwargs}
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, **kwargs)


def pretty(name) -> str:
    """A dataset or class name as a reader writes it (``cifar10`` -> ``CIFAR-10``,
    ``sweet_pepper`` -> ``sweet pepper``)."""
    return TITLES.get(str(name), str(name).replace("_", " "))


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4), **kwargs):
    """A pyplot-free Figure with constrained layout and its axes as a 2-D array."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def listing(names, most: int = 6) -> str:
    names = [str(n) for n in names]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def palette(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def to_hwc(image) -> np.ndarray:
    """A uint8 CHW tensor/array as an HWC array for ``imshow``."""
    return np.ascontiguousarray(as_numpy(image).transpose(1, 2, 0))
