"""What the notebooks' check cells print: deterministic summaries of the data, the networks
and the runs a notebook plans, which nbval compares with the outputs stored in the notebook
files (cells marked `report.CHECK_MARK`; the HTML reports leave them out)."""

from __future__ import annotations

import functools
import json

import torch
from torch import nn

from cnnlib.data import cifar as cdata
from cnnlib.data.obtain import DATASETS
from cnnlib.models.registry import count_parameters, create_model
from cnnlib.study import cache as cruns

__all__ = ["PLAN_FIELDS", "data_summary", "layer_summary", "parameter_summary", "parameters",
           "plan_summary"]


def data_summary(datasets=DATASETS, data_root=None) -> str:
    """Sizes, classes, channel statistics and fingerprint of each dataset, as text."""
    lines = []
    for name in datasets:
        d = cdata.load_cifar(name, root=data_root)
        mean, std = cdata.channel_stats(d.train_images)
        counts = torch.bincount(d.train_labels, minlength=d.num_classes)
        low, high = int(counts.min()), int(counts.max())
        per_class = f"{low}" if low == high else f"{low}-{high}"
        lines.append(f"{name}: {len(d.train_labels)} train / {len(d.test_labels)} test images, "
                     f"{tuple(d.train_images.shape[1:])} uint8, {d.num_classes} classes "
                     f"({per_class} train images per class)")
        if d.superclasses:
            lines.append(f"  {len(d.superclasses)} superclasses of "
                         f"{d.num_classes // len(d.superclasses)} classes each")
        shown = ", ".join(d.classes[:10]) + (", ..." if d.num_classes > 10 else "")
        lines.append(f"  classes: {shown}")
        lines.append("  train mean (RGB): " + " ".join(f"{v:.4f}" for v in mean)
                     + "   std: " + " ".join(f"{v:.4f}" for v in std))
        lines.append(f"  fingerprint: {cruns.data_fingerprint(name, data_root)}")
    return "\n".join(lines)


def _num_classes(dataset: str) -> int:
    return 10 if dataset == "cifar10" else 100


@functools.cache
def parameters(model: str, dataset: str, options: str) -> int:
    """Parameters of `model` on `dataset` with its options as JSON (a results row's `options`)."""
    return count_parameters(create_model(model, _num_classes(dataset), **json.loads(options)))


def parameter_summary(configs) -> str:
    """One line per distinct network of a list of (label, RunConfig): parameters and options."""
    lines, seen = [], set()
    for label, c in configs:
        key = (c.dataset, c.model, json.dumps(c.model_options, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        n = parameters(c.model, c.dataset, key[2])
        options = ", ".join(f"{k}={v}" for k, v in sorted(c.model_options.items())) or "defaults"
        lines.append(f"{c.dataset:9s} {label:24s} {c.model:9s} {n:>10,d} parameters  ({options})")
    return "\n".join(lines)


PLAN_FIELDS = ("epochs", "batch_size", "train_subset", "val_size", "test_subset", "seed")


def plan_summary(configs, fields=PLAN_FIELDS) -> str:
    """What a list of (label, RunConfig) trains: run counts, variants, sizes and seeds.

    `fields`: the RunConfig fields listed (leave out those that depend on the machine).
    """
    lines = []
    unique = len({c.key() for _, c in configs})
    lines.append(f"{len(configs)} runs, {unique} distinct configs")
    by_dataset: dict[str, list[str]] = {}
    for label, c in configs:
        labels = by_dataset.setdefault(c.dataset, [])
        if label not in labels:
            labels.append(label)
    for dataset, labels in by_dataset.items():
        lines.append(f"  {dataset}: {', '.join(labels)}")
    for field in fields:
        values = sorted({getattr(c, field) for _, c in configs})
        lines.append(f"  {field}: {', '.join(str(v) for v in values)}")
    return "\n".join(lines)


def layer_summary(model) -> str:
    """The model's conv layers: name, channels in -> out, kernel, frozen or not."""
    lines = [f"{type(model).__name__}: {count_parameters(model):,d} parameters"]
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            k = "x".join(str(s) for s in m.kernel_size)
            frozen = "" if m.weight.requires_grad else " (frozen)"
            lines.append(f"  {name:28s} {m.in_channels:4d} -> {m.out_channels:4d}  {k}{frozen}")
    return "\n".join(lines)
