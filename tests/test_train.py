"""The trainer, checkpoints and the CLI, on small synthetic CIFAR files in the official layout."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
import pickle
import re
import time

import pytest
import torch
from cifar_files import CIFAR100_FINE_TO_COARSE
from PIL import Image

from cnnlib import cli
from cnnlib.data.obtain import obtain
from cnnlib.study import cache as runs
from cnnlib.study.table import Row
from cnnlib.training.checkpoint import load_model, load_safe
from cnnlib.training.config import RunConfig, recipe
from cnnlib.training.loop import Trainer, lr_find, train

ctrain = importlib.import_module("cnnlib.training.loop")  # the module, not the train() it exports

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


def test_cifar100_superclass_accuracy_counts_fine_predictions_in_the_true_superclass(
        tiny, synthetic_root, synthetic_cifar100):
    result = train(tiny(dataset="cifar100", epochs=1), data_root=synthetic_root, progress=False)
    preds, coarse = result.test_metrics["preds"].tolist(), synthetic_cifar100.test_coarse.tolist()
    expected = sum(CIFAR100_FINE_TO_COARSE[p] == c for p, c in zip(preds, coarse, strict=True))
    assert result.test["superclass_acc"] == pytest.approx(expected / len(preds))
    # Beats chance clearly. Guessing without the images scores 0.05 (balanced labels, 5 of the
    # 100 classes per superclass); the bound is 4 binomial standard deviations above that on
    # these 200 test images (0.11). A superclass shares a colour in the synthetic data: one
    # epoch scores 0.18 (seed 0) to 0.35 over seeds 0-5.
    chance = 0.05
    bound = chance + 4 * math.sqrt(chance * (1 - chance) / len(preds))
    assert result.test["superclass_acc"] > bound, (result.test["superclass_acc"], bound)
    assert result.test_metrics["confusion"].shape == (100, 100)


def test_resume_equals_uninterrupted(tiny, synthetic_root, tmp_path, run_then_kill):
    config = tiny(epochs=3, augment="crop+flip+cutout", model_options={"width": 8, "dropout": 0.3})
    whole = train(config, tmp_path / "whole", data_root=synthetic_root, progress=False)

    first = Trainer(config, tmp_path / "split", data_root=synthetic_root, progress=False)
    run_then_kill(first, 1)  # the process state is thrown away
    del first
    resumed = Trainer(config, tmp_path / "split", data_root=synthetic_root, progress=False)
    assert resumed.try_resume() and resumed.epoch == 1
    result = resumed.run()
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in whole.history]
    assert result.test == whole.test
    a, b = whole.model.state_dict(), result.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_config(tiny, synthetic_root, tmp_path, run_then_kill):
    t = Trainer(tiny(epochs=2), tmp_path, data_root=synthetic_root, progress=False)
    run_then_kill(t, 1)
    other = Trainer(tiny(epochs=2, lr=0.01), tmp_path, data_root=synthetic_root, progress=False)
    with pytest.raises(ValueError, match="different config"):
        other.try_resume()


def test_lookahead_moves_the_weights_to_their_ema():
    model = torch.nn.Linear(3, 2)
    lookahead = ctrain.Lookahead(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
        model.bias.sub_(2.0)
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    lookahead.update(model, 0.75)
    for k, v in model.state_dict().items():
        expected = 0.75 * start[k] + 0.25 * moved[k]
        assert torch.allclose(v, expected) and torch.allclose(lookahead.ema[k], expected)


def test_fractional_epochs_and_lookahead_schedule(synthetic_root, monkeypatch):
    config = recipe("fastnet", epochs=1.5, batch_size=100, train_subset=600, val_size=0,
                    model_options={"widths": [16, 32, 32]}, tta=2)
    t = Trainer(config, data_root=synthetic_root, progress=False)
    assert t.steps_per_epoch == 6 and t.total_steps == 9 and t.num_epochs == 2
    decays, update = [], ctrain.Lookahead.update
    monkeypatch.setattr(ctrain.Lookahead, "update",
                        lambda self, model, decay: (decays.append(decay), update(self, model, decay)))
    result = t.run()
    assert t.step == 9 and len(result.history) == 2
    # every 5th step, then once more at the end onto the averaged weights themselves
    assert decays == [ctrain.Lookahead.decay(5, 9), 1.0]
    state = t.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in t.lookahead.ema.items())


def test_early_stopping_stops_on_time_and_restores_the_best_weights(tiny, synthetic_root,
                                                                     monkeypatch, tmp_path):
    scripted = [0.5, 0.7, 0.6, 0.65]  # val_acc per epoch: best at 2, then two worse epochs
    weights, validate = [], Trainer.validate

    def scripted_validate(self):
        row = validate(self)
        if len(weights) < len(scripted):  # the epochs' calls; finish() then measures for real
            weights.append(copy.deepcopy(self.model.state_dict()))
            row["val_acc"] = scripted[len(weights) - 1]
        return row

    monkeypatch.setattr(Trainer, "validate", scripted_validate)
    result = train(tiny(epochs=6, early_stop_patience=2), tmp_path, data_root=synthetic_root,
                   progress=False)
    assert result.stopped_early and len(result.history) == 4 and result.best_epoch == 2
    final = result.model.state_dict()
    assert all(torch.equal(final[k], weights[1][k]) for k in final)
    assert not all(torch.equal(final[k], weights[3][k]) for k in final)
    assert set(load_safe(tmp_path / "last.pt")["best"]["model"]) == set(final)


def test_without_early_stopping_no_best_weights_are_kept(tiny, synthetic_root, tmp_path):
    result = train(tiny(epochs=2), tmp_path, data_root=synthetic_root, progress=False)
    best = load_safe(tmp_path / "last.pt")["best"]
    best_val = max(result.history, key=lambda r: r["val_acc"])  # the first one on a tie
    assert best["model"] is None and best["epoch"] == best_val["epoch"]
    assert result.best_epoch is None and not result.stopped_early


def _chance(labels: torch.Tensor) -> float:
    """The accuracy of uniform probabilities: argmax picks class 0 for every image."""
    return float((labels == 0).double().mean())


def test_nonfinite_loss_stops_the_run_and_scores_it_as_chance(tiny, synthetic_root, tmp_path,
                                                              run_then_kill, synthetic_cifar10):
    t = Trainer(tiny(epochs=3), tmp_path, data_root=synthetic_root, progress=False)
    run_then_kill(t, 1)
    # From epoch 2 the model's training outputs are NaN; its weights stay finite.
    t.model.register_forward_hook(lambda m, i, out: out * math.nan if m.training else out)
    result = t.run()
    assert re.fullmatch(r"training loss became nan at epoch 2, step 16; lower lr .*",
                        result.diverged)
    assert len(result.history) == 1 and not result.stopped_early
    assert load_safe(tmp_path / "last.pt")["epoch"] == 1  # the unfinished epoch is not saved
    assert result.test["acc"] == pytest.approx(_chance(synthetic_cifar10.test_labels))
    assert result.test["loss"] == pytest.approx(math.log(10))  # uniform over 10 classes
    assert result.val["val_loss"] == pytest.approx(math.log(10))


def test_a_run_at_an_absurd_lr_diverges_into_a_finished_chance_result(tiny, synthetic_root,
                                                                      tmp_path,
                                                                      synthetic_cifar10):
    """A real run: at lr 1e10 weight decay multiplies the weights by about -5e5 per step
    (times the warm-up's 0.1), so they overflow within a few steps. The run cache keeps the
    diverged run as a finished one with finite metrics, and a rerun fetches it."""
    config = tiny(epochs=3, lr=1e10)
    run = runs.run(config, "absurd lr", root=tmp_path, data_root=synthetic_root, progress=False)
    assert run.result["diverged"].startswith("training loss became ")
    row = Row.from_run(run, "test").as_dict()
    assert row["epochs_run"] < 3 and row["epochs_run"] == len(run.history)
    assert row["test_acc"] == pytest.approx(_chance(synthetic_cifar10.test_labels))
    assert math.isfinite(row["test_loss"]) and math.isfinite(row["val_acc"])
    assert run.test_metrics(synthetic_root)["confusion"][:, 1:].sum() == 0  # all class 0
    again = runs.run(config, "absurd lr", root=tmp_path, data_root=synthetic_root,
                     progress=False)
    assert again.result == run.result  # from the cache, not trained again


def test_a_run_diverging_in_its_first_epoch_counts_that_epochs_time(tiny, synthetic_root):
    """No epoch finished, yet its steps took time: wall_seconds counts them."""
    t = Trainer(tiny(epochs=1), data_root=synthetic_root, progress=False)
    steps = []

    def slow_then_nan(module, inputs, out):
        if not module.training:
            return out
        steps.append(len(steps))
        time.sleep(0.2)  # 0.2 s per training step, NaN from the fourth
        return out * math.nan if len(steps) >= 4 else out

    t.model.register_forward_hook(slow_then_nan)
    result = t.run()
    assert result.diverged and result.history == [] and len(steps) == 4
    assert result.wall_seconds >= 0.8


@pytest.mark.parametrize("save", [True, False])
def test_a_diverged_run_writes_model_pt_only_when_its_caller_asks(save, tiny, synthetic_root,
                                                                  tmp_path):
    """The run cache keeps a diverged run as finished (model.pt, the default); `cnnlib train`
    asks for none."""
    t = Trainer(tiny(epochs=1), tmp_path, data_root=synthetic_root, progress=False)
    t.model.register_forward_hook(lambda m, i, out: out * math.nan if m.training else out)
    result = t.run(save_diverged=save)
    assert result.diverged
    assert (tmp_path / "model.pt").exists() is save and (result.checkpoint is not None) is save


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
    # equal values give equal keys, whatever their spelling
    assert RunConfig(epochs=6) == RunConfig(epochs=6.0) and RunConfig(epochs=6).key() == RunConfig(epochs=6.0).key()
    assert a.replace(model_options={"depth": 4, "width": 8.0}).key() == a.key()
    assert a.replace(model_options={"widths": (8, 16)}).key() == a.replace(model_options={"widths": [8, 16]}).key()
    assert a.replace(epochs=2.5).key() != a.key()
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
    assert last.startswith("test_acc=")
    stored = load_model(out / "model.pt").meta["metrics"]["test_acc"]
    assert float(last.split("=")[1]) == pytest.approx(stored, abs=5e-5)  # printed with 4 decimals

    assert cli.main(["evaluate", str(out / "model.pt")]) == 0
    last_eval = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_eval == last  # same weights, same test set

    paths = []
    for i, size in enumerate([(32, 32), (200, 120), (17, 45)]):
        p = tmp_path / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.new("RGB", size, (200, 30 * i, 10)).save(p)
        paths.append(str(p))
    assert cli.main(["predict", str(out / "model.pt"), *paths]) == 0
    # one line per image, then an indented "unsure" line where the tiny model is unsure
    lines = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("  unsure: ")]
    assert len(lines) == 3 and all(line.count(",") == 2 for line in lines)

    assert cli.main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert "fastnet" in names and "baseline" in names


def test_cli_sets_every_field_by_its_annotation():
    fields = {f.name: getattr(RunConfig(), f.name) for f in dataclasses.fields(RunConfig)}
    texts = [f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in fields.items()]
    args = cli.build_parser().parse_args(["train", "--out", "x", *(a for t in texts for a in ("--set", t))])
    assert cli.config_from_args(args) == RunConfig()  # every field read back as its own type

    def config(*sets):
        return cli.config_from_args(cli.build_parser().parse_args(
            ["train", "--out", "x", *(a for s in sets for a in ("--set", s))]))

    c = config("epochs=3.5", "lookahead=yes", "model_options={\"width\": 8}", "randaugment_ops=3")
    assert (c.epochs, c.lookahead, c.model_options, c.randaugment_ops) == (3.5, True, {"width": 8}, 3)
    for text, message in [("seed=1.5", "seed: cannot read '1.5' as an integer"),
                          ("lookahead=maybe", "lookahead: cannot read 'maybe' as true or false"),
                          ("model_options=[1]", "model_options: cannot read '[1]' as a JSON object"),
                          ("lr=fast", "lr: cannot read 'fast' as a number")]:
        with pytest.raises(ValueError) as e:
            config(text)
        assert str(e.value) == message


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path), "--set", "optimizer=rmsprop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optimizer" in err and "allowed" in err
    assert cli.main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _real_cifar10_available() -> bool:
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
