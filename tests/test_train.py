"""The trainer, checkpoints and the CLI, on small synthetic CIFAR files in the official layout."""

from __future__ import annotations

import importlib
import os
import pickle

import pytest
import torch
from PIL import Image

from cnnlib import cli
from cnnlib.checkpoint import load_model, load_safe
from cnnlib.train import RunConfig, Trainer, lr_find, recipe, train

ctrain = importlib.import_module("cnnlib.train")  # the module, not the train() it exports

TINY = dict(model="baseline", model_options={"width": 8, "depth": 4}, batch_size=50,
            val_size=200, epochs=2, lr=0.05, seed=0)


@pytest.fixture()
def tiny(synthetic_root):
    def make(**changes):
        return RunConfig(**{**TINY, **changes})

    return make


def test_training_beats_chance_clearly(tiny, synthetic_root):
    result = train(tiny(epochs=3), data_root=synthetic_root, progress=False)
    assert len(result.history) == 3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test["acc"] > 0.5, result.test  # chance is 0.1
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(result.history[0])


def test_cifar100_metrics_include_superclass(tiny, synthetic_root):
    result = train(tiny(dataset="cifar100", epochs=1), data_root=synthetic_root, progress=False)
    assert 0 <= result.test["superclass_acc"] <= 1
    assert result.test["superclass_acc"] >= result.test["acc"]
    assert result.test_metrics["confusion"].shape == (100, 100)


def test_resume_equals_uninterrupted(tiny, synthetic_root, tmp_path):
    config = tiny(epochs=3, augment="crop+flip+cutout", model_options={"width": 8, "dropout": 0.3})
    whole = train(config, tmp_path / "whole", data_root=synthetic_root, progress=False)

    first = Trainer(config, tmp_path / "split", data_root=synthetic_root, progress=False)
    first.run_epochs(1)  # then "crash": the process state is thrown away
    del first
    resumed = Trainer(config, tmp_path / "split", data_root=synthetic_root, progress=False)
    assert resumed.try_resume() and resumed.epoch == 1
    result = resumed.run()
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in whole.history]
    assert result.test == whole.test
    a, b = whole.model.state_dict(), result.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_config(tiny, synthetic_root, tmp_path):
    t = Trainer(tiny(epochs=2), tmp_path, data_root=synthetic_root, progress=False)
    t.run_epochs(1)
    other = Trainer(tiny(epochs=2, lr=0.01), tmp_path, data_root=synthetic_root, progress=False)
    with pytest.raises(ValueError, match="different config"):
        other.try_resume()


def test_fractional_epochs_and_lookahead(synthetic_root):
    config = recipe("fastnet", epochs=1.5, batch_size=100, train_subset=600, val_size=0,
                    model_options={"widths": [16, 32, 32]}, tta=2)
    t = Trainer(config, data_root=synthetic_root, progress=False)
    assert t.steps_per_epoch == 6 and t.total_steps == 9 and t.num_epochs == 2
    result = t.run()
    assert t.step == 9 and len(result.history) == 2
    assert 0 <= result.test["acc"] <= 1


