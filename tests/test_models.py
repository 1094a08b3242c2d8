"""Model registry and model families: shapes, gradients, options, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlib.models.baseline import ResidualPair, stage_sizes
from cnnlib.models.fastnet import FastNet
from cnnlib.models.registry import (
    count_parameters,
    create_model,
    list_models,
    model_options,
    register_model,
)

ALL_MODELS = [
    "baseline",
    "densenet_bc",
    "fastnet",
    "resnet18",
    "resnet20",
    "resnet56",
    "wrn16_4",
    "wrn28_10",
]


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _main_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Convs that count towards depth: everything but 1x1 projection shortcuts."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]


def test_list_models_is_sorted_and_complete():
    assert list_models() == ALL_MODELS


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name, num_classes):
    torch.manual_seed(0)
    model = create_model(name, num_classes)
    model.train()
    out = model(_images())
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    F.cross_entropy(out, torch.tensor([0, num_classes - 1])).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname
        else:
            assert p.grad is None, pname


@pytest.mark.parametrize("name", ALL_MODELS)
def test_channels_last_matches_nchw(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = _images()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["baseline", "fastnet", "resnet20", "densenet_bc", "wrn16_4"])
def test_traces_as_one_graph(name):
    # fullgraph=True fails on any graph break, i.e. Python-side data-dependent control flow;
    # the eager backend checks this without paying for code generation.
    torch._dynamo.reset()
    model = create_model(name).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert compiled(_images()).shape == (2, 10)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_common_attributes(name):
    # interpretation and compression code rely on `features` and `head` in every family
    model = create_model(name, 100)
    assert isinstance(model.features, nn.Sequential)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 100
    with torch.no_grad():
        feats = model.eval().features(_images(1))
    assert feats.ndim == 4 and feats.shape[1] == model.head.in_features


def test_unknown_model_error():
    with pytest.raises(ValueError) as err:
        create_model("vgg16")
    msg = str(err.value)
    assert msg == f"model: unknown 'vgg16'; allowed: {', '.join(ALL_MODELS)}"
    with pytest.raises(ValueError, match="unknown 'vgg16'"):
        model_options("vgg16")


@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("baseline", {"depth": 1}, "depth"),
        ("baseline", {"depth": 11}, "depth"),
        ("baseline", {"depth": 6.0}, "depth"),
        ("baseline", {"kernel_size": 4}, "kernel_size"),
        ("baseline", {"dropout": 1.5}, "dropout"),
        ("baseline", {"dropout": -0.1}, "dropout"),
        ("baseline", {"stage_dropout": 0.1}, "stage_dropout"),
        ("baseline", {"width": 0}, "width"),
        ("baseline", {"residual": 1}, "residual"),
        ("baseline", {"depht": 6}, "depht"),
        ("resnet20", {"dropout": 0.1}, "dropout"),
        ("wrn16_4", {"dropout": 1.0}, "dropout"),
        ("densenet_bc", {"depth": 41}, "depth"),
        ("densenet_bc", {"growth": 0}, "growth"),
        ("densenet_bc", {"compression": 0.0}, "compression"),
        ("fastnet", {"widths": (64, 256)}, "widths"),
        ("fastnet", {"widths": (64, 0, 256)}, "widths"),
    ],
)
def test_bad_options_raise_one_line(name, options, option):
    with pytest.raises(ValueError) as err:
        create_model(name, **options)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{name}: ")
    assert repr(option) in msg


def test_unknown_option_lists_allowed():
    with pytest.raises(ValueError, match="allowed: depth, width, kernel_size, residual"):
        create_model("baseline", depht=6)
    with pytest.raises(ValueError, match="allowed: none"):
        create_model("resnet20", dropout=0.1)


@pytest.mark.parametrize("num_classes", [0, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", num_classes)


def test_model_options_are_the_class_keyword_defaults():
    assert model_options("baseline") == {
        "depth": 6,
        "width": 32,
        "kernel_size": 3,
        "residual": False,
        "dropout": 0.0,
    }
    assert model_options("resnet56") == {}
    assert model_options("wrn28_10") == {"dropout": 0.0}
    assert model_options("fastnet")["widths"] == (64, 256, 256)
    assert set(model_options("densenet_bc")) == {"depth", "growth", "compression", "dropout"}


def test_register_model_rejects_duplicates():
    def baseline(num_classes=10):  # same name as the registered one
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="twice"):
        register_model(baseline)


def test_baseline_stage_rule():
    assert stage_sizes(2) == [1, 1, 0]
    assert stage_sizes(3) == [1, 1, 1]
    assert stage_sizes(4) == [2, 1, 1]
    assert stage_sizes(6) == [2, 2, 2]
    assert stage_sizes(10) == [4, 3, 3]
    widths = [c.out_channels for c in _main_convs(create_model("baseline"))]
    assert widths == [32, 32, 64, 64, 128, 128]
    widths = [c.out_channels for c in _main_convs(create_model("baseline", depth=2, width=16))]
    assert widths == [16, 32]


@pytest.mark.parametrize("depth", range(2, 11))
def test_baseline_depth_counts_convs(depth):
    plain = create_model("baseline", depth=depth)
    residual = create_model("baseline", depth=depth, residual=True)
    assert len(_main_convs(plain)) == depth
    assert len(_main_convs(residual)) == depth
    assert all(c.kernel_size == (3, 3) for c in _main_convs(residual))
    # every stage with two or more convs gets floor(n / 2) skip connections
    pairs = sum(1 for m in residual.modules() if isinstance(m, ResidualPair))
    assert pairs == sum(n // 2 for n in stage_sizes(depth))
    assert not any(isinstance(m, ResidualPair) for m in plain.modules())


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_baseline_variants_forward(kernel_size):
    model = create_model(
        "baseline",
        100,
        depth=7,
        width=8,
        kernel_size=kernel_size,
        residual=True,
        dropout=0.5,
    )
    assert {c.kernel_size for c in _main_convs(model)} == {(kernel_size, kernel_size)}
    out = model(_images())
    assert out.shape == (2, 100)
    out.sum().backward()


def test_fastnet_structure():
    model = create_model("fastnet")
    whiten = model.features[0]
    assert isinstance(whiten, nn.Conv2d)
    assert whiten.kernel_size == (2, 2) and whiten.out_channels == 24
    assert whiten.padding == (0, 0) and whiten.bias is not None
    assert not whiten.weight.requires_grad and whiten.bias.requires_grad
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    for bn in norms:
        assert bn.eps == 1e-12 and bn.momentum == pytest.approx(0.4)
        assert not bn.weight.requires_grad and bn.bias.requires_grad
    norm_params = [n for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    assert len(norm_params) == 6
    assert model.head.bias is None
    assert model.whiten is whiten
    assert not any(k.startswith("whiten.") for k in model.state_dict())  # named once
    # the other convs start as identities on their first in_channels filters
    conv = model.features[3].conv2
    assert torch.equal(conv.weight[:, :, 1, 1], torch.eye(conv.in_channels))


def test_fastnet_init_from_data_whitens():
    g = torch.Generator().manual_seed(0)
    # Smooth, channel-correlated images: their 2x2 patches are far from white.
    coarse = torch.randn(64, 3, 8, 8, generator=g)
    x = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    x = torch.einsum(
        "ij,njhw->nihw", torch.tensor([[1, 0.8, 0.6], [0.7, 1, 0.5], [0, 0.3, 1.0]]), x
    )

    model = create_model("fastnet")
    assert isinstance(model, FastNet)
    with pytest.raises(ValueError, match="init_from_data"):
        model.init_from_data(x[:, :2])
    model.init_from_data(x, eps=1e-7)
    w = model.features[0].weight
    out = F.conv2d(x, w)  # no bias: the patches' uncentered covariance, as in airbench
    flat = out.permute(0, 2, 3, 1).reshape(-1, 24).double()
    cov = flat.T @ flat / flat.shape[0]
    torch.testing.assert_close(cov[:12, :12], torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(w[12:], -w[:12])
    # largest eigen-direction first: the first filter has the smallest norm
    norms = w[:12].flatten(1).norm(dim=1)
    assert torch.all(norms[:-1] <= norms[1:] + 1e-6)

    # the input covariance really was far from white
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12)
    raw = patches.T @ patches / patches.shape[0]
    assert (raw - torch.eye(12)).abs().max() > 0.5


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet20", 0.27e6),
        ("resnet56", 0.85e6),
        ("resnet18", 11.2e6),
        ("wrn28_10", 36.5e6),
        ("wrn16_4", 2.75e6),
        ("fastnet", 1.97e6),
        ("densenet_bc", 0.176e6),
    ],
)
def test_parameter_counts(name, expected):
    assert count_parameters(create_model(name)) == pytest.approx(expected, rel=0.05)


def test_count_parameters_includes_frozen():
    model = create_model("fastnet")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_parameters(model) == trainable + 24 * 12 + 2 * (64 + 256 + 256)


def test_options_reach_the_model():
    assert count_parameters(create_model("fastnet", widths=(32, 64, 64))) < 0.3e6
    assert count_parameters(create_model("densenet_bc", depth=100)) == pytest.approx(
        0.8e6, rel=0.05
    )
    assert any(isinstance(m, nn.Dropout) for m in create_model("wrn16_4", dropout=0.3).modules())
    assert not any(isinstance(m, nn.Dropout) for m in create_model("wrn16_4").modules())
