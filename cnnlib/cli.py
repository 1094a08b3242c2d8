"""The `cnnlib` command: data, models, train, evaluate, predict, lr-find."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import typing
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlib import _fileio as fileio
from cnnlib._checks import check_int
from cnnlib._fileio import FolderInUseError, first_line
from cnnlib.compress.saving import load_model
from cnnlib.data import cifar as cdata
from cnnlib.data.duplicates import obtain_lists
from cnnlib.data.obtain import DATASETS, NUM_CLASSES
from cnnlib.flags import Parser
from cnnlib.models.registry import count_parameters, create_model, list_models
from cnnlib.study import cache as runs
from cnnlib.study import definitions as studies
from cnnlib.study import locations, records, report
from cnnlib.training import assess
from cnnlib.training.checkpoint import evaluation_settings, load_safe
from cnnlib.training.config import RECIPES, RunConfig
from cnnlib.training.device import AUTOCAST_DTYPES, PRECISIONS, resolve_precision
from cnnlib.training.distributed import is_main
from cnnlib.training.evaluate import TTA_LEVELS, evaluate, predict_logits
from cnnlib.training.launch import LaunchError, guard
from cnnlib.training.loop import lr_find, same_config, train

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_READS_AS = {bool: "true or false", int: "an integer", float: "a number", dict: "a JSON object",
             str: "text"}


def _coerce(name: str, text: str, kind: type):
    """Parse `text` as a config field's annotated type: bool, int, float, dict (JSON) or str."""
    word = text.strip().lower()
    try:
        if kind is bool:
            if word in _TRUE + _FALSE:
                return word in _TRUE
        elif kind is dict:
            value = json.loads(text)
            if isinstance(value, dict):
                return value
        else:
            return kind(text)  # int, float, str
    except ValueError:  # json.JSONDecodeError is one too
        pass
    raise ValueError(f"{name}: cannot read {text!r} as {_READS_AS[kind]}")


