"""Model registry and the CIFAR model families of the study.

Every model takes normalized ``float32`` images ``[B, 3, 32, 32]`` and returns
logits ``[B, num_classes]``. Each one exposes ``features`` (an ``nn.Sequential``
ending at the last spatial feature map, a natural Grad-CAM target) and ``head``
(the final ``nn.Linear``), so interpretation and compression code can treat all
families alike.

Factories are plain functions ``name(num_classes=10, *, option=default, ...)``
registered with :func:`register_model`; their keyword defaults are the model's
options (:func:`model_options`), which keeps docs and CLI in step with the code.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

from torch import nn

__all__ = [
    "count_parameters",
    "create_model",
    "list_models",
    "model_options",
    "register_model",
]

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
    """The keyword options of model ``name`` with their defaults (``num_classes`` excluded)."""
    params = inspect.signature(_factory(name)).parameters.values()
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
    num_classes = check_int(name, "num_classes", num_classes, low=1)
    return factory(num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen alike."""
    return sum(p.numel() for p in model.parameters())


# -- option checks and init shared by the family modules ------------------------------------


def check_int(model: str, option: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high``; bools are refused (``True`` is not a depth)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and low <= value and (high is None or value <= high):
        return int(value)
    allowed = f"{low}..{high}" if high is not None else f">= {low}"
    raise ValueError(f"{model}: option {option!r} must be an integer {allowed}; got {value!r}")


def check_float(
    model: str, option: str, value, low: float, high: float, high_open: bool = True
) -> float:
    """``value`` as a float in ``[low, high)`` (or ``[low, high]`` when ``high_open`` is False)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and low <= value and (value < high if high_open else value <= high):
        return float(value)
    bracket = ")" if high_open else "]"
    raise ValueError(
        f"{model}: option {option!r} must be a number in [{low}, {high}{bracket}; got {value!r}"
    )


def check_bool(model: str, option: str, value) -> bool:
    """``value`` if it is a real bool (0/1 would hide a swapped argument)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"{model}: option {option!r} must be True or False; got {value!r}")


def check_choice(model: str, option: str, value, allowed: tuple) -> object:
    """The element of ``allowed`` equal to ``value``; integer choices refuse floats and bools."""
    for a in allowed:
        same_kind = not isinstance(a, int) or (
            isinstance(value, numbers.Integral) and not isinstance(value, bool)
        )
        if same_kind and value == a:
            return a
    choices = ", ".join(str(a) for a in allowed)
    raise ValueError(f"{model}: option {option!r} must be one of {choices}; got {value!r}")


def init_weights(model: nn.Module) -> nn.Module:
    """He-normal convs (fan_out, as torchvision), unit/zero norms, zero linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


class PooledClassifier(nn.Module):
    """``features`` -> global average pool -> linear head, He-initialized: the tail that
    the ResNet, WRN and DenseNet families share (their classes only build ``features``)."""

    def __init__(self, features: list[nn.Module], channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def residual_stages(block, c_in: int, widths, counts, *extra) -> tuple[list[nn.Module], int]:
    """ResNet-style stages: ``counts[i]`` blocks ``block(c_in, c_out, stride, *extra)`` of
    width ``widths[i]``; each stage after the first halves the resolution in its first block.
    Returns the stages (one ``nn.Sequential`` each) and the last width."""
    stages: list[nn.Module] = []
    for i, (n, c_out) in enumerate(zip(counts, widths, strict=True)):
        blocks = []
        for j in range(n):
            blocks.append(block(c_in, c_out, 2 if i > 0 and j == 0 else 1, *extra))
            c_in = c_out
        stages.append(nn.Sequential(*blocks))
    return stages, c_in


# The families register themselves on import; they use the checks defined above.
from . import baseline, densenet, fastnet, resnet, wrn  # noqa: E402, F401
