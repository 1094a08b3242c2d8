"""Figures and interpretation: every plot writes a PNG; hooks, Grad-CAM and saliency behave."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import LogNorm, to_rgba
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from cnnlib.data.augment import normalize
from cnnlib.models.registry import create_model
from cnnlib.study.stats import Delta
from cnnlib.training.evaluate import confusion_matrix
from cnnlib.viz import charts as plots
from cnnlib.viz import classes, cost, interpret

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
    """One panel per filter of the first RGB conv, each its weights min-max scaled to [0, 1]."""
    model = _model(name, **options)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3)
    fig = interpret.plot_first_layer_filters(model, tmp_path / "f.png")
    assert isinstance(fig, Figure)
    assert f"{kernel}x{kernel}" in fig.axes[0].get_title()
    _assert_png(tmp_path / "f.png")
    mosaic = np.asarray(fig.axes[0].images[0].get_array())  # panels with 1-pixel gaps
    step = kernel + 1
    rows, cols = (mosaic.shape[0] + 1) // step, (mosaic.shape[1] + 1) // step
    assert mosaic.shape == (rows * step - 1, cols * step - 1, 3)
    panels = [mosaic[r * step : r * step + kernel, c * step : c * step + kernel]
              for r in range(rows) for c in range(cols)]
    shown = [p for p in panels if p.min() == 0]  # unused grid cells are filled with the gap colour
    assert len(shown) == conv.out_channels
    w = conv.weight.detach().permute(0, 2, 3, 1).double().numpy()  # [out, k, k, RGB]
    for i in range(conv.out_channels):
        expected = (w[i] - w[i].min()) / (w[i].max() - w[i].min())
        np.testing.assert_allclose(panels[i], expected, atol=1e-6)


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
    x = normalize(images, (0.5,) * 3, (0.25,) * 3)
    model = _model("resnet20")
    target = synthetic_cifar10.test_labels[:3]
    maps = {"Grad-CAM": interpret.gradcam(model, x, target),
            "saliency": interpret.saliency(model, x, target)}
    fig = interpret.plot_attributions(images, maps, titles=["a", "b", "c"], path=tmp_path / "a.png")
    assert len(fig.axes) == 10  # 3 x 3 images and one colour bar
    assert "attribution" in fig.axes[-1].get_ylabel()
    assert [ax.get_title() for ax in fig.axes[:6]] == ["a", "Grad-CAM", "saliency", "b", "", ""]
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
    assert titles == ["c4 ->\nc1 (0.95)"]


# -- plots ---------------------------------------------------------------------------------------


def test_superclass_order_groups_classes(synthetic_cifar100):
    f2c = synthetic_cifar100.fine_to_coarse
    order, bounds = classes.superclass_order(f2c)
    assert sorted(order) == list(range(100))
    assert bounds == sorted(bounds) and len(bounds) == len(set(f2c.tolist())) - 1
    edges = [0, *bounds, 100]
    groups = [{int(f2c[i]) for i in order[a:b]} for a, b in zip(edges, edges[1:], strict=False)]
    assert all(len(g) == 1 for g in groups)
    assert len(set.union(*groups)) == len(groups)


def test_superclass_order_puts_unknown_last():
    order, bounds = classes.superclass_order(torch.tensor([1, -1, 0, 1, 0]))
    assert order == [2, 4, 0, 3, 1] and bounds == [2, 4]


def test_superclass_confusion_sums_fine_counts(synthetic_cifar100):
    f2c = synthetic_cifar100.fine_to_coarse
    preds, labels = _confusion(100)
    fine = confusion_matrix(preds, labels, 100)
    coarse = classes.superclass_confusion(fine, f2c)
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
        order, bounds = classes.superclass_order(data.fine_to_coarse)
    classes.plot_confusion(conf, data.classes, tmp_path / "c.png", order=order, group_bounds=bounds,
                         title="test")
    acc = conf.diag() / conf.sum(1)
    classes.plot_per_class_accuracy({"a": acc, "b": acc.flip(0)}, data.classes, tmp_path / "two.png")
    names = ["c.png", "two.png"]
    if n <= 10:  # the single-series layout of many classes is checked below, without a file
        classes.plot_per_class_accuracy(acc, data.classes, tmp_path / "one.png")
        names.append("one.png")
    if data.fine_to_coarse is not None:
        coarse = classes.superclass_confusion(conf, data.fine_to_coarse)
        classes.plot_confusion(coarse, data.superclasses, tmp_path / "sub" / "coarse.png")
        names.append("sub/coarse.png")
    for name in names:
        _assert_png(tmp_path / name)


def test_plot_confusion_annotates_only_small_matrices(tmp_path):
    counts = torch.eye(10, dtype=torch.long).numpy() * 5
    fig10 = classes.plot_confusion(counts, [str(i) for i in range(10)], tmp_path / "n.png",
                                 normalize=False)
    _assert_png(tmp_path / "n.png")
    fig100 = classes.plot_confusion(torch.eye(100, dtype=torch.long), [str(i) for i in range(100)])
    assert len(fig10.axes[0].texts) == 100
    assert len(fig100.axes[0].texts) == 0


def test_per_class_accuracy_of_many_classes_is_sorted():
    acc = torch.linspace(1, 0, 30)
    fig = classes.plot_per_class_accuracy(acc, [f"c{i}" for i in range(30)])
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
        "points.png": plots.plot_points(df, "depth", "test_acc", hue="residual",
                                        path=tmp_path / "points.png", value_label="accuracy",
                                        title="t"),
        "points1.png": plots.plot_points(df, "depth", "test_acc", path=tmp_path / "points1.png"),
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
    value_labels = [t.get_text() for t in figs["points1.png"].axes[0].texts]
    assert value_labels == ["0.575", "0.615", "0.655"]  # the mean over the seeds of each depth


def test_plot_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = plots.plot_history({"a": _history(2, False)})
    assert isinstance(fig, Figure) and not list(tmp_path.iterdir())


# -- figures read at a glance: percent axes, zoomed values, legends outside, names, alt text ---


def _tick(axis, value) -> str:
    return axis.get_major_formatter()(value, 0)


def _legend_clear_of_axes(fig, ax) -> None:
    fig.draw_without_rendering()
    legend = ax.get_legend()
    assert legend is not None
    box, frame = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= frame.x1 or box.y0 >= frame.y1, (box, frame)


def _png_description(path) -> str:
    with Image.open(path) as png:
        return png.text.get("Description", "")


def _accuracy_table(low: float, high: float) -> pd.DataFrame:
    """Accuracies of 80-90% (in percent) for 4 labels x 2 datasets x 2 seeds."""
    values = iter(torch.linspace(low, high, 16).tolist())
    return pd.DataFrame([{"label": f"aug {k}", "dataset": ds, "seed": s, "acc %": next(values)}
                         for ds in ("cifar10", "cifar100") for k in range(4) for s in range(2)])


def test_history_accuracy_in_percent_legend_outside_panel_titles():
    fig = plots.plot_history({"a": _history(5, True), "b": _history(3, False)})
    loss, acc = fig.axes
    assert (loss.get_title(), acc.get_title()) == ("loss", "accuracy")
    assert _tick(acc.yaxis, 0.5) == "50%"
    _legend_clear_of_axes(fig, acc)
    labels = [t.get_text() for t in acc.get_legend().get_texts()]
    assert labels == ["a", "b", "train", "validation"]  # colours name runs, line styles splits
    assert "a, b" in fig.get_label()


def test_history_marks_epochs_of_a_run_in_its_colour():
    fig = plots.plot_history({"full": _history(6, True), "stopped": _history(4, True)},
                             marks={"stopped": {"best epoch": 2, "stopped": 4},
                                    "full": {"best epoch": None}})
    loss, acc = fig.axes
    for ax in (loss, acc):  # one vertical line per mark on both panels
        verticals = [line for line in ax.lines if list(line.get_xdata()) in ([2, 2], [4, 4])]
        assert len(verticals) == 2 and len({line.get_linestyle() for line in verticals}) == 2
        assert all(line.get_color() == ax.lines[2].get_color() for line in verticals)
        # the marked run lies wide beneath the other, which stays visible where they coincide
        assert [line.get_linewidth() > 3 for line in ax.lines[:4]] == [False] * 2 + [True] * 2
        assert ax.lines[2].get_zorder() < ax.lines[0].get_zorder()
    labels = [t.get_text() for t in acc.get_legend().get_texts()]
    assert labels[-2:] == ["stopped: best epoch at epoch 2", "stopped: stopped at epoch 4"]
    assert "vertical lines: stopped: best epoch at epoch 2; stopped: stopped at epoch 4." in \
        fig.get_label()
    _legend_clear_of_axes(fig, acc)


def test_lr_find_draws_several_curves_each_with_its_suggestion(tmp_path):
    def curve(scale):
        lrs = [1e-5 * 1.3**i for i in range(40)]
        return {"lrs": lrs, "losses": [2.3 - 0.01 * i + (i > 30) * scale * (i - 30)
                                       for i in range(40)], "suggested_lr": lrs[20]}

    fig = plots.plot_lr_find({"sgd": curve(0.1), "adam": curve(0.5)}, tmp_path / "lr.png")
    _assert_png(tmp_path / "lr.png")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["sgd (suggested lr 0.0019)", "adam (suggested lr 0.0019)"]
    curves = [line for line in ax.lines if len(line.get_xdata()) == 40]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert [d.get_color() for d in dots] == [c.get_color() for c in curves]
    assert "for sgd, adam" in fig.get_label() and "sgd 0.0019, adam 0.0019" in fig.get_label()
    single = plots.plot_lr_find(curve(0.1)).axes[0]  # one test: as before, the dot in red
    assert [t.get_text() for t in single.get_legend().get_texts()] == ["suggested lr 0.0019"]
    assert [line.get_color() for line in single.lines if line.get_marker() == "o"] == ["red"]


def test_points_zoom_to_values_of_a_few_points_and_panel_per_dataset(tmp_path):
    df = _accuracy_table(80, 90)
    fig = plots.plot_points(df, "label", "acc %", panel="dataset", percent=100,
                            path=tmp_path / "p.png", title="ablation")
    c10, c100 = fig.axes
    assert (c10.get_title(), c100.get_title()) == ("CIFAR-10", "CIFAR-100")
    for ax in fig.axes:
        assert ax.get_xlim()[0] > 70  # dots, not bars: the value axis need not start at 0
        assert _tick(ax.xaxis, 85) == "85%"
        assert ax.get_xlabel() == "acc"  # the ticks say percent already
    assert [t.get_text() for t in c10.get_yticklabels()] == [f"aug {k}" for k in range(4)]
    assert c10.texts[0].get_text() == "80.3%"
    alt = _png_description(tmp_path / "p.png")
    assert alt == fig.get_label() and alt.startswith("ablation.") and "highest aug 3" in alt


def test_deltas_show_the_paired_interval_coloured_by_verdict(tmp_path):
    deltas = [Delta("cifar10", "none", "crop+flip", "test_acc", (-5.0, -6.0, -5.5)),
              Delta("cifar10", "+mixup", "crop+flip", "test_acc", (1.0, -0.5, 0.8)),
              Delta("cifar100", "+mixup", "crop+flip", "test_acc", (2.0,))]
    fig = plots.plot_deltas(deltas, order=["crop+flip", "+mixup", "+cutout", "none"],
                            path=tmp_path / "d.png", title="against crop+flip")
    c10, c100 = fig.axes
    assert (c10.get_title(), c100.get_title()) == ("CIFAR-10", "CIFAR-100")
    # The order given, without the reference and labels that have no delta.
    assert [t.get_text() for t in c10.get_yticklabels()] == ["+mixup", "none"]
    assert c10.get_xlabel() == "test accuracy minus crop+flip (pp)"
    assert any(list(line.get_xdata()) == [0, 0] for line in c10.lines)  # the line at 0
    none, mixup = c10.containers  # drawn in the order of `deltas`
    low, high = deltas[1].interval
    bar = mixup.lines[2][0].get_segments()[0]
    assert bar[:, 0].tolist() == pytest.approx([low, high]) and low < 0 < high
    assert mixup.lines[0].get_color() == "0.55"  # interval spans 0: grey
    assert to_rgba(none.lines[0].get_color()) == to_rgba("tab:red")  # detectable loss
    (one_seed,) = c100.containers
    assert not one_seed.has_xerr  # one seed: no interval to draw
    _legend_clear_of_axes(fig, c100)
    legend = [t.get_text() for t in c100.get_legend().get_texts()]
    assert legend == ["hurts", "inconclusive with 3 seeds",
                      "inconclusive with 1 seed"]
    alt = _png_description(tmp_path / "d.png")
    assert alt.startswith("against crop+flip.") and "none -5.5 pp (hurts)" in alt


def test_points_and_lines_legends_outside_the_data():
    df = _accuracy_table(80, 90)
    points = plots.plot_points(df, "label", "acc %", hue="dataset", percent=100)
    _legend_clear_of_axes(points, points.axes[0])
    # The alt text describes each series, not means over series of different things.
    assert "CIFAR-10: highest aug 3 (84.3%), lowest aug 0 (80.3%)" in points.get_label()
    assert "CIFAR-100: highest aug 3 (89.7%)" in points.get_label()
    sweep = _sweep_table()
    lines = plots.plot_lines(sweep, "depth", "test_acc", hue="residual", percent=1)
    _legend_clear_of_axes(lines, lines.axes[0])
    assert _tick(lines.axes[0].yaxis, 0.625) == "62.5%"
    assert lines.axes[0].get_ylim()[0] > 0.5


def test_lines_panels_own_ranges_and_zero_line():
    df = pd.DataFrame({"minutes": [1.0, 3.0, 2.0], "acc": [0.85, 0.93, 0.76],
                       "recipe": ["fast", "fast", "slow"], "gap": [-1.0, 0.5, 0.2]})
    fig = plots.plot_lines(df, "minutes", "acc", hue="recipe", panel="recipe", percent=1)
    fast, slow = fig.axes
    assert (fast.get_title(), slow.get_title()) == ("fast", "slow")
    assert slow.get_ylim()[1] < fast.get_ylim()[0]  # each panel its own range
    assert fast.get_legend() is None  # the panel titles already name the recipes
    gap = plots.plot_lines(df, "minutes", "gap")
    assert any(list(line.get_ydata()) == [0, 0] for line in gap.axes[0].lines)


def test_per_class_accuracy_percent_and_legend_outside(synthetic_cifar100):
    acc = torch.linspace(0.1, 0.9, 10)
    fig = classes.plot_per_class_accuracy({"best": acc, "baseline": acc.flip(0)}, [f"c{i}" for i in range(10)])
    _legend_clear_of_axes(fig, fig.axes[0])
    assert _tick(fig.axes[0].yaxis, 0.3) == "30%"
    many = classes.plot_per_class_accuracy({"best": torch.rand(100), "baseline": torch.rand(100)},
                                         synthetic_cifar100.classes)
    assert _tick(many.axes[0].xaxis, 0.3) == "30%"
    _legend_clear_of_axes(many, many.axes[0])


def test_cifar100_confusion_names_superclasses_on_a_log_scale(tmp_path, synthetic_cifar100):
    data = synthetic_cifar100
    preds, labels = _confusion(100, n=5000)
    conf = confusion_matrix(preds, labels, 100)
    order, bounds = classes.superclass_order(data.fine_to_coarse)
    fig = classes.plot_confusion(conf, data.classes, tmp_path / "c.png", order=order,
                               group_bounds=bounds, groups=data.superclasses, title="CIFAR-100")
    ax = fig.axes[0]
    names = [s.replace("_", " ") for s in data.superclasses]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    image = ax.get_images()[0]
    assert isinstance(image.norm, LogNorm) and image.norm.vmax == 1
    assert image.norm.vmin == pytest.approx(1 / int(conf.sum(1).max()))  # one image of a class
    assert _tick(fig.axes[1].yaxis, 0.01) == "1%"
    assert "Largest errors:" in _png_description(tmp_path / "c.png")
    with pytest.raises(ValueError, match="groups"):
        classes.plot_confusion(conf, data.classes, order=order, group_bounds=bounds, groups=["x"])


def test_small_confusion_cells_in_percent_zeros_blank():
    counts = torch.tensor([[90, 10, 0], [3, 97, 0], [0, 0, 100]])
    fig = classes.plot_confusion(counts, ["a", "b", "c"])
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(["90", "10", "3", "97", "100"])


def test_feature_map_figures_name_layers_for_readers_and_have_colour_bars(tmp_path, synthetic_cifar10):
    model = _model("baseline", depth=6, residual=True)
    labels = interpret.layer_labels(model)
    n = len(labels)
    assert list(labels.values())[0] == f"conv 1 of {n}"
    projections = {name for name, m in interpret.conv_layers(model) if m.kernel_size == (1, 1)}
    assert projections and {k for k, v in labels.items() if v.endswith(", 1x1 shortcut")} == projections
    data = synthetic_cifar10
    paths = interpret.save_feature_maps(model, data.test_images[:1], (0.5,) * 3, (0.25,) * 3,
                                        tmp_path, max_channels=4, classes=data.classes,
                                        labels=data.test_labels[:1])
    first = _png_description(paths[0])
    assert f"conv 1 of {n}" in first and "4 of" in first
    overview = _png_description(paths[-1])
    assert paths[-1].name == "sample0_overview.png" and f"each of {n} conv layers" in overview


def test_first_layer_filters_title_and_alt():
    fig = interpret.plot_first_layer_filters(_model("baseline"), title="baseline model")
    title = fig.axes[0].get_title()
    assert title.startswith("baseline model\nfirst conv layer:") and "features" not in title
    assert "3x3 pixels" in fig.get_label()


def test_tradeoffs_markers_per_variant_legend_outside_error_bars():
    variants = ["fp32", "int8", "channels 50%"]
    df = pd.DataFrame([{"model": m, "variant": v, "size_mb": (1 + i) * (3 if m == "best" else 1),
                        "latency_ms_b1": 0.5 + i, "latency_ms_b1_std": 0.1, "test_acc": 0.8 + i / 50}
                       for m in ("baseline", "best") for i, v in enumerate(variants)])
    fig = plots.plot_tradeoffs(df)
    size, latency = fig.axes
    _legend_clear_of_axes(fig, latency)
    assert [t.get_text() for t in latency.get_legend().get_texts()] == ["baseline", "best", *variants]
    assert not size.texts and _tick(size.yaxis, 0.85) == "85%"
    assert len({line.get_marker() for line in size.lines if line.get_xdata().size}) == 3
    assert latency.collections and not size.collections  # x error bars only where a std is given
    assert "smallest fp32" in fig.get_label()


def _frontier_table() -> pd.DataFrame:
    """3 networks at 2 budgets on CIFAR-10 (2 seeds at x1, 1 at x4); one network on CIFAR-100."""
    rows = []
    for k, name in enumerate(("small", "wide", "deep")):
        for factor, seeds in ((1, 2), (4, 1)):
            rows += [{"network": name, "budget": f"×{factor}", "dataset": "cifar10", "seed": s,
                      "minutes": (2.0 + 0.2 * s) * factor + 0.1 * k, "epochs": (1 + k) * factor,
                      "test_acc": 0.80 + 0.02 * k + 0.01 * s + 0.05 * (factor > 1)}
                     for s in range(seeds)]
    rows.append({"network": "small", "budget": "×1", "dataset": "cifar100", "seed": 0,
                 "minutes": 2.5, "epochs": 1, "test_acc": 0.5})
    return pd.DataFrame(rows)


def test_frontier_a_line_per_network_through_its_budgets(tmp_path):
    fig = cost.plot_frontier(_frontier_table(), {("cifar10", "wide"): 94.0,
                                                 ("cifar10", "small"): None},
                             path=tmp_path / "f.png", title="Networks")
    c10, c100 = fig.axes
    assert (c10.get_title(), c100.get_title()) == ("CIFAR-10", "CIFAR-100")
    assert c10.get_xscale() == "log" and c10.get_ylabel() == "test accuracy"
    assert _tick(c10.yaxis, 0.8) == "80%"
    # A line per network, its points at the means over each budget's seeds, in order of time.
    small = c10.containers[0]
    assert len(c10.containers) == 3 and len(c100.containers) == 1
    assert small.lines[0].get_xdata().tolist() == pytest.approx([2.1, 8.0])
    assert small.lines[0].get_ydata().tolist() == pytest.approx([0.805, 0.85])
    assert small.has_xerr and small.has_yerr
    # Each point names its epochs; the published figure is a star of the network's colour.
    assert {"1 ep", "4 ep", "3 ep", "12 ep"} <= {t.get_text() for t in c10.texts}
    stars = [line for line in c10.lines if line.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_ydata()[0] == pytest.approx(0.94)
    assert stars[0].get_color() == c10.containers[1].lines[0].get_color()  # "wide"
    assert not [line for line in c100.lines if line.get_marker() == "*"]
    _legend_clear_of_axes(fig, c100)
    labels = [t.get_text() for t in c100.get_legend().get_texts()]
    assert labels == ["small", "wide", "deep", "published, full schedule"]
    alt = fig.get_label()
    assert "CIFAR-10, budget ×4: highest deep (89.0% after 8.2 min, 12 epochs)" in alt
    assert "Published accuracy after the full schedule (stars): wide 94% on CIFAR-10" in alt
    assert _png_description(tmp_path / "f.png") == alt