def test_early_stopping_restores_best_weights(tiny, synthetic_root):
    config = tiny(epochs=6, early_stop_patience=1, early_stop_metric="val_loss", lr=0.3,
                  schedule="constant")
    result = train(config, data_root=synthetic_root, progress=False)
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert result.val["val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)
    if result.stopped_early:
        assert len(result.history) == result.best_epoch + 1


def test_nonfinite_loss_stops_with_clear_error(tiny, synthetic_root, tmp_path, monkeypatch):
    t = Trainer(tiny(epochs=2), tmp_path, data_root=synthetic_root, progress=False)
    t.run_epochs(1)
    monkeypatch.setattr(ctrain, "soft_cross_entropy", lambda *a: torch.tensor(float("nan")))
    with pytest.raises(ctrain.NonFiniteLossError, match=r"loss: became nan at epoch 2.*lower lr"):
        t.run_epochs()
    assert load_safe(tmp_path / "last.pt")["epoch"] == 1  # the finished epoch is kept


@pytest.mark.parametrize("changes, field", [
    (dict(optimizer="rmsprop"), "optimizer"), (dict(schedule="poly"), "schedule"),
    (dict(model="vgg"), "model"), (dict(dataset="mnist"), "dataset"), (dict(epochs=0), "epochs"),
    (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size"), (dict(momentum=1.5), "momentum"),
    (dict(augment="crop+rotate"), "augment"), (dict(precision="fp8"), "precision"),
    (dict(tta=3), "tta"), (dict(val_size=0, early_stop_patience=2), "early_stop_patience"),
    (dict(device="tpu"), "device"), (dict(label_smoothing=1.0), "label_smoothing"),
])
def test_bad_config_values_give_one_line_errors(changes, field):
    with pytest.raises(ValueError) as e:
        RunConfig(**{**TINY, **changes})
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg
    if field not in ("early_stop_patience", "augment"):
        assert "allowed" in msg


def test_bad_model_option_and_batch_size(tiny, synthetic_root):
    with pytest.raises(ValueError, match="depth"):
        Trainer(tiny(model_options={"depth": 1}), data_root=synthetic_root, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(tiny(batch_size=5000), data_root=synthetic_root, progress=False)


def test_config_key_is_stable_and_total():
    a, b = RunConfig(**TINY), RunConfig(**TINY)
    assert a.key() == b.key()
    assert a.replace(seed=1).key() != a.key()
    assert RunConfig.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="unknown field"):
        RunConfig.from_dict({**a.to_dict(), "colour": 1})


def test_checkpoint_round_trip(tiny, synthetic_root, tmp_path, synthetic_cifar10):
    result = train(tiny(epochs=1), tmp_path, data_root=synthetic_root, progress=False)
    model = load_model(tmp_path / "model.pt")
    assert model.meta["classes"] == synthetic_cifar10.classes
    assert model.meta["metrics"]["test_acc"] == pytest.approx(result.test["acc"])
    x = torch.randn(4, 3, 32, 32)
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), result.model.cpu()(x), atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    _Evil.marker = str(marker)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "cnnlib-checkpoint-v1", "payload": evil}, f)
    with pytest.raises(ValueError, match="refusing"):
        load_model(path)
    torch.save({"format": "cnnlib-checkpoint-v1", "payload": evil}, tmp_path / "evil2.pt")
    with pytest.raises(ValueError, match="refusing"):
        load_model(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_lr_find_returns_curve_and_suggestion(tiny, synthetic_root):
    r = lr_find(tiny(), steps=30, data_root=synthetic_root)
    assert 5 <= len(r["lrs"]) == len(r["losses"]) <= 30
    assert r["lrs"] == sorted(r["lrs"])
    assert r["lrs"][0] <= r["suggested_lr"] <= r["lrs"][-1]


def test_cli_train_evaluate_predict_models(synthetic_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA_ROOT", str(synthetic_root))
    out = tmp_path / "run"
    rc = cli.main(["train", "--dataset", "cifar10", "--model", "baseline", "--epochs", "1",
                   "--train-subset", "300", "--seed", "1", "--device", "cpu", "--out", str(out),
                   "--quiet", "--set", "batch_size=50", "--set", "val_size=100", "--opt", "width=8"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("test_acc=") and 0 <= float(last.split("=")[1]) <= 1
    assert (out / "model.pt").exists()

    assert cli.main(["evaluate", str(out / "model.pt")]) == 0
    last_eval = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_eval == last  # same weights, same test set

    paths = []
    for i, size in enumerate([(32, 32), (200, 120), (17, 45)]):
        p = tmp_path / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.new("RGB", size, (200, 30 * i, 10)).save(p)
        paths.append(str(p))
    assert cli.main(["predict", str(out / "model.pt"), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.count(",") == 2 for line in lines)

    assert cli.main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert "fastnet" in names and "baseline" in names


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path), "--set", "optimizer=rmsprop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optimizer" in err and "allowed" in err
    assert cli.main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _real_cifar10_available() -> bool:
    from cnnlib.data import obtain

    try:
        obtain("cifar10", download=False)
        return True
    except Exception:
        return False


@pytest.mark.real_data
@pytest.mark.skipif(not _real_cifar10_available(),
                    reason="real CIFAR-10 not in data/ and no CNNLIB_DATA_MIRROR: run `cnnlib data`")
def test_real_cifar10_one_epoch_on_5000_images(tmp_path):
    config = recipe("baseline", epochs=1, train_subset=5000, val_size=0, batch_size=64,
                    lr=0.1, model_options={"width": 16})
    result = train(config, tmp_path, progress=False)
    assert result.test["acc"] > 0.35, result.test
