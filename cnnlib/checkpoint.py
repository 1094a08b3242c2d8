"""Checkpoints: written atomically, read only with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
can be loaded without unpickling code. A file that carries code is refused.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch
from torch import nn

from .models import create_model

FORMAT = "cnnlib-checkpoint-v1"


def save_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_safe(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint dict; refuse anything that would need code to unpickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"checkpoint: refusing {path}: it is not a plain-data checkpoint (it would run code "
            f"or is corrupt; nothing was executed): {first}"
        ) from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"checkpoint: {path} is truncated or not a torch file: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint: {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def model_checkpoint(model: nn.Module, config: dict, *, classes, mean, std, metrics=None,
                     evaluation=None) -> dict:
    """The dict saved as a finished model: enough to rebuild and use it with no other file.

    `evaluation` holds the settings its test metrics were measured with (TTA level,
    precision), so that `cnnlib evaluate` reproduces them by default.
    """
    return {
        "format": FORMAT,
        "kind": "fp32",
        "model": config["model"],
        "model_options": dict(config.get("model_options") or {}),
        "num_classes": len(classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config,
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        "metrics": dict(metrics or {}),
        "evaluation": evaluation_settings({"config": config, "evaluation": evaluation}),
    }


def load_model(path: str | os.PathLike, device="cpu") -> nn.Module:
    """A ready model (eval mode) from a checkpoint; its metadata is in `model.meta`.

    `model.meta` holds classes, mean, std, config and metrics: what `evaluate`
    and `predict` need besides the weights.
    """
    ckpt = load_safe(path)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path} is not a cnnlib model checkpoint (format {ckpt.get('format')!r})")
    kind = ckpt.get("kind", "fp32")
    if kind not in _LOADERS and kind in _LAZY_KINDS:
        from . import compress  # noqa: F401  (registers the compressed kinds on import)
    loader = _LOADERS.get(kind)
    if loader is None:
        raise ValueError(f"checkpoint: {path} has kind {kind!r}; supported: {', '.join(_LOADERS)}")
    model = loader(ckpt).to(device).eval()
    model.meta = {k: ckpt[k] for k in ("classes", "mean", "std", "config", "metrics", "kind")}
    model.meta["evaluation"] = evaluation_settings(ckpt)
    return model


def evaluation_settings(ckpt: dict) -> dict:
    """TTA level and precision a checkpoint's metrics were measured with. Checkpoints written
    before these were recorded used the config's `tta` and fp32 (what `auto` meant on a CPU)."""
    recorded = dict(ckpt.get("evaluation") or {})
    config = ckpt.get("config") or {}
    return {"tta": int(recorded.get("tta", config.get("tta", 0))),
            "precision": str(recorded.get("precision", "fp32")),
            "channels_last": bool(recorded.get("channels_last", config.get("channels_last", False)))}


def _load_fp32(ckpt: dict) -> nn.Module:
    model = create_model(ckpt["model"], ckpt["num_classes"], **ckpt["model_options"])
    model.load_state_dict(ckpt["state_dict"])
    return model


# Other kinds (pruned, quantized) register their rebuild function here.
_LOADERS = {"fp32": _load_fp32}
_LAZY_KINDS = ("pruned", "int8")  # registered by cnnlib.compress, imported on first use


def register_kind(kind: str, loader) -> None:
    _LOADERS[kind] = loader
