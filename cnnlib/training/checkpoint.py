"""Checkpoints: written atomically, read only with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
can be loaded without unpickling code. A file that carries code is refused, and so is
one that fails its zip CRCs (damaged) or holds NaN/inf tensors; `load_model` also checks
what the model computes (`check_outputs`): finite tensors can still give NaN outputs.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from cnnlib._fileio import DamagedFileError, atomic_write, first_line, verify_zip
from cnnlib.models.registry import create_model

FORMAT = "cnnlib-checkpoint-v1"


def save_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """torch.save through `fileio.atomic_write`: a crash never leaves half a file."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_safe(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint dict; refuse one that would need code to unpickle, a damaged one
    (DamagedFileError) and one holding non-finite tensors (DamagedFileError)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    if not path.is_file():
        raise ValueError(f"checkpoint: {path} is not a file")
    verify_zip(path, "checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text advises weights_only=False, i.e. running the file's code: not passed on.
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it calls {found.group(1)})" if found else ""
        raise ValueError(f"checkpoint: refusing {path}: it is not a plain-data checkpoint{what}; "
                         "nothing was executed") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise DamagedFileError(f"checkpoint: {path} is damaged or not a torch file: "
                               f"{first_line(e)}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint: {path} holds a {type(obj).__name__}, expected a dict")
    bad = _non_finite(obj)
    if bad:
        raise DamagedFileError(f"checkpoint: {path} holds NaN or inf in {bad}; refusing it")
    return obj


def _non_finite(obj, where: str = "") -> str | None:
    """The key path of the first floating tensor holding NaN or inf, else None."""
    if isinstance(obj, torch.Tensor):
        ok = obj.is_quantized or not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        return None if ok else where or "the tensor"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for k, v in items:
        bad = _non_finite(v, f"{where}.{k}" if where else str(k))
        if bad:
            return bad
    return None


