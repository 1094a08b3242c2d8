"""The model registry: families register their factories; the rest of cnnlib looks them up.

Factories are thin, timm-style: ``name(num_classes=10, **kwargs)`` returns the class named
by its return annotation, built with the architecture's fixed arguments plus ``kwargs``.
The class holds the options: its keyword-only arguments with their defaults
(:func:`model_options`) and their checks, so docs and CLI stay in step with the code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from cnnlib.models.parts import check_int

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model: '{name}' is registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"model: unknown {name!r}; allowed: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_options(name: str) -> dict:
    """The options of model ``name`` with their defaults: the keyword-only arguments of the
    class its factory returns."""
    cls = inspect.signature(_factory(name), eval_str=True).return_annotation
    params = inspect.signature(cls).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def create_model(name: str, num_classes: int = 10, **options) -> nn.Module:
    """Build model ``name``; unknown names and unknown or invalid options raise ``ValueError``."""
    factory = _factory(name)
    allowed = model_options(name)
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"{name}: unknown option {key!r}; allowed: {', '.join(allowed) or 'none'}"
            )
    try:
        return factory(num_classes=check_int("num_classes", num_classes, low=1), **options)
    except ValueError as e:  # the classes check their options; name the model asked for
        raise ValueError(f"{name}: {e}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen alike."""
    return sum(p.numel() for p in model.parameters())