def _literal(text: str):
    """Model option values: JSON literals where they parse (numbers, lists, bools), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag}: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v
    return out


def config_from_args(args) -> RunConfig:
    kinds = typing.get_type_hints(RunConfig)  # field name -> annotated type
    values = dict(RECIPES[args.recipe]) if args.recipe else {}
    for k in ("dataset", "model", "epochs", "train_subset", "seed", "device", "batch_size", "lr",
              "sync_bn"):
        v = getattr(args, k)
        if v is not None:
            values[k] = v
    for k, text in _pairs(args.set, "--set").items():
        if k not in kinds:
            raise ValueError(f"--set: unknown config field {k!r}; allowed: {', '.join(sorted(kinds))}")
        values[k] = _coerce(k, text, kinds[k])
    options = {k: _literal(v) for k, v in _pairs(args.opt, "--opt").items()}
    if options:
        values["model_options"] = {**values.get("model_options", {}), **options}
    config = RunConfig(**values)
    _check_up_front(config)
    return config


def _check_up_front(config: RunConfig) -> None:
    """What training would find only after loading the data and locking its folder: the
    model's options (the model built once), and a training subset too small to hold every
    class (the library only warns: `data.cifar.SubsetWarning`)."""
    create_model(config.model, NUM_CLASSES[config.dataset], **config.model_options)
    classes = NUM_CLASSES[config.dataset]
    if 0 < config.train_subset < classes:
        raise ValueError(f"--train-subset: {config.train_subset} images cannot hold the "
                         f"{classes} classes of {config.dataset}; the model would never see "
                         f"the others (give at least {classes}, or 0 for all)")


def cmd_data(args) -> int:
    for name in args.dataset or DATASETS:
        d = cdata.load_cifar(name, root=args.data_root, download=not args.no_download)
        mean, std = cdata.channel_stats(d.train_images)
        extra = f", {len(d.superclasses)} superclasses" if d.superclasses else ""
        print(f"{name}: train {len(d.train_labels)}, test {len(d.test_labels)}, "
              f"{d.num_classes} classes{extra}; mean {_fmt3(mean)} std {_fmt3(std)}; "
              f"fingerprint {cdata.fingerprint(d)}")
    try:  # the near-duplicate lists of the assessments: their metric stays empty without them
        if not args.no_download:
            obtain_lists(args.data_root)
    except OSError as e:
        print(f"ciFAIR's lists not obtained (no accuracy without near-duplicates): {first_line(e)}")
    return 0


def _fmt3(t) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in t) + ")"


def cmd_models(args) -> int:
    for name in list_models():
        print(f"{name} {count_parameters(create_model(name, args.num_classes))}")
    return 0


DIVERGED = 3  # exit status of a `cnnlib train` whose loss became non-finite


def cmd_train(args) -> int:
    config = config_from_args(args)
    if not args.out.strip():
        raise ValueError("--out: empty; give the folder for the run's checkpoints")
    out = Path(args.out)
    if not args.force:
        _refuse_another_model(out / "model.pt", config)
    with guard("train"):  # under torchrun: a failing rank names itself and exits at once
        # A diverged run writes no model.pt rather than model.diverged.pt: its weights may
        # hold NaN (every loader refuses them), and last.pt keeps the last finished epoch.
        result = train(config, out, resume=not args.restart, data_root=args.data_root,
                       progress=not args.quiet, save_diverged=False)
    if not is_main():
        return DIVERGED if result.diverged else 0  # under torchrun rank 0 reports
    t = result.test
    extra = f" superclass_acc={t['superclass_acc']:.4f}" if "superclass_acc" in t else ""
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    print(f"wall_seconds={result.wall_seconds:.1f} test_loss={t['loss']:.4f} top5={t['top5']:.4f}{extra}")
    print(f"test_acc={t['acc']:.4f}")
    if result.diverged:  # a result, not a model to use: a distinct status, no model.pt
        scored = ("scored as chance (uniform probabilities)" if result.best_epoch is None else
                  f"scored with epoch {result.best_epoch}'s weights")
        print(f"cnnlib train: diverged: {result.diverged}; {scored}; no model.pt written "
              f"(exit status {DIVERGED})", file=sys.stderr)
        return DIVERGED
    return 0


def _refuse_another_model(model: Path, config: RunConfig) -> None:
    """A model.pt in --out that is not this config's (the user's own model, another run)
    stops the run before any work: training would replace it. This config's own model.pt
    is a finished run of it: resumed (evaluated again) or, with --restart, trained again."""
    if not (model.exists() or model.is_symlink()):
        return
    try:
        saved = load_safe(model).get("config")
    except (ValueError, OSError) as e:  # DamagedFileError is a ValueError
        what = f"is not a readable cnnlib model ({first_line(e)})"
    else:
        if isinstance(saved, dict) and same_config(saved, config):
            return
        what = "holds a model of another config"
    raise ValueError(f"--out: {model} {what}; training would replace it: give another "
                     "folder, or --force to replace it")


def cmd_evaluate(args) -> int:
    check_int("--images", args.images, 1)
    model = load_model(args.checkpoint, args.device)  # fp32, pruned, int8 or .onnx
    meta = model.meta
    d = cdata.load_cifar(meta["config"]["dataset"], root=args.data_root)
    if list(meta["classes"]) != list(d.classes):  # before a long evaluation, not after it
        raise ValueError(f"{args.checkpoint}: its {len(meta['classes'])} classes are not the "
                         f"{d.num_classes} of {d.name}; it belongs to another dataset")
    # By default the settings the checkpoint's own metrics were measured with.
    settings = dict(meta.get("evaluation") or evaluation_settings(meta))
    if meta.get("kind") in ("int8", "onnx"):  # int8 kernels / onnxruntime: no autocast
        settings["precision"] = "fp32"
    for name in ("tta", "precision"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    precision = resolve_precision(settings["precision"], args.device)
    m = evaluate(model, d.test_images, d.test_labels, meta["mean"], meta["std"],
                 tta=settings["tta"], coarse=d.test_coarse, fine_to_coarse=d.fine_to_coarse,
                 device=args.device, channels_last=settings["channels_last"],
                 autocast_dtype=AUTOCAST_DTYPES[precision])
    extra = f" superclass_acc={m['superclass_acc']:.4f}" if "superclass_acc" in m else ""
    print(f"{meta['config']['dataset']} test (tta {settings['tta']}, {precision}): "
          f"loss={m['loss']:.4f} top5={m['top5']:.4f}{extra}")
    kwargs = dict(device=args.device, channels_last=settings["channels_last"],
                  autocast_dtype=AUTOCAST_DTYPES[precision])
    for line in assess.lines(model, meta["config"], d, m["probs"], tta=settings["tta"],
                             corruptions=args.corruptions, calibration_=args.calibration,
                             duplicates_=args.duplicates, images=args.images, **kwargs):
        print(line)
    print(f"test_acc={m['acc']:.4f}")
    return 0


def cmd_records(args) -> int:
    source, dest = locations.runs_root(args.runs), Path(args.dest)
    if not source.is_dir():
        raise ValueError(f"--runs: {source} is not a folder (the run cache to record)")
    records.check_destination(source, dest)  # before any work: also under another path
    profile = locations.resolve_profile(args.profile)
    # The models notebooks 01, 04 and 05 load, once the baseline study is finished.
    baseline = [runs.cached(c, label, root=source, data_root=args.data_root)
                for label, c in studies.baseline_runs(profile)]
    finished = [r for r in baseline if r is not None]
    with_model = ({r.path.name for r in report.model_runs(finished)}
                  if len(finished) == len(baseline) else set())
    recorded, left = [], 0
    for folder in sorted(f for f in source.iterdir() if f.is_dir()):
        if runs.is_finished(folder):
            recorded.append(records.save_record(folder, dest, with_model=folder.name in with_model))
        else:
            left += 1
    speeds = source / "speeds.json"
    if speeds.exists():  # with its pinned budgets: notebook 06 builds the same configs anywhere
        fileio.copy_file(speeds, dest / "speeds.json")
    size = sum(f.stat().st_size for r in recorded for f in r.iterdir())
    models = (f"with the models of {', '.join(sorted(with_model))}" if with_model else
              f"without models: {len(finished)} of the {len(baseline)} baseline runs "
              f"({profile}) are finished")
    print(f"{len(recorded)} runs recorded in {dest} ({size / 1e6:.2f} MB), {models}; "
          f"{left} unfinished left out")
    return 0


def load_image(path: str, size: int = 32) -> torch.Tensor:
    """Any PNG/JPEG as uint8 [3, size, size], RGB: turned upright by its EXIF orientation,
    cropped to its largest centred square, resized with antialiasing. 16-bit grayscale is
    scaled to 8 bits (PIL's own conversion would clip it to white)."""
    if Path(path).is_dir():
        raise ValueError(f"image: {path} is a folder; give image files")
    f = _regular_file(path)
    try:
        with warnings.catch_warnings():  # a decompression bomb is refused, not decoded
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with f, Image.open(f) as im:
                im = _centre_square(ImageOps.exif_transpose(_eight_bit(im)).convert("RGB"), size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"image: {path} is too large to decode ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's errors for damaged files
        # PIL names the file by its descriptor when it knows no image format: say that instead
        why = "no image format recognised" if isinstance(e, UnidentifiedImageError) else \
            f"{type(e).__name__}: {e}"
        raise ValueError(f"image: {path} is not a readable image, PNG or JPEG expected "
                         f"({why})") from None
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def _centre_square(im: Image.Image, size: int) -> Image.Image:
    """The largest centred square of `im`, resized to size x size.

    Cropped, not squashed: the object keeps its proportions, as in CIFAR's images. Cropped
    before resizing: `resize(box=...)` would let the filter read pixels beyond the square.
    LANCZOS is PIL's sharpest antialiased filter; without `reducing_gap` it weighs every
    source pixel, in about 0.1 s for a 12-megapixel photo.
    """
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = im.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def _regular_file(path: str):
    """`path` opened for reading if it is a regular file, else ValueError: a FIFO or a device
    would block or never end (opened non-blocking, so that checking it cannot hang)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"image: {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"image: {path} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"image: {path} is not a regular file (a FIFO, device or socket); "
                         "give image files")
    return os.fdopen(fd, "rb")


def _eight_bit(im: Image.Image) -> Image.Image:
    """16- and 32-bit integer grayscale ("I;16*", "I") as 8-bit "L", scaled from 16 bits."""
    if im.mode == "I" or im.mode.startswith("I;16"):
        values = np.asarray(im).astype(np.float64)  # "I;16B" is big-endian: numpy reads it
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))
    return im


# `predict` adds an "unsure" line when the top probability is under this many times chance
# (0.5 of 10 classes, 0.05 of 100): on the test sets the best models err on 40% (CIFAR-10) and
# 91% (CIFAR-100) of the images under it, on 2% and 29% of the others.
UNSURE_BELOW_CHANCE = 5


def cmd_predict(args) -> int:
    check_int("--top", args.top, 1)
    device = _predict_device(args.device)
    images = torch.stack([load_image(p) for p in args.images])
    model = load_model(args.checkpoint)  # fp32, pruned, int8 or .onnx, on the CPU
    meta = model.meta
    if meta["kind"] in ("int8", "onnx"):  # int8 kernels and onnxruntime run on the CPU only
        device = torch.device("cpu")
    tta = args.tta if args.tta is not None else evaluation_settings(meta)["tta"]
    probs = predict_logits(model.to(device), images, meta["mean"], meta["std"], tta=tta,
                           device=device).softmax(1)
    classes = meta["classes"]
    chance = 1 / len(classes)
    top = probs.topk(min(args.top, len(classes)), dim=1)
    for path, p, i in zip(args.images, top.values.tolist(), top.indices.tolist(), strict=True):
        ranked = ", ".join(f"{classes[c]} {q:.3f}" for q, c in zip(p, i, strict=True))
        print(f"{path}: {ranked}")
        if p[0] < UNSURE_BELOW_CHANCE * chance:
            print(f"  unsure: the top class has probability {p[0]:.3f} where chance is "
                  f"{chance:.3f} (1 of {len(classes)} classes)")
    return 0


def _predict_device(text: str) -> torch.device:
    """--device as a torch.device, by `RunConfig.device`'s rule (auto, cpu, cuda, cuda:N)."""
    try:
        device = RunConfig(device=text).resolved_device()
    except RuntimeError:  # torch's own parse, of "cuda:x" say
        device = None
    except ValueError as e:
        raise ValueError(f"--{first_line(e)}") from None
    if device is None or (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device: {text!r} is not a device here; allowed: auto, cpu, "
                         f"cuda, cuda:N (N < {torch.cuda.device_count()} GPUs)")
    return device


def cmd_lr_find(args) -> int:
    config = config_from_args(args)
    r = lr_find(config, steps=args.steps, data_root=args.data_root)
    for lr, loss in zip(r["lrs"][:: max(1, len(r["lrs"]) // 20)], r["losses"][:: max(1, len(r["lrs"]) // 20)],
                        strict=True):
        print(f"lr={lr:.3g} loss={loss:.4f}")
    print(f"suggested_lr={r['suggested_lr']:.4g}")
    return 0


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", choices=sorted(RECIPES), help="start from a named recipe")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--model", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--train-subset", type=int, help="train on N images (stratified); 0 = all")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--sync-bn", action="store_const", const=True, default=None,
                   help="under torchrun: BatchNorm statistics over the global batch")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="any other RunConfig field, e.g. --set augment=crop+flip+cutout")
    p.add_argument("--opt", action="append", metavar="OPTION=VALUE",
                   help="model option, e.g. --opt depth=8 --opt dropout=0.25")


PREDICT_DESCRIPTION = """\
The most likely classes of each image, as the model sees it: the image turned upright by its
EXIF orientation, cropped to its largest centred square and resized to 32x32, like the CIFAR
images the model learned from (keep the object near the centre)."""

PREDICT_EPILOG = f"""\
output: one line per image, "<image>: <class> <probability>, ..." (the --top most likely
classes, most likely first); under it, indented, "  unsure: ..." when the top probability is
below {UNSURE_BELOW_CHANCE} times chance: below {UNSURE_BELOW_CHANCE / 10:g} with CIFAR-10's 10 classes, \
{UNSURE_BELOW_CHANCE / 100:g} with CIFAR-100's 100.
The model knows only its dataset's classes: a photo of anything else still gets the nearest.
exit status: 0 printed; 2 an error, in one line (a bad flag, a missing or unreadable image
or checkpoint), before any image is classified.

example:
  cnnlib predict models/cnn_cifar10.pth cat.jpg ship.png --top 5 --tta 2"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cnnlib", description=__doc__)
    parser.add_argument("--data-root", help="dataset folder (default: env CNNLIB_DATA_ROOT or ./data)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="obtain and verify the datasets")
    p.add_argument("--dataset", action="append", choices=DATASETS)
    p.add_argument("--no-download", action="store_true",
                   help="only check: fail instead of downloading a missing dataset")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("models", help="list models with parameter counts")
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train one run; last line test_acc=<float>; "
                                     "torchrun --nproc_per_node=N -m cnnlib train ... trains on N "
                                     "processes (DDP)",
                       epilog=f"exit status: 0 trained, model.pt written; 2 an error, in one "
                              "line (bad input and an unusable --out stop it before training); "
                              f"{DIVERGED} diverged: the loss became non-finite, the metrics are "
                              "printed and no model.pt is written")
    _add_config_flags(p)
    p.add_argument("--out", required=True, help="folder for last.pt (resume) and model.pt")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--force", action="store_true",
                   help="replace a model.pt of another config in --out (refused without it)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test metrics of a checkpoint; last line test_acc=<float>")
    p.add_argument("checkpoint")
    p.add_argument("--tta", type=int, default=None, choices=(0, 1, 2),
                   help="test-time augmentation level (default: the one the checkpoint's metrics used)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="autocast for evaluation (default: the one the checkpoint's metrics used)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corruptions", action="store_true",
                   help="also the accuracy under the CIFAR-C corruptions, per family (severities "
                        "1-5, no TTA) on a seeded subset of --images test images")
    p.add_argument("--images", type=int, default=assess.ASSESS_IMAGES, help="test images for "
                   f"--corruptions, at most a quarter of the test set (default: {assess.ASSESS_IMAGES})")
    p.add_argument("--calibration", action="store_true", help="also ECE (15 bins) and NLL, "
                   "before and after temperature scaling fitted on the checkpoint's validation split")
    p.add_argument("--duplicates", action="store_true", help="also the accuracy without the "
                   "test images ciFAIR lists as near-duplicates of training images")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top classes for PNG/JPEG images of any size",
                       description=PREDICT_DESCRIPTION, epilog=PREDICT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the model: a .pt/.pth checkpoint (fp32 as cnnlib train "
                                      "writes it, pruned or int8 as compression saves it) or "
                                      "an .onnx export")
    p.add_argument("images", nargs="+", metavar="image",
                   help="PNG or JPEG files of any size and mode (grayscale, 16-bit, palette): "
                        "each is cropped to its largest centred square, then resized to 32x32")
    p.add_argument("--top", type=int, default=3,
                   help="how many classes to print per image, most likely first (default: 3)")
    p.add_argument("--tta", type=int, default=None, choices=TTA_LEVELS,
                   help="test-time augmentation, the model's outputs averaged over views: 0 the "
                        "image alone, 1 with its mirror image, 2 also with the mirrors of the "
                        "image shifted one pixel up-left and down-right (default: the level "
                        "the checkpoint's test accuracy was measured with)")
    p.add_argument("--device", default="cpu",
                   help="where the model runs: cpu (default), cuda, cuda:N, or auto (cuda "
                        "when there is one); int8 and .onnx models run on the CPU")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("records", help="copy the run cache's finished runs as records (result.json, "
                                       "and the models the notebooks load), to resume the study "
                                       "on another machine")
    p.add_argument("dest", help="folder for the records, e.g. outputs/runs of another checkout")
    p.add_argument("--runs", help="the run cache (default: env CNNLIB_RUNS or outputs/runs)")
    p.add_argument("--profile", default="auto",
                   help="the profile whose baseline models are carried (default: auto)")
    p.set_defaults(func=cmd_records)

    p = sub.add_parser("lr-find", help="LR range test; last line suggested_lr=<float>")
    _add_config_flags(p)
    p.add_argument("--steps", type=int, default=100)
    p.set_defaults(func=cmd_lr_find)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    # Bad input, unusable files and folders, a busy run folder, a failed multi-process run
    # (its workers printed their errors): one line. Anything else is a bug and keeps its
    # traceback. A diverged run is a result (cmd_train says so, exit status 3), not an error.
    except (ValueError, OSError, FolderInUseError, LaunchError) as e:
        print(f"cnnlib {args.command}: error: {first_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