def model_checkpoint(model: nn.Module, config: dict, *, classes, mean, std, metrics=None,
                     evaluation=None) -> dict:
    """The dict saved as a finished model: enough to rebuild and use it with no other file.

    `evaluation` holds the settings its test metrics were measured with (TTA level,
    precision, memory format), so that `cnnlib evaluate` reproduces them by default.
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


def load_model(path: str | os.PathLike, device="cpu", *, loaders=None) -> nn.Module:
    """A ready model (eval mode) from a checkpoint; its metadata is in `model.meta`.

    `model.meta` holds classes, mean, std, config and metrics: what `evaluate`
    and `predict` need besides the weights. This reads fp32 checkpoints (also those whose
    weights `compact` stored in bf16: loaded into fp32 parameters); `loaders`
    maps other kinds to their rebuild function (`cnnlib.load_model`, from
    `cnnlib.compress`, passes the compressed kinds).
    """
    ckpt = load_safe(path)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path} is not a cnnlib model checkpoint (format {ckpt.get('format')!r})")
    kind = ckpt.get("kind", "fp32")
    loaders = {"fp32": _load_fp32, **(loaders or {})}
    loader = loaders.get(kind)
    if loader is None:
        raise ValueError(f"checkpoint: {path} has kind {kind!r}; supported: {', '.join(loaders)}")
    _check_meta(ckpt, path)
    try:
        model = loader(ckpt)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        reason = f"missing {e}" if isinstance(e, KeyError) else first_line(e)
        raise ValueError(f"checkpoint: {path} does not rebuild its {kind} model: {reason}") from None
    check_outputs(model.eval(), ckpt["mean"], ckpt["std"], path)
    model = model.to(device).eval()  # a device error is not the file's fault: its own message
    model.meta = {k: ckpt[k] for k in ("classes", "mean", "std", "config", "metrics", "kind")}
    model.meta["evaluation"] = evaluation_settings(ckpt)
    return model


def compact(ckpt: dict) -> dict:
    """`ckpt` with the weights bf16 evaluation rounds to bf16 anyway stored in bf16.

    Under bf16 autocast a convolution or linear layer casts its fp32 weight to bf16 (round
    to nearest even) before use, so storing that bf16 value gives bit-identical predictions
    at the precision the metrics were measured with, in about half the bytes; loading turns
    it back into fp32 parameters. Those weights are the float tensors of 2 or more
    dimensions; normalization parameters and buffers stay fp32. Checkpoints measured in
    another precision, and compressed kinds, are returned unchanged.
    """
    if ckpt.get("kind", "fp32") != "fp32" or evaluation_settings(ckpt)["precision"] != "bf16":
        return ckpt
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() and v.dim() >= 2 else v
             for k, v in ckpt["state_dict"].items()}
    return {**ckpt, "state_dict": state, "stored_weights": "bf16"}


def evaluation_settings(ckpt: dict) -> dict:
    """TTA level, precision and memory format a checkpoint's metrics were measured with.
    Checkpoints written before these were recorded used the config's `tta` and
    `channels_last`, and fp32 (what `auto` meant on a CPU then)."""
    recorded = dict(ckpt.get("evaluation") or {})
    config = ckpt.get("config") or {}
    return {"tta": int(recorded.get("tta", config.get("tta", 0))),
            "precision": str(recorded.get("precision", "fp32")),
            "channels_last": bool(recorded.get("channels_last", config.get("channels_last", False)))}


def _check_meta(ckpt: dict, path) -> None:
    """The metadata every kind needs (what `evaluate` and `predict` read), checked up front."""
    def bad(what):
        raise ValueError(f"checkpoint: {path}: {what}")

    for key, kind in (("classes", list), ("mean", list), ("std", list), ("config", dict),
                      ("metrics", dict), ("num_classes", int), ("kind", str)):
        if key not in ckpt:
            bad(f"missing {key!r}")
        if not isinstance(ckpt[key], kind):
            bad(f"{key!r} is a {type(ckpt[key]).__name__}, expected a {kind.__name__}")
    classes = ckpt["classes"]
    if not classes or not all(isinstance(c, str) for c in classes):
        bad("'classes' must be a non-empty list of names")
    if len(classes) != ckpt["num_classes"]:
        bad(f"{len(classes)} class names for a model with {ckpt['num_classes']} outputs")
    for key in ("mean", "std"):
        if len(ckpt[key]) != 3 or not all(isinstance(v, int | float) for v in ckpt[key]):
            bad(f"{key!r} must be 3 numbers (one per channel)")
        if not all(math.isfinite(v) and (key == "mean" or v > 0) for v in ckpt[key]):
            # Finite numbers, positive std: anything else turns every input into NaN.
            raise DamagedFileError(f"checkpoint: {path}: {key!r} is {ckpt[key]}; expected "
                                   f"{'finite numbers' if key == 'mean' else 'positive finite numbers'}")
    if not isinstance(ckpt["config"].get("dataset"), str):
        bad("its config names no dataset")


PROBE_SEED, PROBE_IMAGES = 0, 2  # the fixed probe batch: uniform random 32x32 RGB images


def check_outputs(model: nn.Module, mean, std, path) -> None:
    """Refuse (DamagedFileError) a model whose outputs would be garbage from finite weights:
    a BatchNorm variance that is not positive and finite, or non-finite logits on a fixed
    probe batch. Finite tensors pass `load_safe`, yet a negative variance gives NaN."""
    for name, m in model.named_modules():
        var = getattr(m, "running_var", None)
        if isinstance(m, nn.modules.batchnorm._NormBase) and isinstance(var, torch.Tensor):
            if not bool(torch.isfinite(var).all() and (var > 0).all()):
                worst = float(var[~(torch.isfinite(var) & (var > 0))][0])
                raise DamagedFileError(f"checkpoint: {path}: BatchNorm {name}.running_var holds "
                                       f"{worst} (a variance must be positive); refusing it")
    x = torch.rand(PROBE_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(PROBE_SEED))
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    try:
        with torch.no_grad():
            logits = model(x)
    except RuntimeError as e:  # rebuilt, yet its layers do not fit together
        raise ValueError(f"checkpoint: {path}: its model fails on a 32x32 probe batch: "
                         f"{first_line(e)}") from None
    if not bool(torch.isfinite(logits).all()):
        raise DamagedFileError(f"checkpoint: {path}: its forward pass on a fixed probe batch "
                               "gives NaN or inf logits; refusing it")


def _load_fp32(ckpt: dict) -> nn.Module:
    model = create_model(ckpt["model"], ckpt["num_classes"], **ckpt["model_options"])
    model.load_state_dict(ckpt["state_dict"])
    return model
