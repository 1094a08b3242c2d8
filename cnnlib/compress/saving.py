"""Checkpoints of compressed models, and :func:`load_model` for every kind of model file.

All load with ``weights_only=True``. A pruned checkpoint is an fp32 checkpoint plus the
channel widths to rebuild; zeros alone do not shrink a dense file, so its sparse weights
are stored as a bit mask plus the nonzero values. An int8 checkpoint holds the converted
model's state (int8 weights, scales, zero points, as plain tensors) and is rebuilt at load
time by quantizing the same architecture again and loading that state.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlib.compress.export import load_onnx
from cnnlib.compress.prune import (
    channel_widths,
    make_permanent,
    prunable_weights,
    sparsity,
    with_widths,
)
from cnnlib.compress.quantize import BACKEND, QuantizedModel, quantize_int8, quiet_ao
from cnnlib.models.registry import create_model
from cnnlib.training import checkpoint
from cnnlib.training.checkpoint import FORMAT, model_checkpoint, save_atomic


def _meta(model: nn.Module) -> dict:
    meta = getattr(model, "meta", None)
    if not meta or "config" not in meta:
        raise ValueError("save_compressed: the model has no .meta (load it with "
                         "cnnlib.load_model, or set meta with classes, mean, std and config)")
    return meta


def _pack_sparse(w: torch.Tensor) -> dict | None:
    """A weight as bit mask + nonzero values, or None when that would not be smaller."""
    mask = w != 0
    nnz = int(mask.sum())
    if nnz * w.element_size() + math.ceil(w.numel() / 8) >= w.numel() * w.element_size():
        return None
    bits = torch.from_numpy(np.packbits(mask.flatten().numpy()))
    return {"shape": list(w.shape), "mask": bits, "values": w[mask].clone()}


def _unpack_sparse(packed: dict) -> torch.Tensor:
    shape = packed["shape"]
    n = math.prod(shape)
    mask = torch.from_numpy(np.unpackbits(packed["mask"].numpy(), count=n).astype(bool))
    w = torch.zeros(n, dtype=packed["values"].dtype)
    w[mask] = packed["values"]
    return w.view(shape)


def _pruned_checkpoint(model: nn.Module, meta: dict, metrics: dict | None) -> dict:
    model = make_permanent(copy.deepcopy(model)).cpu()
    ckpt = model_checkpoint(model, meta["config"], classes=meta["classes"], mean=meta["mean"],
                            std=meta["std"], metrics=metrics or meta.get("metrics"))
    ckpt.update(kind="pruned", channels=channel_widths(model), sparsity=sparsity(model),
                sparse={})
    prunable = {id(m) for m, _ in prunable_weights(model)}
    for key in [f"{n}.weight" for n, m in model.named_modules() if id(m) in prunable]:
        packed = _pack_sparse(ckpt["state_dict"][key])
        if packed is not None:
            ckpt["sparse"][key] = packed
            del ckpt["state_dict"][key]
    return ckpt


def _int8_checkpoint(model: QuantizedModel, meta: dict, metrics: dict | None) -> dict:
    config = meta["config"]
    state = model.qmodel.state_dict()
    return {
        "format": FORMAT, "kind": "int8", "model": config["model"],
        "model_options": dict(config.get("model_options") or {}),
        "num_classes": len(meta["classes"]), "recipe": dict(model.recipe),
        "state_dict": _plain_state(state), "state_versions": _versions(state), "config": config,
        "classes": list(meta["classes"]), "mean": list(meta["mean"]), "std": list(meta["std"]),
        "metrics": dict(metrics or meta.get("metrics") or {}),
    }


def _plain_state(state: dict) -> dict:
    """Quantized tensors as int8 values plus scales and zero points: plain tensors to store.

    Pickled quantized tensors are on their way out of torch; plain ones load anywhere.
    """
    return {k: _plain(v) for k, v in state.items()}


def _plain(v):
    if isinstance(v, (tuple, list)):  # a quantized linear keeps (weight, bias) packed
        return type(v)(_plain(x) for x in v)
    if not (isinstance(v, torch.Tensor) and v.is_quantized):
        return v
    if v.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return {"qint": v.int_repr(), "scale": v.q_per_channel_scales().float(),
                "zero_point": v.q_per_channel_zero_points(), "axis": v.q_per_channel_axis(),
                "dtype": str(v.dtype)}
    return {"qint": v.int_repr(), "scale": torch.tensor(v.q_scale()),
            "zero_point": torch.tensor(v.q_zero_point()), "dtype": str(v.dtype)}


_QDTYPES = {str(t): t for t in (torch.qint8, torch.quint8, torch.qint32)}


def _versions(state: dict) -> dict:
    """Per-module state versions: quantized modules read their saved layout from them."""
    return {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()}


def _quantized_state(state: dict, versions: dict) -> dict:
    """Inverse of :func:`_plain_state` (re-quantizing the exact grid values is lossless)."""
    out = OrderedDict((k, _quantized(v)) for k, v in state.items())
    out._metadata = OrderedDict(versions)
    return out


def _quantized(v):
    if isinstance(v, (tuple, list)):
        return type(v)(_quantized(x) for x in v)
    if not (isinstance(v, dict) and "qint" in v):
        return v
    dtype, q, scale, zero = _QDTYPES[v["dtype"]], v["qint"], v["scale"], v["zero_point"]
    if "axis" not in v:
        real = (q.float() - zero) * scale
        return torch.quantize_per_tensor(real, float(scale), int(zero), dtype)
    shape = [-1 if i == v["axis"] else 1 for i in range(q.ndim)]
    real = (q.float() - zero.view(shape)) * scale.view(shape)
    return torch.quantize_per_channel(real, scale.double(), zero, v["axis"], dtype)


def save_compressed(model: nn.Module, path, *, metrics: dict | None = None) -> Path:
    """Save a pruned (or plain fp32) or int8 model as a checkpoint that ``load_model`` reads.

    The model needs ``.meta`` (as ``load_model`` gives it; the compress functions carry it
    over). ``metrics`` replaces the metrics recorded in it.
    """
    meta = _meta(model)
    if isinstance(model, QuantizedModel):
        return save_atomic(_int8_checkpoint(model, meta, metrics), path)
    return save_atomic(_pruned_checkpoint(model, meta, metrics), path)


def _build(ckpt: dict, widths: dict) -> nn.Module:
    model = create_model(ckpt["model"], ckpt["num_classes"], **ckpt["model_options"])
    return with_widths(model, widths).eval()


def _load_pruned(ckpt: dict) -> nn.Module:
    model = _build(ckpt, ckpt.get("channels") or {})
    state = dict(ckpt["state_dict"])
    state.update({k: _unpack_sparse(v) for k, v in (ckpt.get("sparse") or {}).items()})
    model.load_state_dict(state)
    return model


def _load_int8(ckpt: dict) -> QuantizedModel:
    """Quantize the recorded architecture (any calibration does: the state replaces it)."""
    recipe = ckpt["recipe"]
    if recipe.get("backend") != BACKEND:
        raise ValueError(f"checkpoint: int8 backend {recipe.get('backend')!r} is not supported; "
                         f"supported: {BACKEND}")
    base = _build(ckpt, recipe.get("channels") or {})
    blank = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    q = quantize_int8(base, blank, ckpt["mean"], ckpt["std"])
    with quiet_ao():
        q.qmodel.load_state_dict(_quantized_state(ckpt["state_dict"], ckpt["state_versions"]))
    q.recipe = dict(recipe)
    return q


# How each compressed kind is rebuilt (checkpoint.py rebuilds "fp32" itself).
KINDS = {"pruned": _load_pruned, "int8": _load_int8}


def load_model(path, device="cpu") -> nn.Module:
    """A ready model (eval mode) from a checkpoint of any kind, or from an ONNX file.

    Checkpoints (fp32, pruned, int8) come back on ``device``; an ``.onnx`` file (written by
    :func:`~cnnlib.compress.export.export_onnx`) as an onnxruntime session on the CPU.
    ``model.meta`` holds classes, mean, std, config, metrics and kind.
    """
    if str(path).endswith(".onnx"):
        return load_onnx(path)
    return checkpoint.load_model(path, device, loaders=KINDS)
