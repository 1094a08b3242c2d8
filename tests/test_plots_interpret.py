"""Figures and interpretation: every plot writes a PNG; hooks, Grad-CAM and saliency behave."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnlib import interpret, plots
from cnnlib.evaluate import confusion_matrix
from cnnlib.models import create_model

MODELS = ["baseline", "fastnet", "resnet20"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _model(name: str, num_classes: int = 10, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes, **options)


def _inputs(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC), path


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _confusion(num_classes: int, n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and mostly-right predictions, so the diagonal stands out."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    noise = torch.randint(num_classes, (n,), generator=g)
    preds = torch.where(torch.rand(n, generator=g) < 0.6, labels, noise)
    return preds, labels


def _data(request, name: str):
    return request.getfixturevalue(f"synthetic_{name}")


# -- interpret: layers and feature maps ---------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_feature_maps_one_entry_per_conv_and_hooks_removed(name):
    model = _model(name)
    model.train()
    convs = interpret.conv_layers(model)
    assert convs and all(isinstance(m, nn.Conv2d) for _, m in convs)
    maps = interpret.feature_maps(model, _inputs(3))
    assert list(maps) == [n for n, _ in convs]
    for act in maps.values():
        assert act.dim() == 4 and act.shape[0] == 3 and act.device.type == "cpu"
    assert _no_hooks(model)
    assert model.training  # the caller's mode is restored


def test_feature_maps_removes_hooks_when_forward_fails():
    model = _model("baseline")
    with pytest.raises(RuntimeError):
        interpret.feature_maps(model, torch.randn(1, 5, 32, 32))
    assert _no_hooks(model)


def test_feature_maps_named_layers_and_unknown_name():
    model = _model("resnet20")
    maps = interpret.feature_maps(model, _inputs(1), layers=["features.0.0", "features"])
    assert maps["features.0.0"].shape == (1, 16, 32, 32)
    assert maps["features"].shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="not a module"):
        interpret.feature_maps(model, _inputs(1), layers=["nope"])


def test_feature_maps_of_channels_last_model_are_contiguous():
    model = _model("baseline").to(memory_format=torch.channels_last)
    x = _inputs(2).contiguous(memory_format=torch.channels_last)
    maps = interpret.feature_maps(model, x)
    assert all(a.is_contiguous() for a in maps.values())


def test_save_feature_maps_writes_pngs(tmp_path, synthetic_cifar10):
    data = synthetic_cifar10
    model = _model("baseline", depth=3)
    images, labels = data.test_images[:2], data.test_labels[:2]
    paths = interpret.save_feature_maps(model, images, (0.5,) * 3, (0.25,) * 3, tmp_path / "maps",
                                        max_channels=8, classes=data.classes, labels=labels)
    n_convs = len(interpret.conv_layers(model))
    assert len(paths) == 2 * (n_convs + 1)
    assert len(set(paths)) == len(paths)
    assert {p.name for p in paths} >= {"sample0_overview.png", "sample1_features-0-0-0.png"}
    for p in paths:
        _assert_png(p)
    assert _no_hooks(model)


@pytest.mark.parametrize(
    "name, options, kernel", [("baseline", {"kernel_size": 7}, 7), ("fastnet", {}, 2),
                              ("resnet20", {}, 3)]
)
def test_first_layer_filters(tmp_path, name, options, kernel):
    fig = interpret.plot_first_layer_filters(_model(name, **options), tmp_path / "f.png")
    assert isinstance(fig, Figure)
    assert f"{kernel}x{kernel}" in fig.axes[0].get_title()
    _assert_png(tmp_path / "f.png")


# -- interpret: attributions --------------------------------------------------------------------


def _check_unit_maps(maps: torch.Tensor, n: int, nonzero: bool = True) -> None:
    assert maps.shape == (n, 32, 32)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    if nonzero:  # each image's map is scaled to a maximum of 1
        assert (maps.flatten(1).amax(1) == 1).all()


def _check_gradcam(model: nn.Module, x: torch.Tensor, **kwargs) -> None:
    """Grad-CAM of one image for every class: after its ReLU a class may get an all-zero
    map (a random model has no evidence for it), but some class must get a real one."""
    n = 10
    maps = interpret.gradcam(model, x[:1].expand(n, -1, -1, -1), torch.arange(n), **kwargs)
    _check_unit_maps(maps, n, nonzero=False)
    assert maps.amax() == 1


@pytest.mark.parametrize("name", MODELS)
def test_gradcam_and_saliency_shapes_and_range(name):
    model = _model(name)
    x, target = _inputs(3), torch.tensor([0, 3, 9])
    _check_unit_maps(interpret.gradcam(model, x, target), 3, nonzero=False)
    _check_gradcam(model, x)
    _check_unit_maps(interpret.saliency(model, x, target), 3)
    assert _no_hooks(model)
    assert model.training  # restored after the eval-mode attribution


def test_attributions_with_frozen_channels_last_inplace_model_under_no_grad():
    model = _model("fastnet").to(memory_format=torch.channels_last)
    model.requires_grad_(False)
    relu_model = _model("baseline")
    for m in relu_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    x = _inputs(2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for net in (model, relu_model):
            _check_gradcam(net, x)
            _check_gradcam(net, x, layer="features")
            _check_unit_maps(interpret.saliency(net, x, torch.tensor([1, 2])), 2)
    assert all(m.inplace for m in relu_model.modules() if isinstance(m, nn.ReLU))
    assert all(p.grad is None for p in relu_model.parameters())


def test_default_gradcam_layer_skips_shortcut_projections():
    model = _model("baseline", depth=6, residual=True)  # last pair has a 1x1 projection
    assert interpret.conv_layers(model)[-1][1].kernel_size == (1, 1)
    layer = interpret.default_gradcam_layer(model)
    assert model.get_submodule(layer).kernel_size == (3, 3)


def test_plot_attributions_writes_png(tmp_path, synthetic_cifar10):
    images = synthetic_cifar10.test_images[:3]
    x = interpret.normalize(images, (0.5,) * 3, (0.25,) * 3)
    model = _model("resnet20")
    target = synthetic_cifar10.test_labels[:3]
    maps = {"Grad-CAM": interpret.gradcam(model, x, target),
            "saliency": interpret.saliency(model, x, target)}
    fig = interpret.plot_attributions(images, maps, titles=["a", "b", "c"], path=tmp_path / "a.png")
    assert len(fig.axes) == 9
    _assert_png(tmp_path / "a.png")


def test_misclassified_most_confident_mistakes_first():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    preds = torch.tensor([0, 2, 2, 0, 1, 5])  # wrong at 1, 3, 4
    probs = torch.full((6, 6), 0.01)
    probs[torch.arange(6), preds] = torch.tensor([0.99, 0.5, 0.9, 0.8, 0.95, 0.7])
    assert interpret.misclassified(preds, labels, probs) == [4, 3, 1]
    assert interpret.misclassified(preds, labels, probs, k=2) == [4, 3]
    assert interpret.misclassified(labels, labels, probs) == []
    titles = interpret.mistake_titles([4], preds, labels, probs, [f"c{i}" for i in range(6)])
    assert titles == ["c4 -> c1 (0.95)"]


# -- plots ---------------------------------------------------------------------------------------


def test_superclass_order_groups_classes(synthetic_cifar100):
    f2c = synthetic_cifar100.fine_to_coarse
    order, bounds = plots.superclass_order(f2c)
    assert sorted(order) == list(range(100))
    assert bounds == sorted(bounds) and len(bounds) == len(set(f2c.tolist())) - 1
    edges = [0, *bounds, 100]
    groups = [{int(f2c[i]) for i in order[a:b]} for a, b in zip(edges, edges[1:], strict=False)]
    assert all(len(g) == 1 for g in groups)
    assert len(set.union(*groups)) == len(groups)


def test_superclass_order_puts_unknown_last():
    order, bounds = plots.superclass_order(torch.tensor([1, -1, 0, 1, 0]))
    assert order == [2, 4, 0, 3, 1] and bounds == [2, 4]


def test_superclass_confusion_sums_fine_counts(synthetic_cifar100):
    f2c = synthetic_cifar100.fine_to_coarse
    preds, labels = _confusion(100)
    fine = confusion_matrix(preds, labels, 100)
    coarse = plots.superclass_confusion(fine, f2c)
    assert coarse.shape == (20, 20)
    assert coarse.sum() == fine.sum()
    assert coarse.diag().sum() == (f2c[preds] == f2c[labels]).sum()


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_class_plots_write_pngs(tmp_path, request, dataset):
    data = _data(request, dataset)
    n = data.num_classes
    preds, labels = _confusion(n)
    conf = confusion_matrix(preds, labels, n)
    order, bounds = (None, None)
    if data.fine_to_coarse is not None:
        order, bounds = plots.superclass_order(data.fine_to_coarse)
    plots.plot_confusion(conf, data.classes, tmp_path / "c.png", order=order, group_bounds=bounds,
                         title="test")
    acc = conf.diag() / conf.sum(1)
    plots.plot_per_class_accuracy({"a": acc, "b": acc.flip(0)}, data.classes, tmp_path / "two.png")
    names = ["c.png", "two.png"]
    if n <= 10:  # the single-series layout of many classes is checked below, without a file
        plots.plot_per_class_accuracy(acc, data.classes, tmp_path / "one.png")
        names.append("one.png")
    if data.fine_to_coarse is not None:
        coarse = plots.superclass_confusion(conf, data.fine_to_coarse)
        plots.plot_confusion(coarse, data.superclasses, tmp_path / "sub" / "coarse.png")
        names.append("sub/coarse.png")
    for name in names:
        _assert_png(tmp_path / name)


def test_plot_confusion_annotates_only_small_matrices(tmp_path):
    counts = torch.eye(10, dtype=torch.long).numpy() * 5
    fig10 = plots.plot_confusion(counts, [str(i) for i in range(10)], tmp_path / "n.png",
                                 normalize=False)
    _assert_png(tmp_path / "n.png")
    fig100 = plots.plot_confusion(torch.eye(100, dtype=torch.long), [str(i) for i in range(100)])
    assert len(fig10.axes[0].texts) == 100
    assert len(fig100.axes[0].texts) == 0


def test_per_class_accuracy_of_many_classes_is_sorted():
    acc = torch.linspace(1, 0, 30)
    fig = plots.plot_per_class_accuracy(acc, [f"c{i}" for i in range(30)])
    ax = fig.axes[0]
    assert len(ax.patches) == 30
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "c29" and labels[-1] == "c0"  # lowest accuracy at the bottom


def _history(epochs: int, with_val: bool) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 2 / e, "train_acc": 1 - 1 / (e + 1), "lr": 0.1,
               "seconds": 1.0}
        if with_val:
            row.update(val_loss=2.2 / e, val_acc=1 - 1.2 / (e + 1))
        rows.append(row)
    return rows


def _sweep_table() -> pd.DataFrame:
    rows = [{"depth": d, "residual": r, "seed": s, "test_acc": 0.5 + 0.02 * d + 0.01 * s + 0.05 * r}
            for d in (2, 4, 6) for r in (False, True) for s in range(3)]
    return pd.DataFrame(rows)


def test_run_plots_write_pngs(tmp_path, synthetic_cifar10):
    df = _sweep_table()
    figs = {
        "history.png": plots.plot_history(
            {"a": _history(5, True), "b": _history(3, False)}, tmp_path / "history.png"),
        "bars.png": plots.plot_bars(df, "depth", "test_acc", hue="residual",
                                    path=tmp_path / "bars.png", ylabel="accuracy", title="t"),
        "bars1.png": plots.plot_bars(df, "depth", "test_acc", path=tmp_path / "bars1.png"),
        "lines.png": plots.plot_lines(df, "depth", "test_acc", hue="residual",
                                      path=tmp_path / "lines.png", title="t"),
        "lr.png": plots.plot_lr_find(
            {"lrs": [1e-5 * 1.2**i for i in range(60)],
             "losses": [2.3 - 0.01 * i if i < 50 else 2.0 + (i - 50) for i in range(60)],
             "suggested_lr": 1e-4}, tmp_path / "lr.png"),
        "grid.png": plots.image_grid(synthetic_cifar10.test_images[:10],
                                     titles=[f"t{i}" for i in range(10)], ncols=4,
                                     path=tmp_path / "grid.png"),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        _assert_png(tmp_path / name)
    bar_labels = [t.get_text() for t in figs["bars1.png"].axes[0].texts]
    assert len(bar_labels) == 3 and all(bar_labels)


def test_plot_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = plots.plot_history({"a": _history(2, False)})
    assert isinstance(fig, Figure) and not list(tmp_path.iterdir())
