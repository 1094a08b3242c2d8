"""Compression: pruning, int8, ONNX, their checkpoints and the CLI, on tiny models and synthetic data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnlib
from cnnlib import cli
from cnnlib.compress import bench, export, finetune, prune, quantize, saving
from cnnlib.data.augment import normalize
from cnnlib.data.cifar import channel_stats
from cnnlib.models.registry import count_parameters, create_model
from cnnlib.study import compression as compression_study
from cnnlib.study import definitions as studies
from cnnlib.training import checkpoint
from cnnlib.training.checkpoint import load_safe, model_checkpoint, save_atomic
from cnnlib.training.config import RunConfig, recipe
from cnnlib.training.evaluate import evaluate
from cnnlib.viz import charts as plots

TINY = {
    "baseline": ("baseline", {"width": 4}),
    "residual": ("baseline", {"width": 4, "depth": 7, "residual": True}),
    "fastnet": ("fastnet", {"widths": [8, 16, 16]}),
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(synthetic_cifar10):
    mean, std = channel_stats(synthetic_cifar10.train_images)
    return synthetic_cifar10, mean, std


def _trained(name: str, data, tmp_path_factory) -> tuple:
    """A briefly trained tiny model saved as a regular checkpoint: (path, model from load_model)."""
    d, mean, std = data
    family, options = TINY[name]
    config = recipe(family, model_options=options, batch_size=64, val_size=0).to_dict()
    torch.manual_seed(0)
    model = create_model(family, 10, **options)
    if hasattr(model, "init_from_data"):
        model.init_from_data(normalize(d.train_images[:500], mean, std))
    finetune.fine_tune(model, d.train_images, d.train_labels, mean, std, steps=40, config=config,
                       batch_size=64, lr_scale=1.0)
    path = tmp_path_factory.mktemp(name) / "model.pt"
    save_atomic(model_checkpoint(model, config, classes=d.classes, mean=mean, std=std), path)
    return path, cnnlib.load_model(path)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _trained(name, data, tmp_path_factory)
        return cache[name]

    return get


def _logits(model, data, n=200):
    d, mean, std = data
    return cnnlib.predict_logits(model, d.test_images[:n], mean, std)


# -- unstructured pruning ----------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.5, 0.8])
def test_magnitude_prune_reaches_sparsity_and_fine_tuning_keeps_it(trained, data, amount):
    _, model = trained("baseline")
    d, mean, std = data
    pruned = prune.magnitude_prune(copy.deepcopy(model), amount)
    assert prune.sparsity(pruned) == pytest.approx(amount, abs=0.01)
    finetune.fine_tune(pruned, d.train_images, d.train_labels, mean, std, steps=3,
                       config=model.meta["config"], batch_size=32)
    prune.make_permanent(pruned)
    assert prune.sparsity(pruned) == pytest.approx(amount, abs=0.01)
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())
    assert prune.sparsity(model) < 0.01  # the original is untouched


def test_magnitude_prune_rejects_bad_amount(trained):
    _, model = trained("baseline")
    with pytest.raises(ValueError, match="amount"):
        prune.magnitude_prune(copy.deepcopy(model), 1.5)


def test_sparse_checkpoint_is_smaller_and_round_trips(data, tmp_path):
    d, mean, std = data
    config = recipe("baseline", model_options={"width": 16}).to_dict()
    model = create_model("baseline", 10, width=16)
    dense = save_atomic(model_checkpoint(model, config, classes=d.classes, mean=mean, std=std),
                        tmp_path / "dense.pt")
    pruned = prune.make_permanent(prune.magnitude_prune(cnnlib.load_model(dense), 0.8))
    out = saving.save_compressed(pruned, tmp_path / "sparse.pt")
    # 0.2 x 4 bytes of values + 1/8 byte of mask per weight, plus the file's fixed overhead
    assert bench.file_size_mb(out) < 0.4 * bench.file_size_mb(dense)
    loaded = cnnlib.load_model(out)
    assert loaded.meta["kind"] == "pruned"
    assert prune.sparsity(loaded) == pytest.approx(0.8, abs=0.01)
    torch.testing.assert_close(_logits(loaded, data), _logits(pruned, data))


# -- structured pruning ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_prune_channels_really_shrinks(trained, data, name):
    _, model = trained(name)
    d, mean, std = data
    before = {k: v.shape for k, v in model.state_dict().items()}
    pruned = prune.prune_channels(model, 0.5, d.train_images[:128], mean, std)
    widths, old = prune.channel_widths(pruned), prune.channel_widths(model)
    assert widths and all(widths[k] < old[k] for k in old)
    assert count_parameters(pruned) < 0.8 * count_parameters(model)
    assert _logits(pruned, data, 16).shape == (16, 10)
    assert {k: v.shape for k, v in model.state_dict().items()} == before  # a copy was pruned


def test_prune_channels_keeps_the_strongest_channels_in_order(trained, data):
    """A channel that never fires ranks last; the survivors keep their order."""
    _, model = trained("baseline")
    d, mean, std = data
    model = copy.deepcopy(model)
    first = model.features[0][0]
    with torch.no_grad():
        first[1].bias[0] = -100.0  # BN output always negative: ReLU kills channel 0
    pruned = prune.prune_channels(model, 0.5, d.train_images[:64], mean, std)
    kept = pruned.features[0][0][0].weight
    assert kept.shape[0] == 3  # round(4 * sqrt(0.5))
    assert not any(torch.equal(w, first[0].weight[0]) for w in kept)
    rows = [next(i for i in range(4) if torch.equal(w, first[0].weight[i])) for w in kept]
    assert rows == sorted(rows)


def test_pruned_fine_tuned_checkpoint_round_trips(trained, data, tmp_path):
    path, model = trained("fastnet")
    d, mean, std = data
    pruned = prune.prune_channels(model, 0.8, d.train_images[:128], mean, std)
    finetune.fine_tune(pruned, d.train_images, d.train_labels, mean, std, steps=3,
                       config=model.meta["config"], batch_size=32)
    out = saving.save_compressed(pruned, tmp_path / "channels.pt")
    assert bench.file_size_mb(out) < bench.file_size_mb(path)
    loaded = cnnlib.load_model(out)
    assert prune.channel_widths(loaded) == prune.channel_widths(pruned)
    torch.testing.assert_close(_logits(loaded, data), _logits(pruned, data))


def test_prune_channels_refuses_other_families(data):
    d, mean, std = data
    model = create_model("resnet20", 10)
    with pytest.raises(ValueError, match="baseline and fastnet"):
        prune.prune_channels(model, 0.5, d.train_images[:8], mean, std)


# -- int8 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_int8_agrees_with_fp32(trained, data, name):
    _, model = trained(name)
    d, mean, std = data
    q = quantize.quantize_int8(model, d.train_images[:256], mean, std)
    fp32, int8 = _logits(model, data), _logits(q, data)
    agree = (fp32.argmax(1) == int8.argmax(1)).double().mean().item()
    assert agree >= 0.85  # tiny, barely trained nets have many near ties
    assert (int8 - fp32).abs().mean() < 0.1 * fp32.abs().mean() + 0.05


@pytest.mark.parametrize("name", ["residual", "fastnet"])
def test_int8_checkpoint_round_trips_with_weights_only(trained, data, tmp_path, name):
    path, model = trained(name)
    d, mean, std = data
    q = quantize.quantize_int8(model, d.train_images[:128], mean, std)
    out = saving.save_compressed(q, tmp_path / "int8.pt")
    ckpt = load_safe(out)  # torch.load(weights_only=True)
    assert ckpt["kind"] == "int8" and ckpt["recipe"]["backend"] == "x86"
    assert not any(isinstance(v, torch.Tensor) and v.is_quantized for v in ckpt["state_dict"].values())
    assert bench.file_size_mb(out) < bench.file_size_mb(path)
    loaded = cnnlib.load_model(out)
    assert isinstance(loaded, quantize.QuantizedModel) and loaded.meta["kind"] == "int8"
    torch.testing.assert_close(_logits(loaded, data), _logits(q, data))


def test_pruned_then_int8_round_trips(trained, data, tmp_path):
    _, model = trained("baseline")
    d, mean, std = data
    pruned = prune.prune_channels(model, 0.5, d.train_images[:128], mean, std)
    q = quantize.quantize_int8(pruned, d.train_images[:128], mean, std)
    loaded = cnnlib.load_model(saving.save_compressed(q, tmp_path / "both.pt"))
    assert loaded.recipe["channels"] == prune.channel_widths(pruned)
    torch.testing.assert_close(_logits(loaded, data), _logits(q, data))


@pytest.mark.parametrize("name", ["baseline", "fastnet"])
def test_qat_converts_and_round_trips(trained, data, tmp_path, name):
    _, model = trained(name)
    d, mean, std = data
    q = quantize.quantize_qat(model, d.train_images, d.train_labels, mean, std, steps=3,
                              config=model.meta["config"], batch_size=32)
    assert q.recipe["method"] == "qat"
    loaded = cnnlib.load_model(saving.save_compressed(q, tmp_path / "qat.pt"))
    torch.testing.assert_close(_logits(loaded, data), _logits(q, data))
    agree = (_logits(q, data).argmax(1) == _logits(model, data).argmax(1)).double().mean()
    assert agree >= 0.8


def test_int8_checkpoint_of_another_backend_is_refused(trained, data, tmp_path):
    _, model = trained("baseline")
    d, mean, std = data
    out = saving.save_compressed(quantize.quantize_int8(model, d.train_images[:64], mean, std),
                                   tmp_path / "int8.pt")
    ckpt = load_safe(out)
    ckpt["recipe"]["backend"] = "qnnpack"
    save_atomic(ckpt, out)
    with pytest.raises(ValueError, match="backend"):
        cnnlib.load_model(out)


# -- ONNX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["baseline", "fastnet"])
def test_onnx_matches_torch(trained, data, tmp_path, name):
    _, model = trained(name)
    path = export.export_onnx(model, tmp_path / "model.onnx")
    session = export.load_onnx(path)
    assert session.meta["classes"] == model.meta["classes"]
    assert session.meta["mean"] == pytest.approx(list(model.meta["mean"]))
    torch.testing.assert_close(_logits(session, data), _logits(model, data), atol=1e-4, rtol=1e-4)


def test_load_onnx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.load_onnx(tmp_path / "none.onnx")


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressed_files(trained, data, tmp_path_factory):
    """One file of each compressed kind, made from the tiny baseline."""
    _, model = trained("baseline")
    d, mean, std = data
    folder = tmp_path_factory.mktemp("compressed")
    pruned = prune.prune_channels(model, 0.5, d.train_images[:64], mean, std)
    return {
        "pruned": saving.save_compressed(pruned, folder / "pruned.pt"),
        "int8": saving.save_compressed(
            quantize.quantize_int8(model, d.train_images[:64], mean, std), folder / "int8.pt"),
        "onnx": export.export_onnx(model, folder / "model.onnx"),
    }


def test_load_model_dispatches_on_the_kind(compressed_files, trained):
    # checkpoint.py rebuilds fp32 alone; the compressed kinds come from cnnlib.compress
    path, _ = trained("baseline")
    assert checkpoint.load_model(path).meta["kind"] == "fp32"
    with pytest.raises(ValueError, match="kind 'int8'; supported: fp32$"):
        checkpoint.load_model(compressed_files["int8"])
    loaded = {kind: cnnlib.load_model(f) for kind, f in compressed_files.items()}
    assert isinstance(loaded["int8"], quantize.QuantizedModel)
    assert isinstance(loaded["onnx"], export.OnnxModel)
    assert {k: m.meta["kind"] for k, m in loaded.items()} == {
        "pruned": "pruned", "int8": "int8", "onnx": "onnx"}


@pytest.mark.parametrize("kind", ["pruned", "int8", "onnx"])
def test_cli_evaluate_and_predict_accept_compressed_models(compressed_files, data, synthetic_root,
                                                           tmp_path, capsys, kind):
    d, mean, std = data
    path = str(compressed_files[kind])
    assert cli.main(["--data-root", str(synthetic_root), "evaluate", path, "--tta", "0"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # the CLI reports what this kind's model scores on the whole test set, twice chance or more
    expected = evaluate(cnnlib.load_model(path), d.test_images, d.test_labels, mean, std)["acc"]
    assert last == f"test_acc={expected:.4f}" and expected >= 0.2
    image = tmp_path / "cat.png"
    Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8)).save(image)
    assert cli.main(["predict", path, str(image), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{image}: ") and out.count(",") == 1


# -- measuring and the study -------------------------------------------------------------------


def test_benchmark_reports_latency_and_throughput(trained):
    _, model = trained("baseline")
    result = bench.benchmark(model, seconds=0.01)
    assert result["latency_ms_b1"] > 0 and result["throughput_b256"] > 0
    assert result["threads"] == 1


def test_compress_model_writes_every_variant(trained, data, tmp_path):
    _, model = trained("baseline")
    d, _, _ = data
    s = studies.compression_settings("smoke")
    rows = compression_study.compress_model(model, d, tmp_path, label="baseline", progress=False,
                                            root=tmp_path / "runs", **s)
    df = compression_study.results_frame(rows)
    assert list(df["variant"]) == ["fp32", "magnitude 50%", "magnitude 80%", "channels 50%",
                                   "channels 80%", "int8", "channels 50% + int8", "onnx"]
    assert {"variant", "size_mb", "latency_ms_b1", "throughput_b256", "test_acc"} <= set(df)
    sizes = df.set_index("variant")["size_mb"]
    assert sizes["int8"] < 0.8 * sizes["fp32"]  # 8-bit weights (the file's metadata stays)
    assert sizes["channels 80%"] < sizes["channels 50%"] < sizes["fp32"]  # channels removed
    assert all((tmp_path / p.split("/")[-1]).exists() for p in df["path"])
    assert list(df.columns) == compression_study.COLUMNS
    assert df.loc[df["variant"] == "fp32", "acc_change_pp"].item() == 0
    acc = df.set_index("variant")["test_acc"]  # ONNX runs the same fp32 function
    assert acc["onnx"] == pytest.approx(acc["fp32"], abs=1 / s["test_subset"])
    fig = plots.plot_tradeoffs(df, tmp_path / "tradeoffs.png")
    assert (tmp_path / "tradeoffs.png").stat().st_size > 0 and len(fig.axes) == 2


def test_compress_model_measures_once_and_again_when_asked(trained, data, synthetic_root,
                                                            tmp_path, monkeypatch, capsys):
    """A model's rows are kept in the run cache: a second call times and writes nothing and
    returns the same rows; remeasure (or $CNNLIB_REMEASURE=1) measures again."""
    _, model = trained("residual")
    d, _, _ = data
    s = studies.compression_settings("smoke")
    timed = []
    real = compression_study.time_models
    monkeypatch.setattr(compression_study, "time_models",
                        lambda *a, **k: timed.append(1) or real(*a, **k))
    monkeypatch.delenv("CNNLIB_REMEASURE", raising=False)
    root, out = tmp_path / "runs", tmp_path / "variants"

    def compress(**kwargs):
        return compression_study.compress_model(model, d, out, label="residual", root=root,
                                                **s, **kwargs)

    first = compress(progress=False)
    files = sorted(out.iterdir())
    written = [f.stat().st_mtime_ns for f in files]
    for row in first:  # each timing: the median of five rounds, and their range
        assert row["timing_rounds"] == bench.ROUNDS >= 5
        for key in bench.TIMINGS:
            assert row[f"{key}_min"] <= row[key] <= row[f"{key}_max"]
    again = compress()
    assert again == first and len(timed) == 1
    assert [f.stat().st_mtime_ns for f in sorted(out.iterdir())] == written
    assert "[cached] residual: 8 variants measured on this machine at commit " in capsys.readouterr().out
    config = RunConfig.from_dict(model.meta["config"])
    assert compression_study.recorded("residual", [config], s, root, synthetic_root)
    assert not compression_study.recorded("residual", [config], {**s, "steps": 3}, root,
                                          synthetic_root)
    compress(progress=False, remeasure=True)
    assert len(timed) == 2 and files[0].stat().st_mtime_ns != written[0]  # built and timed again
    monkeypatch.setenv("CNNLIB_REMEASURE", "1")
    compress(progress=False)
    assert len(timed) == 3


def test_save_compressed_needs_meta(tmp_path):
    with pytest.raises(ValueError, match="meta"):
        saving.save_compressed(nn.Linear(2, 2), tmp_path / "x.pt")
