"""CIFAR ResNets.

``resnet20`` / ``resnet56``: He et al. 2016 (sec. 4.2), a 3x3 stem of 16 channels
and three stages of ``n`` basic blocks at 16, 32, 64 channels (depth = 6n + 2).
Where a block halves the resolution and doubles the width we use option B
shortcuts (1x1 conv + BN) instead of the paper's parameter-free option A
(strided identity, zero-padded channels): simpler, a standard module, and only
~3k extra parameters (0.27M and 0.86M in total).

``resnet18``: the ImageNet ResNet-18 adapted to 32x32 inputs as in the widely used
kuangliu/pytorch-cifar (3x3 stride-1 stem, no stem max-pool, 64-128-256-512,
option B shortcuts), 11.2M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlib.models.parts import PooledClassifier, residual_stages
from cnnlib.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(PooledClassifier):
    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], num_classes: int = 10):
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
            )
        ]
        stages, c_in = residual_stages(BasicBlock, widths[0], widths, blocks)
        layers += stages
        super().__init__(layers, c_in, num_classes)


@register_model
def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    """He et al. CIFAR ResNet-20 (3x3 basic blocks, 16-32-64), 0.27M params."""
    return CifarResNet((3, 3, 3), (16, 32, 64), num_classes, **kwargs)


@register_model
def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    """He et al. CIFAR ResNet-56 (9 blocks per stage, 16-32-64), 0.86M params."""
    return CifarResNet((9, 9, 9), (16, 32, 64), num_classes, **kwargs)


@register_model
def resnet18(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-18 with a 3x3 stem for 32x32 inputs (kuangliu/pytorch-cifar), 11.2M params."""
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, **kwargs)
