"""int8 quantization in FX graph mode for the x86 backend: post-training (PTQ) and QAT.

Static quantization with fbgemm kernels, per-channel int8 weights and uint8 activations,
calibrated on training images. It runs eagerly, with no compiler. FX mode is marked
deprecated upstream in favour of torchao's PT2E, whose int8 graphs only run fast through
``torch.compile``; FX still ships with the torch versions in requirements.txt.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn
from torch.ao.nn.intrinsic.qat import freeze_bn_stats
from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

from cnnlib.compress.finetune import fine_tune
from cnnlib.compress.prune import channel_widths, make_permanent
from cnnlib.data.augment import normalize
from cnnlib.models.fastnet import FastNet
from cnnlib.models.registry import count_parameters

BACKEND = "x86"

@contextlib.contextmanager
def quiet_ao():
    """Silence torch.ao's notices about its own internals; other warnings pass.

    The DeprecationWarning of FX quantization itself stays (hidden outside ``__main__`` by
    Python's defaults; the test suite filters it by name in pyproject.toml).
    """
    with warnings.catch_warnings():
        for text in ("Please use quant_min and quant_max", "quantized tensor creation functions",
                     "must run observer before"):
            warnings.filterwarnings("ignore", message=f".*{text}")
        yield


def _std_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` copy (FX treats only torch's own classes as leaf layers)."""
    padding = conv.padding
    if padding == "same":  # the quantized conv wants numbers
        padding = tuple(k // 2 for k in conv.kernel_size)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=padding, bias=conv.bias is not None)
    out.load_state_dict(conv.state_dict())
    out.weight.requires_grad_(conv.weight.requires_grad)  # fastnet's whitening stays frozen
    return out


def _std_norm(norm: nn.BatchNorm2d) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(norm.num_features, eps=norm.eps, momentum=norm.momentum)
    out.load_state_dict(norm.state_dict())
    out.weight.requires_grad_(norm.weight.requires_grad)
    return out


@torch.no_grad()
def _plain_fastnet(model: FastNet) -> nn.Sequential:
    """fastnet as a sequence of torch's own layers, each BatchNorm right after its conv.

    FX then folds every BatchNorm into its conv (or trains them fused, for QAT). fastnet
    normalizes after the max-pool; a positive per-channel scale commutes with max, so
    moving the norm before the pool gives the same function.
    """
    layers: list[nn.Module] = [_std_conv(model.whiten), nn.GELU()]
    for g in list(model.features)[2:]:
        if not bool((g.norm1.weight > 0).all()):
            raise ValueError("quantize: fastnet's BatchNorm after a max-pool needs a positive "
                             "scale to move before it")
        layers += [_std_conv(g.conv1), _std_norm(g.norm1), copy.deepcopy(g.pool), nn.GELU(),
                   _std_conv(g.conv2), _std_norm(g.norm2), nn.GELU()]
    head = nn.Linear(model.head.in_features, model.head.out_features, bias=False)
    head.weight.copy_(model.head.weight * model.scaling_factor)
    return nn.Sequential(*layers, copy.deepcopy(model.pool), nn.Flatten(), head).eval()


def _quantizable(model: nn.Module) -> nn.Module:
    """An fp32 copy that FX graph mode can trace (FX itself fuses conv-BN(-ReLU))."""
    model = make_permanent(copy.deepcopy(model)).cpu().eval()
    if isinstance(model, FastNet):
        return _plain_fastnet(model)
    return model


class QuantizedModel(nn.Module):
    """An int8 model for the x86 CPU backend; ``recipe`` says how to rebuild it from a checkpoint."""

    def __init__(self, qmodel: nn.Module, recipe: dict):
        super().__init__()
        self.qmodel = qmodel
        self.recipe = dict(recipe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qmodel(x)


def _example(mean, std) -> tuple[torch.Tensor]:
    return (normalize(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), mean, std),)


def _convert(prepared: nn.Module, source: nn.Module, method: str, images: int) -> QuantizedModel:
    with quiet_ao():
        qmodel = convert_fx(prepared.eval())
    recipe = {"backend": BACKEND, "method": method, "calibration_images": images,
              "channels": channel_widths(source), "params": count_parameters(source)}
    q = QuantizedModel(qmodel, recipe)
    if hasattr(source, "meta"):
        q.meta = {**source.meta, "kind": "int8"}
    return q


@torch.no_grad()
def quantize_int8(model: nn.Module, images: torch.Tensor, mean, std, *,
                  batch_size: int = 256) -> QuantizedModel:
    """Post-training static int8: fold BN, observe activations on ``images`` (uint8), convert.

    Weights are int8 per output channel; activations uint8 per tensor with histogram
    calibration (the x86 backend's defaults). Runs on the CPU.
    """
    torch.backends.quantized.engine = BACKEND  # the kernels the qconfig was chosen for
    with quiet_ao():
        prepared = prepare_fx(_quantizable(model), get_default_qconfig_mapping(BACKEND),
                              _example(mean, std))
        for chunk in images.split(batch_size):
            prepared(normalize(chunk, mean, std))
    return _convert(prepared, model, "ptq", len(images))


def quantize_qat(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, *,
                 steps: int, config: dict | None = None, batch_size: int = 256,
                 lr_scale: float = 0.002, seed: int = 0, progress: bool = False) -> QuantizedModel:
    """Quantization-aware training: fake-quantize, fine-tune ``steps`` batches, convert to int8.

    BatchNorm keeps the run's statistics (frozen): a short run only adapts the weights
    to the int8 grid, and fastnet's norms, moved before their max-pool, stay exact.
    """
    torch.backends.quantized.engine = BACKEND
    with quiet_ao():
        prepared = prepare_qat_fx(_quantizable(model).train(),
                                  get_default_qat_qconfig_mapping(BACKEND), _example(mean, std))
        prepared.apply(freeze_bn_stats)
        fine_tune(prepared, images, labels, mean, std, steps=steps, config=config,
                  batch_size=batch_size, lr_scale=lr_scale, seed=seed, progress=progress)
    return _convert(prepared, model, "qat", len(images))

