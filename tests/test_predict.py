"""`cnnlib predict`: a photo cropped to its centre square, the unsure line, the help.

Images are real PNG files; models are real checkpoints whose last layer is set so that their
output probabilities are known exactly.
"""

from __future__ import annotations

import argparse
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_hardening import one_line_error

from cnnlib import cli
from cnnlib.models.registry import create_model
from cnnlib.training.checkpoint import model_checkpoint, save_atomic
from cnnlib.training.config import RunConfig

GREEN = (0, 255, 0)


def centre_and_bands(side: int, band: tuple[int, int], portrait: bool, seed: int = 0):
    """A side x side textured centre between two green bands of `band` pixels: as (whole
    picture, its centre), HWC uint8. Portrait: the bands are above and below."""
    rng = np.random.default_rng(seed)
    centre = rng.integers(0, 120, (side, side, 3), dtype=np.uint8)  # green never above 119
    bands = [np.full((side, n, 3), GREEN, dtype=np.uint8) for n in band]
    whole = np.concatenate([bands[0], centre, bands[1]], axis=1)
    if portrait:
        return whole.transpose(1, 0, 2).copy(), centre.transpose(1, 0, 2).copy()
    return whole, centre


def save_png(array: np.ndarray, path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def squashed(array: np.ndarray) -> torch.Tensor:
    """What the old preprocessing gave: the whole picture resized to 32x32."""
    im = Image.fromarray(array).resize((32, 32), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("portrait, band", [(False, (64, 64)), (True, (48, 49))])
def test_a_photo_is_cropped_to_its_centre_square_not_squashed(tmp_path, portrait, band):
    whole, centre = centre_and_bands(64, band, portrait)
    assert whole.shape[:2] == ((64 + sum(band), 64) if portrait else (64, 64 + sum(band)))
    image = cli.load_image(save_png(whole, tmp_path / "whole.png"))
    alone = cli.load_image(save_png(centre, tmp_path / "centre.png"))
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert torch.equal(image, alone)  # the bands have no effect at all
    assert int(image[1].max()) < 160  # no trace of the green bands
    squash = squashed(whole)
    assert int((squash[1] == 255).sum()) >= 32 * 12  # in a squash the bands are most of it
    assert not torch.equal(image, squash)


def test_a_picture_32_pixels_high_keeps_its_centre_pixels_exactly(tmp_path):
    whole, centre = centre_and_bands(32, (40, 40), portrait=False)
    image = cli.load_image(save_png(whole, tmp_path / "wide.png"))
    assert torch.equal(image, torch.from_numpy(centre).permute(2, 0, 1))


def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    upright, _ = centre_and_bands(64, (20, 30), portrait=True)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "phone.png", exif=exif)
    want = cli.load_image(save_png(upright, tmp_path / "upright.png"))
    assert torch.equal(cli.load_image(str(tmp_path / "phone.png")), want)
    assert not torch.equal(cli.load_image(save_png(np.asarray(stored), tmp_path / "raw.png")), want)


def checkpoint(path, classes: list[str], top_logit: float, top: int = 3) -> str:
    """A real baseline checkpoint whose logits are `top_logit` for class `top`, 0 for the
    others, whatever the image: its last layer's weights are zero."""
    dataset = "cifar10" if len(classes) == 10 else "cifar100"
    config = RunConfig(dataset=dataset, model="baseline", model_options={"width": 8, "depth": 4})
    model = create_model("baseline", len(classes), width=8, depth=4)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[top] = top_logit
    save_atomic(model_checkpoint(model, config.to_dict(), classes=classes, mean=(0.5, 0.5, 0.5),
                                 std=(0.25, 0.25, 0.25)), path)
    return str(path)


def top_probability(top_logit: float, n: int) -> float:
    return math.exp(top_logit) / (math.exp(top_logit) + n - 1)


# Under 5 times chance, just under it (0.49 of 10 classes), just over it (0.51), confident.
@pytest.mark.parametrize("n, p_top, unsure", [(10, 0.155, True), (10, 0.49, True),
                                              (10, 0.51, False), (10, 0.999, False),
                                              (100, 0.04, True), (100, 0.06, False)])
def test_unsure_line_when_the_top_class_is_not_clearly_above_chance(
        tmp_path, capsys, synthetic_cifar10, synthetic_cifar100, n, p_top, unsure):
    classes = list((synthetic_cifar10 if n == 10 else synthetic_cifar100).classes)
    top_logit = math.log(p_top * (n - 1) / (1 - p_top))
    assert top_probability(top_logit, n) == pytest.approx(p_top)
    model = checkpoint(tmp_path / "model.pt", classes, top_logit)
    whole, _ = centre_and_bands(64, (30, 30), portrait=False)
    images = [save_png(whole, tmp_path / "a.png"), save_png(whole[:, ::-1].copy(), tmp_path / "b.png")]
    assert cli.main(["predict", model, *images]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == (4 if unsure else 2)
    firsts = lines[::2] if unsure else lines
    rest = (1 - p_top) / (n - 1)
    for path, line in zip(images, firsts, strict=True):  # the first line keeps its format
        assert re.fullmatch(rf"{re.escape(path)}: (\S+ [01]\.\d{{3}}, ){{2}}\S+ [01]\.\d{{3}}", line)
        assert line.startswith(f"{path}: {classes[3]} {p_top:.3f}, ") and f" {rest:.3f}, " in line
    if unsure:
        assert lines[1] == lines[3] == (f"  unsure: the top class has probability {p_top:.3f} "
                                        f"where chance is {1 / n:.3f} (1 of {n} classes)")


def test_top_prints_that_many_classes_at_most_all_of_them(tmp_path, capsys, synthetic_cifar10):
    model = checkpoint(tmp_path / "model.pt", list(synthetic_cifar10.classes), 5.0)
    image = save_png(centre_and_bands(40, (5, 5), portrait=True)[0], tmp_path / "p.png")
    for top, shown in ((1, 1), (5, 5), (50, 10)):
        assert cli.main(["predict", model, image, "--top", str(top), "--tta", "2"]) == 0
        assert capsys.readouterr().out.count(",") == shown - 1


def test_bad_input_is_one_line(tmp_path, capsys, synthetic_cifar10):
    model = checkpoint(tmp_path / "model.pt", list(synthetic_cifar10.classes), 5.0)
    image = save_png(centre_and_bands(40, (5, 5), portrait=False)[0], tmp_path / "ok.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    assert "--top: 0 is not allowed" in one_line_error(capsys, "predict", model, image, "--top", "0")
    assert f"{tmp_path / 'gone.png'} does not exist" in one_line_error(
        capsys, "predict", model, tmp_path / "gone.png")
    assert one_line_error(capsys, "predict", model, text).endswith(
        f"{text} is not a readable image, PNG or JPEG expected (no image format recognised)")
    assert "--device: 'gpu' is not allowed" in one_line_error(
        capsys, "predict", model, image, "--device", "gpu")
    with pytest.raises(SystemExit) as stop:  # argparse's own check, one line too
        cli.main(["predict", model, image, "--tta", "3"])
    err = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "--tta: invalid choice: 3" in err[0]
    assert "does not exist" in one_line_error(capsys, "predict", tmp_path / "none.pt", image)


def predict_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["predict"]


def test_help_describes_every_option_and_argument():
    parser = predict_parser()
    text = parser.format_help()
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.dest
        names = action.option_strings or [action.metavar or action.dest]
        assert all(name in text for name in names), names
    helps = {a.dest: a.help for a in parser._actions}
    assert all(kind in helps["checkpoint"] for kind in (".pt", ".pth", "fp32", "pruned", "int8", ".onnx"))
    assert all(words in helps["images"] for words in ("PNG", "JPEG", "any size", "centred square"))
    assert all(f"{level} " in helps["tta"] for level in cli.TTA_LEVELS)
    assert all(d in helps["device"] for d in ("cpu", "cuda", "auto"))
    assert "example:\n  cnnlib predict " in text and "unsure" in text
    assert f"below {cli.UNSURE_BELOW_CHANCE} times chance" in text


def test_tta_defaults_to_the_level_the_checkpoint_was_measured_with(tmp_path, capsys,
                                                                    synthetic_cifar10, monkeypatch):
    classes = list(synthetic_cifar10.classes)
    model = checkpoint(tmp_path / "model.pt", classes, 5.0)
    ckpt = torch.load(model, weights_only=True)
    ckpt["evaluation"] = {"tta": 2, "precision": "fp32", "channels_last": False}
    save_atomic(ckpt, tmp_path / "tta2.pt")
    image = save_png(centre_and_bands(40, (5, 5), portrait=False)[0], tmp_path / "p.png")
    used = []
    real = cli.predict_logits
    monkeypatch.setattr(cli, "predict_logits", lambda *a, **k: used.append(k["tta"]) or real(*a, **k))
    for args, level in ((["predict", str(tmp_path / "tta2.pt"), image], 2),
                        (["predict", str(tmp_path / "tta2.pt"), image, "--tta", "0"], 0),
                        (["predict", model, image], 0)):
        assert cli.main(args) == 0
        assert used.pop() == level
    capsys.readouterr()
