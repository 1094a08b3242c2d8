"""Wide ResNets (Zagoruyko & Komodakis 2016), pre-activation, for CIFAR.

WRN-d-k: a 3x3 stem of 16 channels, three stages of ``n = (d - 4) / 6`` blocks at
``16k, 32k, 64k`` channels (the 2nd and 3rd stage start with stride 2), final
BN-ReLU, global average pooling and a linear head. A block is
BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 plus a shortcut; where the shape changes
the shortcut is a 1x1 conv applied to the pre-activated input, as in the
authors' code. ``dropout`` (between the two convs) defaults to 0; the paper
uses 0.3.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlib.models.parts import PooledClassifier, check_float, residual_stages
from cnnlib.models.registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        # Fixed at construction, so the branch below is not data-dependent (compile-friendly).
        self.project = stride != 1 or c_in != c_out
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if self.project else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        skip = self.shortcut(o) if self.project else x
        out = self.conv1(o)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + skip


class WideResNet(PooledClassifier):
    def __init__(self, depth: int, widen: int, num_classes: int = 10, *, dropout: float = 0.0):
        dropout = check_float("dropout", dropout, 0.0, 1.0)
        if (depth - 4) % 6:
            raise ValueError(f"wide resnet: depth must be 6n + 4; got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False)]
        stages, c_in = residual_stages(PreActBlock, 16, widths, (n, n, n), dropout)
        layers += stages
        layers += [nn.BatchNorm2d(c_in), nn.ReLU()]
        super().__init__(layers, c_in, num_classes)


@register_model
def wrn16_4(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-16-4, 2.7M params."""
    return WideResNet(16, 4, num_classes, **kwargs)


@register_model
def wrn28_10(num_classes: int = 10, **kwargs) -> WideResNet:
    """WRN-28-10, 36.5M params."""
    return WideResNet(28, 10, num_classes, **kwargs)
