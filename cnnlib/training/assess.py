"""What a finished model is measured on besides its test score.

Three questions a person who ships a model asks, answered once per run (`assess`):

* **Common corruptions.** Accuracy on a fixed, seeded subset of the test images the run was
  scored on (at most `ASSESS_IMAGES`, the same images for every run of a dataset, so runs
  compare pairwise) under every implemented CIFAR-10-C / CIFAR-100-C family at severities
  1..5 (`data.corruptions`), and the clean accuracy of that subset beside it. Without
  test-time augmentation: TTA would multiply the cost by up to 6 for every one of the 70 sets.
* **Calibration.** Expected calibration error (15 equal-width confidence bins, Guo et al.
  2017) and negative log-likelihood of the test predictions the run was scored with (its TTA),
  before and after temperature scaling. The temperature is fitted on the validation split's
  predictions, made the same way; the test set never chooses it. No validation split, no
  temperature.
* **Without TTA.** Accuracy on the whole scored test set without test-time augmentation, the
  figure beside a TTA score that a deployment without TTA gets.
* **Near-duplicates.** Accuracy on the scored test images without those ciFAIR lists as
  having a near-duplicate in the training set (`data.duplicates`); empty, with the reason,
  when the lists cannot be had.
"""

from __future__ import annotations

import hashlib
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import multiclass_calibration_error

from cnnlib._fileio import first_line
from cnnlib.data import cifar as cdata
from cnnlib.data import duplicates
from cnnlib.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from cnnlib.training.device import AUTOCAST_DTYPES
from cnnlib.training.evaluate import predict_logits

__all__ = ["ASSESS_IMAGES", "ECE_BINS", "assess", "assess_checkpoint", "calibration", "lines",
           "corruption_accuracy", "duplicate_free_accuracy", "expected_calibration_error",
           "fit_temperature", "nll"]

# 1,000 images x 70 corrupted sets: a few minutes at most for the full fastnet on 2 CPU cores
# in bf16, under 15% of its 18-minute run; smaller test sets get a quarter of their images.
ASSESS_IMAGES = 1000
ASSESS_SEED = 0  # which images, and the corruptions' random draws: the same for every run
ECE_BINS = 15  # Guo et al. 2017; CIFAR-10-C papers (AugMix) report it with 15 bins too


# ----------------------------------------------------------------------------- calibration

def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """ECE of class probabilities [N, C]: the confidence-weighted gap between confidence
    and accuracy over `bins` equal-width bins of the top probability (L1)."""
    return float(multiclass_calibration_error(probs.float(), labels.long(),
                                              num_classes=probs.shape[1], n_bins=bins,
                                              norm="l1"))


