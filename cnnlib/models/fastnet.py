"""``fastnet``: the network of airbench94 (Keller Jordan, cifar10-airbench), in fp32.

Layout (shapes for a 32x32 input)::

    whiten  conv2x2, 3 -> 24, bias, no padding, weight frozen    -> 31x31
    GELU
    group1  conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU   -> 15x15
    group2  (same)                                                     -> 7x7
    group3  (same)                                                     -> 3x3
    maxpool3, flatten, linear (no bias), times ``scaling_factor``

Differences from the original are deliberate and small: fp32 everywhere
(airbench keeps weights in fp16 on the GPU; use autocast for mixed precision)
and the BatchNorm momentum written in PyTorch's convention (airbench's 0.6
is ``momentum=0.4`` here). The training recipe (label smoothing, Nesterov SGD,
bias learning-rate scaling, lookahead, TTA) belongs to the trainer, not here.

The whitening layer is meant to be set from data with :meth:`FastNet.init_from_data`
(airbench uses 5000 training images); until then it holds airbench's default
(dirac) init. Its bias is trainable; airbench trains it for the first 3 epochs only.
BatchNorm weights are frozen at 1, so only the BN biases train (parameter names
contain ``norm``, and the modules are ``nn.BatchNorm2d`` subclasses).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cnnlib.models.parts import check_float, check_int
from cnnlib.models.registry import register_model


class DiracConv(nn.Conv2d):
    """Conv whose first ``in_channels`` filters start as the identity (an implicit residual)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, padding="same", bias=False):
        super().__init__(c_in, c_out, kernel_size, padding=padding, bias=bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        w = self.weight.data
        nn.init.dirac_(w[: w.size(1)])


class FastBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a frozen unit weight and a trainable bias (airbench's ``BatchNorm``)."""

    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = DiracConv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FastBatchNorm(c_out)
        self.act1 = nn.GELU()
        self.conv2 = DiracConv(c_out, c_out)
        self.norm2 = FastBatchNorm(c_out)
        self.act2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        *,
        widths: tuple[int, int, int] = (64, 256, 256),
        scaling_factor: float = 1 / 9,
    ):
        super().__init__()
        widths = _check_widths(widths)
        scaling_factor = check_float("scaling_factor", scaling_factor, 1e-6, 1e6)
        whiten_width = 2 * 3 * 2 * 2  # +/- each of the 12 eigen-directions of 2x2x3 patches
        whiten = DiracConv(3, whiten_width, kernel_size=2, padding=0, bias=True)
        whiten.weight.requires_grad_(False)
        self.features = nn.Sequential(
            whiten,
            nn.GELU(),
            ConvGroup(whiten_width, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
        )
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scaling_factor = scaling_factor

    @property
    def whiten(self) -> nn.Conv2d:
        # A property, not a second attribute, so the state dict names the layer once.
        return self.features[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(x) * self.scaling_factor

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4, chunk: int = 1000) -> None:
        """Set the whitening conv from normalized images ``x`` ``[n, 3, 32, 32]``.

        The 24 filters are the eigenvectors of the (uncentered) covariance of all
        2x2 patches, scaled by ``1 / sqrt(eigenvalue + eps)``, largest first, and
        then the same filters negated, so GELU keeps both signs. The covariance
        is accumulated in float64 over chunks to bound memory (5000 images give
        4.8M patches).
        """
        w = self.whiten.weight
        c, h, k = w.shape[1:]
        if x.ndim != 4 or x.shape[1] != c or not x.is_floating_point():
            raise ValueError(
                f"fastnet: init_from_data needs normalized float images [n, {c}, H, W]; "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        cov = torch.zeros(c * h * k, c * h * k, dtype=torch.float64, device=w.device)
        n = 0
        for batch in x.split(chunk):
            batch = batch.to(device=w.device, dtype=torch.float32)
            patches = batch.unfold(2, h, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * h * k)
            patches = patches.double()
            cov += patches.T @ patches
            n += patches.shape[0]
        cov /= n
        eigvals, eigvecs = torch.linalg.eigh(cov, UPLO="U")
        eigvals = eigvals.flip(0).view(-1, 1, 1, 1)
        eigvecs = eigvecs.T.reshape(c * h * k, c, h, k).flip(0)
        scaled = eigvecs / torch.sqrt(eigvals.clamp_min(0) + eps)
        w.copy_(torch.cat((scaled, -scaled)).to(w.dtype))


def _check_widths(value) -> tuple[int, int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 3:
        with contextlib.suppress(ValueError):  # one message for the whole tuple, below
            return tuple(check_int("widths", v, 1) for v in value)
    raise ValueError(
        f"option 'widths' must be three positive integers, e.g. (64, 256, 256); got {value!r}"
    )


@register_model
def fastnet(num_classes: int = 10, **kwargs) -> FastNet:
    """airbench94's network (94% on CIFAR-10 in ~10 epochs with its recipe), 1.97M params."""
    return FastNet(num_classes, **kwargs)
