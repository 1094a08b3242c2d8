"""DenseNet-BC (Huang et al. 2017) for CIFAR.

A 3x3 stem of ``2 * growth`` channels, three dense blocks of
``n = (depth - 4) / 6`` bottleneck layers (BN-ReLU-conv1x1 to ``4 * growth``,
BN-ReLU-conv3x3 to ``growth``, concatenated to the input), separated by
transitions (BN-ReLU-conv1x1 that keeps ``floor(compression * channels)``,
then 2x2 average pooling); final BN-ReLU, global average pooling, linear head.

The default is the small DenseNet-BC-40 with growth 12 (0.18M parameters):
the paper's BC-100-12 (0.8M, ``depth=100``) is much slower per image, as
every layer re-reads all earlier feature maps.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlib.models.parts import PooledClassifier, check_float, check_int
from cnnlib.models.registry import register_model


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, growth: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.dropout(self.conv2(self.relu2(self.bn2(out))))
        return torch.cat([x, out], 1)


class Transition(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(2)
        )


class DenseNetBC(PooledClassifier):
    """DenseNet-BC; ``depth`` = 6n + 4 (40 -> 6 layers per block, 100 -> 16)."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        depth: int = 40,
        growth: int = 12,
        compression: float = 0.5,
        dropout: float = 0.0,
    ):
        depth = check_int("depth", depth, 10, 250)
        if (depth - 4) % 6:
            raise ValueError(f"option 'depth' must be 6n + 4 (e.g. 40, 100, 190); got {depth}")
        growth = check_int("growth", growth, 1, 128)
        compression = check_float("compression", compression, 0.1, 1.0, high_open=False)
        dropout = check_float("dropout", dropout, 0.0, 1.0)
        n = (depth - 4) // 6
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1, bias=False)]
        for i in range(3):
            block = []
            for _ in range(n):
                block.append(Bottleneck(c, growth, dropout))
                c += growth
            layers.append(nn.Sequential(*block))
            if i < 2:
                c_out = max(1, int(compression * c))
                layers.append(Transition(c, c_out))
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        super().__init__(layers, c, num_classes)


@register_model
def densenet_bc(num_classes: int = 10, **kwargs) -> DenseNetBC:
    """DenseNet-BC, by default BC-40 with growth 12 (options: see DenseNetBC)."""
    return DenseNetBC(num_classes, **kwargs)