def _log_probs(probs: torch.Tensor) -> torch.Tensor:
    # log of the softmax the run saved: logits up to a per-row constant, which softmax ignores
    return probs.double().clamp_min(1e-300).log()


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class."""
    return float(F.nll_loss(_log_probs(probs), labels.long()))


def scaled(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities after temperature scaling: softmax(logits / T)."""
    return (_log_probs(probs) / temperature).softmax(1).float()


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 that minimizes the NLL of softmax(logits / T) (Guo et al.): a
    convex problem in 1/T, solved by L-BFGS on log T from T = 1."""
    logp, labels = _log_probs(probs), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logp / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def calibration(test_probs: torch.Tensor, test_labels: torch.Tensor,
                val_probs: torch.Tensor | None = None,
                val_labels: torch.Tensor | None = None) -> dict:
    """ECE and NLL of the test predictions, and after temperature scaling fitted on the
    validation predictions (None without them)."""
    out = {"ece": expected_calibration_error(test_probs, test_labels),
           "nll": nll(test_probs, test_labels), "temperature": None, "ece_scaled": None,
           "nll_scaled": None, "val_images": 0 if val_labels is None else len(val_labels)}
    if val_probs is not None and len(val_labels):
        t = fit_temperature(val_probs, val_labels)
        after = scaled(test_probs, t)
        out.update(temperature=t, ece_scaled=expected_calibration_error(after, test_labels),
                   nll_scaled=nll(after, test_labels))
    return out


# ----------------------------------------------------------------------------- corruptions

def assessment_subset(n_test: int, images: int = ASSESS_IMAGES, seed: int = ASSESS_SEED
                      ) -> torch.Tensor:
    """Sorted indices of the test images (of the first `n_test`) every run of a dataset is
    assessed on: a seeded draw, the same for every run. `images` of them, at most a quarter
    of `n_test`: a smoke run scored on 200 images is assessed on 50, in about a second."""
    images = max(1, min(images, n_test // 4))
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_test, generator=gen)[:images].sort().values


_CORRUPTED: dict[tuple, dict] = {}  # the last image set's 70 corrupted copies


def corrupted_sets(images: torch.Tensor, seed: int = ASSESS_SEED) -> dict[tuple, torch.Tensor]:
    """`corrupt(images, name, severity)` for every family and severity, (name, severity) ->
    images, with a seed per set; kept in memory for the last set of images and seed, since
    every run of a study is assessed on the same ones."""
    key = (hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest(), seed)
    if key not in _CORRUPTED:
        _CORRUPTED.clear()
        _CORRUPTED[key] = {(name, s): corrupt(images, name, s, seed=seed * 1000 + 10 * i + s)
                           for i, name in enumerate(CORRUPTIONS) for s in SEVERITIES}
    return _CORRUPTED[key]


def corruption_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std,
                        *, seed: int = ASSESS_SEED, **predict_kwargs) -> dict:
    """Accuracy on `images` clean (`clean_acc`) and under every corruption family at every
    severity (`by_severity`: family -> one accuracy per severity), their means per family
    (`families`) and over all (`corruption_acc`). `predict_kwargs` go to `predict_logits`."""
    def accuracy(x):
        preds = predict_logits(model, x, mean, std, **predict_kwargs).argmax(1)
        return (preds == labels).double().mean().item()

    sets = corrupted_sets(images, seed)
    by_severity = {name: [accuracy(sets[name, s]) for s in SEVERITIES] for name in CORRUPTIONS}
    families = {name: sum(accs) / len(accs) for name, accs in by_severity.items()}
    return {"clean_acc": accuracy(images), "corruption_acc": sum(families.values()) / len(families),
            "families": families, "by_severity": by_severity}


# ----------------------------------------------------------------------------- duplicates

def duplicate_free_accuracy(preds: torch.Tensor, labels: torch.Tensor, dataset: str,
                            data_root=None) -> dict:
    """Accuracy on the scored test images (the first len(preds) of the test set) without those
    with a near-duplicate in the training set; `dup_free_acc` None with the reason
    (`duplicates_note`) when ciFAIR's lists cannot be had."""
    try:
        ids = duplicates.duplicate_test_ids(dataset, root=data_root)
    except duplicates.DuplicatesUnavailable as e:
        return {"dup_free_acc": None, "duplicates_removed": None, "duplicates_note": first_line(e)}
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[ids[ids < len(labels)]] = False
    right = preds[keep] == labels[keep]
    return {"dup_free_acc": right.double().mean().item() if keep.any() else math.nan,
            "duplicates_removed": int((~keep).sum()), "duplicates_note": ""}


# ----------------------------------------------------------------------------- one run

def assess(model: nn.Module, data: cdata.CifarData, test: cdata.Split, test_probs: torch.Tensor,
           val: cdata.Split | None, *, mean, std, tta: int, precision: str,
           channels_last: bool = False, images: int = ASSESS_IMAGES, data_root=None,
           device=None) -> dict:
    """A finished model's assessment (the module docstring): corruptions on `images` of the
    `test` images, calibration of `test_probs` (the run's own scored probabilities) with a
    temperature fitted on `val` predicted as the test set was, duplicate-free accuracy. A
    flat dict of plain numbers, with `seconds` it took."""
    t0 = time.perf_counter()
    settings = dict(device=device, channels_last=channels_last,
                    autocast_dtype=AUTOCAST_DTYPES[precision])
    subset = assessment_subset(len(test), images)
    robust = corruption_accuracy(model, test.images[subset], test.labels[subset], mean, std,
                                 **settings)
    val_probs = None
    if val is not None and len(val):
        val_probs = predict_logits(model, val.images, mean, std, tta=tta, **settings).softmax(1)
    # The whole scored test set without TTA: what the model gives where TTA is not affordable.
    plain = test_probs if tta == 0 else predict_logits(model, test.images, mean, std, tta=0,
                                                       **settings)
    out = {"images": len(subset), "seed": ASSESS_SEED, "severities": list(SEVERITIES),
           "test_acc_no_tta": (plain.argmax(1) == test.labels).double().mean().item(),
           **robust,
           **calibration(test_probs, test.labels, val_probs, None if val is None else val.labels),
           **duplicate_free_accuracy(test_probs.argmax(1), test.labels, data.name, data_root)}
    out["seconds"] = time.perf_counter() - t0
    return out


