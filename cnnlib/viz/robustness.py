"""Figures of robustness to common corruptions: one image under every corruption and severity."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from cnnlib.data.corruptions import GROUPS, NOT_IMPLEMENTED, SEVERITIES, corrupt
from cnnlib.viz._figure import describe, listing, new_figure, pretty, save_figure, to_hwc

__all__ = ["corruption_grid"]


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
