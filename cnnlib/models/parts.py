"""What the model families share: option checks, weight init, common building blocks."""

from __future__ import annotations

import numbers

from torch import nn

from cnnlib import _checks


def check_int(option: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high``; the package's one integer check, worded for options."""
    return _checks.check_int(f"option {option!r}", value, low, high)


def check_float(option: str, value, low: float, high: float, high_open: bool = True) -> float:
    """``value`` as a float in ``[low, high)`` (or ``[low, high]`` when ``high_open`` is False)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and low <= value and (value < high if high_open else value <= high):
        return float(value)
    bracket = ")" if high_open else "]"
    raise ValueError(f"option {option!r} must be a number in [{low}, {high}{bracket}; got {value!r}")


def check_bool(option: str, value) -> bool:
    """``value`` if it is a real bool (0/1 would hide a swapped argument)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"option {option!r} must be True or False; got {value!r}")


def check_choice(option: str, value, allowed: tuple) -> object:
    """The element of ``allowed`` equal to ``value``; integer choices refuse floats and bools."""
    for a in allowed:
        same_kind = not isinstance(a, int) or (
            isinstance(value, numbers.Integral) and not isinstance(value, bool)
        )
        if same_kind and value == a:
            return a
    choices = ", ".join(str(a) for a in allowed)
    raise ValueError(f"option {option!r} must be one of {choices}; got {value!r}")


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