def _val_split(data: cdata.CifarData, config: dict) -> cdata.Split | None:
    """The validation split training held out under `config` (a RunConfig dict)."""
    return cdata.train_split(data, val_size=config.get("val_size", 0),
                             subset=config.get("train_subset", 0), seed=config.get("seed", 0))[1]


def assess_checkpoint(model: nn.Module, config: dict, test_probs: torch.Tensor | None = None, *,
                      evaluation: dict, images: int = ASSESS_IMAGES, data_root=None,
                      device=None) -> dict:
    """`assess` of a model trained with `config` (a RunConfig dict): its test and validation
    splits rebuilt as training made them, and its test probabilities predicted now (with
    `evaluation`'s TTA and precision) unless given."""
    data = cdata.load_cifar(config["dataset"], root=data_root)
    test = cdata.test_split(data, config.get("test_subset", 0))
    val = _val_split(data, config)
    mean, std = model.meta["mean"], model.meta["std"]
    settings = dict(device=device, channels_last=evaluation.get("channels_last", False),
                    autocast_dtype=AUTOCAST_DTYPES[evaluation["precision"]])
    if test_probs is None:
        test_probs = predict_logits(model, test.images, mean, std, tta=evaluation["tta"],
                                    **settings).softmax(1)
    return assess(model, data, test, test_probs, val, mean=mean, std=std, tta=evaluation["tta"],
                  precision=evaluation["precision"], channels_last=settings["channels_last"],
                  images=images, data_root=data_root, device=device)


def lines(model: nn.Module, config: dict, data: cdata.CifarData, test_probs: torch.Tensor, *,
          tta: int, corruptions: bool = False, calibration_: bool = False,
          duplicates_: bool = False, images: int = ASSESS_IMAGES, **predict_kwargs):
    """What `cnnlib evaluate --corruptions --calibration --duplicates` prints, a line at a
    time, for a model scored on the whole test set (`test_probs`, with TTA `tta`)."""
    test = cdata.test_split(data)
    mean, std = model.meta["mean"], model.meta["std"]
    if corruptions:
        subset = assessment_subset(len(test), images)
        r = corruption_accuracy(model, test.images[subset], test.labels[subset], mean, std,
                                **predict_kwargs)
        for name, accs in r["by_severity"].items():
            yield (f"corruption {name}: severities 1-5 " + " ".join(f"{a:.4f}" for a in accs)
                   + f" mean={r['families'][name]:.4f}")
        yield (f"corruptions ({len(subset)} test images, no TTA): clean_acc={r['clean_acc']:.4f} "
               f"corruption_acc={r['corruption_acc']:.4f}")
    if calibration_:
        val = _val_split(data, config)
        val_probs = None if val is None else predict_logits(
            model, val.images, mean, std, tta=tta, **predict_kwargs).softmax(1)
        c = calibration(test_probs, test.labels, val_probs, None if val is None else val.labels)
        after = ("no validation split to fit a temperature on" if c["temperature"] is None else
                 f"temperature {c['temperature']:.3f} (fitted on {c['val_images']} validation "
                 f"images): ece={c['ece_scaled']:.4f} nll={c['nll_scaled']:.4f}")
        yield f"calibration ({ECE_BINS} bins): ece={c['ece']:.4f} nll={c['nll']:.4f}; {after}"
    if duplicates_:
        d = duplicate_free_accuracy(test_probs.argmax(1), test.labels, data.name)
        yield (f"without ciFAIR's near-duplicates: unavailable ({d['duplicates_note']})"
               if d["dup_free_acc"] is None else
               f"without ciFAIR's {d['duplicates_removed']} near-duplicates of training images: "
               f"dup_free_acc={d['dup_free_acc']:.4f}")
