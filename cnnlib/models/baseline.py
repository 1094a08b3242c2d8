"""The study's simple CNN: stacks of Conv-BN-ReLU, three stages, max-pool between them.

Layer layout. ``depth`` convolutions are spread over three stages as evenly as
possible, earlier stages taking the remainder: stage ``i`` gets
``depth // 3 + (1 if i < depth % 3 else 0)`` convs, so depth 2 -> 1,1,0;
3 -> 1,1,1; 4 -> 2,1,1; 6 -> 2,2,2; 10 -> 4,3,3. Stage ``i`` is ``width * 2**i``
channels wide and ends in a 2x2 max-pool (an empty stage is skipped). Then
global average pooling, dropout and a linear head.

``residual=True`` wraps pairs of convs inside a stage in a skip connection
(conv-BN-ReLU-conv-BN, add, ReLU); the skip is the identity, or a 1x1 conv + BN
projection where the pair changes the width. With an odd count the stage's
first conv stays unpaired (it is the one that changes the width), so a stage
with a single conv has no skip: depth 2 and 3 are the same network either way.
The number of ``kernel_size`` convs is ``depth`` in both variants, which is
what makes plain vs residual at equal depth a fair comparison.

``dropout`` acts on the pooled features before the head.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlib.models.parts import check_bool, check_choice, check_float, check_int, init_weights
from cnnlib.models.registry import register_model


def stage_sizes(depth: int) -> list[int]:
    """Convs per stage for a given depth (see the module docstring)."""
    return [depth // 3 + (1 if i < depth % 3 else 0) for i in range(3)]


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )


class ResidualPair(nn.Module):
    """Two convs around a skip connection (post-activation, like He et al.'s basic block)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()  # separate modules so hooks (captum, pruning) see each use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class BaselineCNN(nn.Module):
    """Simple CNN of ``depth`` Conv-BN-ReLU layers (2..10) in three stages."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        depth: int = 6,
        width: int = 32,
        kernel_size: int = 3,
        residual: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        depth = check_int("depth", depth, 2, 10)
        width = check_int("width", width, 1, 1024)
        kernel_size = check_choice("kernel_size", kernel_size, (3, 5, 7))
        residual = check_bool("residual", residual)
        dropout = check_float("dropout", dropout, 0.0, 1.0)
        stages = []
        c_in = 3
        for i, n in enumerate(stage_sizes(depth)):
            if n == 0:
                continue
            c_out = width * 2**i
            layers: list[nn.Module] = []
            if residual and n % 2:
                layers.append(ConvBNReLU(c_in, c_out, kernel_size))
                c_in, n = c_out, n - 1
            for _ in range(n // 2 if residual else n):
                block = ResidualPair if residual else ConvBNReLU
                layers.append(block(c_in, c_out, kernel_size))
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


@register_model
def baseline(num_classes: int = 10, **kwargs) -> BaselineCNN:
    """The study's simple CNN (options: see BaselineCNN)."""
    return BaselineCNN(num_classes, **kwargs)
