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

On the CPU under bf16 autocast, training convs on maps of at most 7x7 take a hand-written
filter gradient (``_SmallMapConv``: the same sums, one matrix product) where oneDNN's is slow.

The whitening layer is meant to be set from data with :meth:`FastNet.init_from_data`
(airbench uses 5000 training images); until then it holds airbench's default
(dirac) init. Its bias is trainable; airbench trains it for the first 3 epochs only
(the trainer's ``whiten_epochs``).
BatchNorm weights are frozen at 1, so only the BN biases train (parameter names
contain ``norm``, and the modules are ``nn.BatchNorm2d`` subclasses).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from cnnlib.models.parts import check_float, check_int
from cnnlib.models.registry import register_model


class _SmallMapConv(torch.autograd.Function):
    """A 3x3 'same' conv, bias-free, whose filter gradient is one matrix product over the
    unfolded input instead of oneDNN's weight-gradient kernel: on maps of 7x7 and 3x3
    (fastnet's groups 2 and 3) that kernel runs far below the CPU's matrix speed (the full
    fastnet's training step takes 0.89x the time on an AMX CPU; README, speed levers). On
    15x15 maps the unfolded copy costs more than it saves. Forward and input gradient are the
    library's, in the autocast dtype as ``F.conv2d`` would run them; CPU autocast only."""

    @staticmethod
    def forward(ctx, x, weight):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        xc, wc = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(xc, wc)
        ctx.dtypes = x.dtype, weight.dtype
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(xc, wc, padding=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        xc, wc = ctx.saved_tensors
        grad = grad.to(xc.dtype)
        gx = torch.ops.aten.convolution_backward(
            grad, xc, wc, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        n, c, h, w = xc.shape
        # rows: every output position; columns: its 3x3 window, channels last (one copy)
        cols = F.pad(xc, (1, 1, 1, 1)).permute(0, 2, 3, 1).unfold(1, 3, 1).unfold(2, 3, 1)
        cols = cols.permute(0, 1, 2, 4, 5, 3).reshape(n * h * w, 9 * c)
        g = grad.permute(0, 2, 3, 1).reshape(n * h * w, -1)
        gw = (g.t() @ cols).view(-1, 3, 3, c).permute(0, 3, 1, 2)
        return gx.to(ctx.dtypes[0]), gw.to(ctx.dtypes[1]).contiguous(memory_format=torch.channels_last)


class DiracConv(nn.Conv2d):
    """Conv whose first ``in_channels`` filters start as the identity (an implicit residual)."""

    small_map = 7 * 7  # maps of at most this many positions take _SmallMapConv's filter gradient

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, padding="same", bias=False):
        super().__init__(c_in, c_out, kernel_size, padding=padding, bias=bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        w = self.weight.data
        nn.init.dirac_(w[: w.size(1)])

    def _plain_3x3(self) -> bool:
        return (self.bias is None and self.kernel_size == (3, 3) and self.padding == "same"
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bf16 autocast only: fp32 runs keep oneDNN's sums, bit for bit (the results version)
        if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and self.weight.requires_grad and torch.is_grad_enabled()
                and x.shape[-2] * x.shape[-1] <= self.small_map and self._plain_3x3()):
            return _SmallMapConv.apply(x, self.weight)
        return super().forward(x)


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
