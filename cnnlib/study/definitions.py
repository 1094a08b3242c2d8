"""The study's experiments: which configs each notebook runs, per profile.

A profile sizes the same experiments for a machine:
- smoke: tiny subsets and two epochs, seconds per notebook (tests, CI, nbval); the
         sweeps on CIFAR-100 keep only their first and last variant;
- cpu:   the full training sets and the full test sets, sized for a few hours of
         `./run_all.sh` on 2 CPU cores (`python -m cnnlib.study plan --profile cpu` estimates it);
- full:  the same experiments at GPU size.

Every sweep but one runs in the *reference regime*: the full training set minus the
validation split, and a reference network and recipe strong enough (CIFAR-10 >= 85%,
CIFAR-100 >= 55% mean validation accuracy on the cpu profile) for a change to show. The exception
is the overfitting sub-study, which trains the simple CNN on a small subset without
augmentation for a long schedule, where the train-validation gap opens on purpose; its depth
sweep is repeated in the seed's regime (the simple CNN on the full training sets with crop and
flip, both datasets).

Every function returns a list of (label, RunConfig); notebooks pass it to `executors.run_all`
and plot what comes back. `STUDIES` holds one `Study` per notebook: its runs, its sweeps
(labels and reference, generated from the same variants as the runs), its figures and the
findings it states; `findings` reads the sweeps from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cnnlib.models.registry import model_options as _model_defaults
from cnnlib.study import cache, lr_grid, measurements, stopping
from cnnlib.study.budget import epochs_for
from cnnlib.study.sweeps import Study, Sweep
from cnnlib.training.config import RECIPES, RunConfig, recipe
from cnnlib.training.loop import lr_peak_epoch

DATASETS = ("cifar10", "cifar100")

# Sizes per profile (RunConfig fields unless noted):
# "reference": the sweeps' network and recipe (the fastnet recipe; "reference_model" names
#   the model options), "reference_per_dataset" its changes for one dataset;
# "best", "best_per_dataset": notebook 01's best model, the full fastnet on the fastnet_muon
#   recipe (a validation split kept for choosing the exported seed); "best_seeds" its seeds;
# "overfit": the overfitting sub-study's simple CNN (small subset, no augmentation, long);
# "depth_full": the simple CNN's depth sweep on the full training sets (crop+flip, the
#   baseline recipe), each dataset, every seed;
# "architecture_seconds": the architecture frontier's shortest training budget (training steps);
# "architecture_seeds": per budget (a multiple of that one, `BUDGETS`), the seeds it runs (the
#   first n of "seeds": fewer at the longer budgets, which cost more);
# "reduce_sweeps": on every dataset after the first, a sweep keeps only its first and last
#   variant (smoke: both datasets still go through every code path, in seconds);
# "lr_find_steps": batches of each learning-rate range test;
# "compression": notebook 05 (compression_study.compress_model): fine-tuning steps and batch,
#   calibration images, test images (0 = all), seconds per timing, QAT steps (0 = no QAT row).
_SMOKE = dict(train_subset=256, test_subset=200, val_size=128, epochs=2, batch_size=64)
SETTINGS = {
    "smoke": {
        "seeds": (0,),
        "reference": dict(_SMOKE, tta=0, model_options={"widths": [8, 16, 16]}),
        "best": dict(_SMOKE, tta=0, model_options={"widths": [16, 32, 32]}),
        "best_seeds": (0,),
        "overfit": dict(_SMOKE, epochs=4, model_options={"width": 8}),
        "depth_full": dict(_SMOKE, model_options={"width": 8}),
        "architecture_seconds": 0.25,
        "architecture_seeds": {1: 1, 3: 1, 9: 1},
        "architecture_options": {"baseline": {"width": 8}, "fastnet": {"widths": [8, 16, 16]}},
        "reduce_sweeps": True,
        "lr_find_steps": 12,
        "compression": dict(steps=2, batch_size=32, calibration=64, test_subset=200,
                            seconds=0.05, qat_steps=0),
    },
    "cpu": {
        "seeds": (0, 1, 2),
        # fastnet at half its widths (a quarter of the parameters); epochs chosen on validation
        # accuracy (seed 0, 2-core AVX2 CPU, fp32): CIFAR-10 86.5% after 4 epochs in 5 min (the
        # full network needs 2 epochs and 16 min for 85.7% test); CIFAR-100 50.9% after 6
        # epochs, 57.7% after 10.
        "reference": dict(val_size=5000, epochs=4, tta=0, model_options={"widths": [32, 128, 128]}),
        "reference_per_dataset": {"cifar100": dict(epochs=10)},
        # CIFAR-10: airbench94_muon's 8-epoch budget: 94.16 ± 0.20% over 5 seeds on 2 Zen 4 cores
        # in bf16, all 50,000 images; CIFAR-100: the 15 epochs that took SGD past 72%. With
        # Muon, 10 epochs (7 min on an AMX Xeon) ended at 67.7% validation accuracy (seed 0, no
        # TTA): too far below 72% to shorten the budget on that evidence.
        "best": dict(val_size=2000, epochs=8),
        "best_per_dataset": {"cifar100": dict(epochs=15)},
        "best_seeds": (0, 1, 2),
        "overfit": dict(train_subset=5000, val_size=5000, epochs=30, batch_size=128),
        # 10 epochs, the reference's CIFAR-100 budget: each run sees 450,000 images, 3x a
        # 30-epoch run of the 5,000-image sub-study; at its measured speed (2 cores, bf16) a run
        # takes 3 (depth 2) to 13 min (depth 10), the 30 runs about 4 h.
        "depth_full": dict(val_size=5000, epochs=10),
        # 2, 6 and 18 minutes (2, 8 and 24 took 5.6 h of the plan's 14); one seed at the longer
        # budgets, whose minutes cost the most (a second seed there buys a paired test with one
        # degree of freedom, rarely conclusive).
        "architecture_seconds": 120.0,
        "architecture_seeds": {1: 3, 3: 1, 9: 1},
        "lr_find_steps": 60,
        "compression": dict(steps=300, batch_size=128, calibration=2048, test_subset=0,
                            seconds=1.0, qat_steps=0),
    },
    "full": {
        "seeds": (0, 1, 2),
        "reference": dict(val_size=5000, epochs=10, tta=0),
        "best": dict(val_size=2000, epochs=20),
        "best_seeds": (0, 1, 2),
        "overfit": dict(train_subset=5000, val_size=5000, epochs=60, batch_size=128),
        "depth_full": dict(val_size=5000, epochs=30),
        "architecture_seconds": 600.0,
        "architecture_seeds": {1: 3, 3: 2, 9: 2},
        "lr_find_steps": 100,
        "compression": dict(steps=500, batch_size=256, calibration=4096, test_subset=0,
                            seconds=1.0, qat_steps=300),
    },
}


def settings(profile: str) -> dict:
    if profile not in SETTINGS:
        raise ValueError(f"profile: {profile!r} is not allowed; allowed: {', '.join(SETTINGS)}")
    return SETTINGS[profile]


def _variants(profile: str, dataset: str, variants: list, datasets=DATASETS) -> list:
    """A sweep's variants on `dataset`: all, or the first and last under reduce_sweeps."""
    if settings(profile).get("reduce_sweeps") and dataset != datasets[0] and len(variants) > 2:
        return [variants[0], variants[-1]]
    return list(variants)


def _recipe(name: str, **fields) -> RunConfig:
    """`config.recipe`, with model options equal to the model's defaults left out.

    So the same network always has the same config, hence the same run-cache key
    ("depth 6" of the depth sweep and "dropout 0.0" of the dropout sweep are one run).
    """
    model = fields.get("model", RECIPES[name]["model"])
    defaults = _model_defaults(model)
    options = {k: v for k, v in (fields.pop("model_options", None) or {}).items()
               if k not in defaults or defaults[k] != v}
    return recipe(name, model_options=options, **fields)


def _sized(profile: str, part: str, dataset: str) -> dict:
    s = settings(profile)
    return {**s[part], **s.get(f"{part}_per_dataset", {}).get(dataset, {})}


def reference(profile: str, dataset: str, seed: int = 0, **changes) -> RunConfig:
    """The sweeps' reference run on `dataset`, with changes (fastnet recipe, reference size)."""
    return _recipe("fastnet", dataset=dataset, seed=seed,
                   **{**_sized(profile, "reference", dataset), **changes})


def baseline_runs(profile: str, datasets=DATASETS) -> list[tuple[str, RunConfig]]:
    """Notebook 01: the sweeps' reference network and the best model on each dataset."""
    s = settings(profile)
    out = []
    for ds in datasets:
        out += [("reference", reference(profile, ds, seed)) for seed in s["seeds"]]
        out += [("best", _recipe("fastnet_muon", dataset=ds, seed=seed,
                                 **_sized(profile, "best", ds)))
                for seed in s["best_seeds"]]
    return out


# Each variant adds to or removes from the reference's crop+flip. Dropped for the budget
# (still available through `augment=`): crop or flip alone, colour jitter, RandAugment.
# The reference comes first: a reduced sweep (first and last variant) still has it.
AUGMENTATIONS = ["crop+flip", "none", "crop+flip+cutout", "crop+flip+mixup", "crop+flip+cutmix",
                 "crop+flip+autoaugment", "crop+flip+trivialaugment", "crop+flip+augmix"]
# MixUp and CutMix mix half the batches, as the CutMix paper's CIFAR code does: mixing every
# batch on top of label smoothing left the reference network underfitting (study v2).
MIX_PROB = 0.5
# The same question at a longer budget, where the literature measured these augmentations
# (cutout, AutoAugment, TrivialAugment after 200 epochs): the reference's epochs times this
# factor per dataset, for the labels that answer the seed's question (what crop and flip are
# worth) and the two augmentations the literature reports gains for at long schedules.
LONG_BUDGET = {"cifar10": 4, "cifar100": 2}
LONG_AUGMENTATIONS = ["crop+flip", "none", "crop+flip+cutout", "crop+flip+trivialaugment"]
LONG = " (long)"  # the suffix of a label at the longer budget


def _augmented(profile: str, dataset: str, seed: int, augment: str, **changes) -> RunConfig:
    mixes = {"mixup", "cutmix"} & set(augment.split("+"))
    return reference(profile, dataset, seed, augment=augment,
                     **(dict(mix_prob=MIX_PROB) if mixes else {}), **changes)


def augmentation_runs(profile: str, datasets=DATASETS) -> list[tuple[str, RunConfig]]:
    """Notebook 02: the reference with each augmentation, several seeds, both datasets; then
    the long-budget labels at `LONG_BUDGET` times the reference's epochs."""
    seeds = settings(profile)["seeds"]
    out = [(aug, _augmented(profile, ds, seed, aug))
           for ds in datasets for aug in _variants(profile, ds, AUGMENTATIONS, datasets)
           for seed in seeds]
    for ds in datasets:
        epochs = _sized(profile, "reference", ds)["epochs"] * LONG_BUDGET[ds]
        out += [(aug + LONG, _augmented(profile, ds, seed, aug, epochs=epochs))
                for aug in _variants(profile, ds, LONG_AUGMENTATIONS, datasets) for seed in seeds]
    return out


def _overfit(profile: str, seed: int, dataset: str = "cifar10", **changes) -> RunConfig:
    """The overfitting sub-study's simple CNN: small subset, no augmentation, long schedule."""
    s = dict(settings(profile)["overfit"])
    options = {**s.pop("model_options", {}), **changes.pop("model_options", {})}
    return _recipe("baseline", dataset=dataset, seed=seed, augment="none", label_smoothing=0.0,
                   model_options=options, **{**s, **changes})


DEPTHS = (2, 4, 6, 8, 10)
WIDTHS = (16, 32, 64)
DROPOUTS = (0.0, 0.5)
WEIGHT_DECAYS = (0.0, 5e-4, 5e-3)


@dataclass(frozen=True)
class Knob:
    """One knob of the overfitting sub-study: its values, the label and config change of a
    value, and the standard network's value (the sweep's reference)."""

    name: str
    values: tuple
    label: Callable[[Any], str]
    change: Callable[[Any], dict]
    standard: Any

    def variants(self) -> list[tuple[str, dict]]:
        return [(self.label(v), self.change(v)) for v in self.values]


_SIMPLE_CNN = _model_defaults("baseline")  # the sub-study's standard network
KNOBS = (
    Knob("depth", DEPTHS, lambda d: f"depth {d}", lambda d: {"model_options": {"depth": d}},
         _SIMPLE_CNN["depth"]),
    Knob("width", WIDTHS, lambda w: f"width {w}", lambda w: {"model_options": {"width": w}},
         _SIMPLE_CNN["width"]),
    Knob("dropout", DROPOUTS, lambda p: f"dropout {p}",
         lambda p: {"model_options": {"dropout": p}}, _SIMPLE_CNN["dropout"]),
    Knob("weight decay", WEIGHT_DECAYS, lambda wd: f"weight decay {wd:g}",
         lambda wd: {"weight_decay": wd}, RECIPES["baseline"]["weight_decay"]),
)


def overfitting_runs(profile: str) -> list[tuple[str, RunConfig]]:
    """Notebook 03, part 1: depth, width, dropout and weight decay against the gap (CIFAR-10)."""
    return [(label, _overfit(profile, seed, **changes))
            for knob in KNOBS for label, changes in knob.variants()
            for seed in settings(profile)["seeds"]]


# Early stopping's two labels: the reference (the full schedule) first.
EARLY_STOPPING = ("no early stopping", "early stopping")


# The candidate rules, replayed on the validation histories of the runs without early stopping
# (`stopping.simulate`, at no cost): each metric with each patience, counted after the schedule's
# lr peak (`loop.lr_peak_epoch`). Counted from the first epoch (study v2) the rule stopped
# during the one-cycle warmup, whose rising lr makes the validation numbers worse for a while.
STOP_METRICS = ("val_loss", "val_acc")
STOP_PATIENCES = (1, 2, 3, 5, 8)
# The choice (`stopping.choose`): the candidate that saves the most epochs on average among
# those whose mean validation accuracy lost (the full run's last epoch minus the restored one)
# is at most this; ties to the smaller loss. 0.5 pp is below one standard error of a validation
# accuracy near 68% on 5,000 images (0.66 pp) and below the sub-study's seed-to-seed sd (0.8
# pp, study v2): a cost the split can hardly see. If no candidate meets it: the smallest loss.
STOP_MAX_LOSS_PP = 0.5


def early_stopping_runs(profile: str, chosen: stopping.Choice | None = None
                        ) -> list[tuple[str, RunConfig]]:
    """Notebook 03, part 2: the sub-study's standard run without early stopping, then with the
    rule `chosen` on the former's histories (`early_stopping_choice`), counted after the lr
    peak. Without a choice (planning only) its first candidate stands in: as many runs.

    Same seed, same schedule: the stopped run is the first epochs of the full one, then
    the weights of its best epoch.
    """
    seeds = settings(profile)["seeds"]
    full = [(EARLY_STOPPING[0], _overfit(profile, seed)) for seed in seeds]
    metric, patience = (chosen.metric, chosen.patience) if chosen else (STOP_METRICS[0],
                                                                        STOP_PATIENCES[0])
    return full + [(EARLY_STOPPING[1], c.replace(early_stop_metric=metric,
                                                 early_stop_patience=patience,
                                                 early_stop_after=lr_peak_epoch(c)))
                   for _, c in full]


def early_stopping_candidates(runs):
    """Every candidate rule replayed on the runs without early stopping (`stopping.simulate`)."""
    return stopping.simulate(runs, STOP_METRICS, STOP_PATIENCES)


def early_stopping_choice(runs) -> stopping.Choice:
    """The rule chosen on the validation histories of the runs without early stopping."""
    return stopping.choose(early_stopping_candidates(runs), STOP_MAX_LOSS_PP)


def early_stopping_rule(profile: str, chosen: stopping.Choice) -> str:
    """The stopped runs' rule in words, as `chosen` on the validation histories."""
    c = next(c for label, c in early_stopping_runs(profile, chosen) if label == EARLY_STOPPING[1])
    within = "" if chosen.within else (f"; no candidate lost at most {STOP_MAX_LOSS_PP:g} pp, "
                                       "so the one that lost the least")
    return (stopping.rule_words(c.early_stop_metric, c.early_stop_patience, c.early_stop_after)
            + f", chosen on validation histories{within}")


# The depth question in the seed's regime (full training sets, crop+flip), beside the 5,000-image
# sub-study where overfitting is on purpose; its labels differ from that sub-study's.
FULL_SET = " (full set)"
# Depths 4 and 8 are cut here to fit the cpu plan (14 h): the 30 runs of all five took ~4 h;
# the ends and the standard depth keep the question; the sub-study keeps all five.
FULL_SET_DEPTHS = (2, 6, 10)


def depth_runs(profile: str, datasets=DATASETS) -> list[tuple[str, RunConfig]]:
    """Notebook 03, part 4: the simple CNN (baseline recipe) at each of `FULL_SET_DEPTHS` on the
    full training set minus the validation split of each dataset, every seed."""
    s = dict(settings(profile)["depth_full"])
    options = s.pop("model_options", {})
    standard = _SIMPLE_CNN["depth"]  # first: a reduced sweep keeps the reference
    order = [standard, *(d for d in FULL_SET_DEPTHS if d != standard)]
    return [(f"depth {d}{FULL_SET}", _recipe("baseline", dataset=ds, seed=seed,
                                             model_options={**options, "depth": d}, **s))
            for ds in datasets for d in sorted(_variants(profile, ds, order, datasets))
            for seed in settings(profile)["seeds"]]


# Notebook 03, part 3: learning rate, optimizer and schedule of the reference network (CIFAR-10).
# Study v2's four optimizers. Muon (`optimizer="muon"`) trains notebook 01's best models.
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw")
# Adam and AdamW with their own settings, not the Nesterov recipe's: betas (0.9, 0.999)
# (`momentum` is β1), one learning rate for every parameter (no BatchNorm multiplier), no
# lookahead; Adam's weight decay an L2 term in the gradient (5e-4, the CIFAR papers' value),
# AdamW's decoupled from it (0.05, the value of DeiT's and ConvNeXt's AdamW recipes).
OWN_SETTINGS = {"adam": dict(momentum=0.9, norm_lr_scale=1.0, lookahead=False, weight_decay=5e-4),
                "adamw": dict(momentum=0.9, norm_lr_scale=1.0, lookahead=False, weight_decay=0.05)}
# Each optimizer's grid: five rates a factor 2 apart (16x in all) around its conventional rate
# at the reference batch of 1024: centred on the recipe's 1.5 for SGD and Nesterov; for Adam
# and AdamW, on 6e-3. Their first grid was centred on Adam's default 1e-3 at batch 128 scaled by
# the square root of the batch ratio (2.8e-3, rounded to 3e-3); on the cpu profile both peaked
# at its top rate (validation accuracy rising to 0.012), so the grid moved up one step.
LR_STEPS = (0.25, 0.5, 1, 2, 4)
LR_CENTRES = {"sgd": RECIPES["fastnet"]["lr"], "nesterov": RECIPES["fastnet"]["lr"],
              "adam": 6e-3, "adamw": 6e-3}
LR_GRIDS = {o: tuple(float(f"{c * k:.3g}") for k in LR_STEPS) for o, c in LR_CENTRES.items()}
# The schedules compared at the recipe optimizer's chosen rate: the recipe's one-cycle (warmup
# from 0.2x to the peak over 23% of the steps, then linear to 0.07x); cosine from the peak at the
# first step to 0 (the ResNet/WRN papers' recipe today); step: the peak, divided by 10 at 50% and
# 75% of the steps (the ResNet paper's shape).
SCHEDULES = {"one-cycle": {}, "cosine": dict(schedule="cosine", warmup=0.0, final_lr=0.0),
             "step": dict(schedule="step")}
CHOSEN = " @ chosen lr"  # the suffix of an optimizer's label at its chosen rate


def grid_label(optimizer: str, lr: float) -> str:
    return f"{optimizer} @ lr {lr:g}"


def grid_seed(profile: str) -> int:
    """The grid's seed: one the sweeps do not use, so the runs scored at the chosen rate are
    not the grid runs that won the choice."""
    return max(settings(profile)["seeds"]) + 1


def optimized(profile: str, optimizer: str, lr: float, seed: int = 0,
              dataset: str = "cifar10", **changes) -> RunConfig:
    """The reference network trained by `optimizer` at `lr`, with the optimizer's own settings."""
    return reference(profile, dataset, seed, optimizer=optimizer, lr=lr,
                     **{**OWN_SETTINGS.get(optimizer, {}), **changes})


def lr_find_configs(profile: str, dataset: str = "cifar10") -> dict[str, RunConfig]:
    """Notebook 03, part 3: per optimizer, the config its range test scans."""
    return {opt: optimized(profile, opt, LR_CENTRES[opt], dataset=dataset) for opt in OPTIMIZERS}


def lr_grid_runs(profile: str) -> list[tuple[str, RunConfig]]:
    """Notebook 03, part 3: each optimizer at each rate of its grid, one seed (`grid_seed`)."""
    return [(grid_label(o, lr), optimized(profile, o, lr, grid_seed(profile)))
            for o in OPTIMIZERS for lr in LR_GRIDS[o]]


def optimizer_runs(profile: str, chosen: dict[str, float] | None = None
                   ) -> list[tuple[str, RunConfig]]:
    """Notebook 03, part 3: each optimizer at its rate `chosen` on the grid, then the recipe's
    optimizer at its chosen rate under each of `SCHEDULES`; every seed. Without a choice
    (planning only) each grid's centre stands in: as many runs."""
    rates = chosen or LR_CENTRES
    seeds, opt = settings(profile)["seeds"], RECIPES["fastnet"]["optimizer"]
    out = [(o + CHOSEN, optimized(profile, o, rates[o], seed)) for o in OPTIMIZERS for seed in seeds]
    return out + [(f"{name} schedule", optimized(profile, opt, rates[opt], seed, **changes))
                  for name, changes in SCHEDULES.items() for seed in seeds]


# The architecture frontier: each network with its own family's recipe at several wall-clock
# budgets. The simple CNN and fastnet keep their recipes (fastnet's is part of what it is); the
# ResNets, WRN and DenseNet take their papers' CIFAR recipe (`sgd_cosine`), not one tuned for
# another network: study v2 trained them all with the simple CNN's, at one budget of 2 minutes
# in which WRN-16-4 saw half an epoch, so its ranking measured epochs.
# ResNet-56 (ResNet-20 with three times the blocks) is cut to fit the cpu plan; notebook 03 asks
# what depth is worth, and `cnnlib train --model resnet56 --recipe sgd_cosine` trains it.
ARCHITECTURES = ("baseline", "resnet20", "wrn16_4", "densenet_bc", "fastnet")
_OWN_RECIPE = {"baseline": "baseline", "fastnet": "fastnet"}
# The budgets per dataset, as multiples of the profile's architecture_seconds: three on CIFAR-10,
# two on CIFAR-100 (its ×9 would add about an hour to the cpu plan).
BUDGETS = {"cifar10": (1, 3, 9), "cifar100": (1, 3)}
BUDGET_FACTORS = tuple(sorted({f for factors in BUDGETS.values() for f in factors}))
# Each network's published test accuracy (%) after its paper's full schedule, shown beside ours
# and labelled; never a bar a run must clear. None where the paper reports no figure for this
# network and dataset (DenseNet's papers report no BC-40; the simple CNN is this study's own).
PUBLISHED = {
    "resnet20": ({"cifar10": 91.25}, "He et al. 2016, Table 6 (164 epochs)"),
    "wrn16_4": ({"cifar10": 94.98, "cifar100": 75.97},
                "Zagoruyko & Komodakis 2016, no dropout (200 epochs)"),
    "fastnet": ({"cifar10": 94.01}, "Jordan 2024, airbench94 (9.9 epochs, with TTA)"),
}


def architecture_label(model: str, factor: int) -> str:
    """The label of `model` at `factor` times the shortest budget: 'resnet20 ×3'."""
    return f"{model} ×{factor}"


def architecture_budget(label: str) -> tuple[str, int]:
    """The network and budget factor of an `architecture_label`."""
    model, factor = label.rsplit(" ×", 1)
    return model, int(factor)


def architecture_budgets(profile: str) -> dict[str, dict[int, int]]:
    """Per dataset, its budgets (`BUDGETS`) and the seeds each runs on `profile`."""
    seeds = settings(profile)["architecture_seeds"]
    return {ds: {f: seeds[f] for f in factors} for ds, factors in BUDGETS.items()}


def architecture_runs(profile: str, store=None, datasets=DATASETS) -> list[tuple[str, RunConfig]]:
    """Notebook 06: each network at each budget of its dataset (`store`: the speeds of
    budget.py, which turn a budget into epochs here), the first seeds each budget runs."""
    s = settings(profile)
    size = {k: v for k, v in s["reference"].items() if k != "model_options"}
    out = []
    for ds in datasets:
        for model in _variants(profile, ds, list(ARCHITECTURES), datasets):
            options = s.get("architecture_options", {}).get(model, {})
            base = _recipe(_OWN_RECIPE.get(model, "sgd_cosine"), dataset=ds, model=model,
                           model_options=options, **size)
            for factor, n in architecture_budgets(profile)[ds].items():
                # A floor of `factor` batches: on a slow machine the budgets stay distinct runs.
                epochs = epochs_for(base, factor * s["architecture_seconds"], store,
                                    min_batches=factor)
                out += [(architecture_label(model, factor), base.replace(epochs=epochs, seed=seed))
                        for seed in s["seeds"][:n]]
    return out


def lr_find_steps(profile: str) -> int:
    return settings(profile).get("lr_find_steps", 100)


def compression_settings(profile: str) -> dict:
    """Notebook 05: the keyword arguments of `compression_study.compress_model`."""
    return dict(settings(profile)["compression"])


# -- one declarative definition per study (notebook) -------------------------------------------


_RECIPE = RECIPES["fastnet"]  # the reference recipe of every sweep but the overfitting ones
_ANSWER = ("answer", "lines")
_CIFAR10 = ("cifar10",)  # notebook 03's sub-study, early stopping and optimizers
_LR_QUESTION = "Which learning rate, optimizer and schedule train the reference network best?"
STUDIES = {s.name: s for s in (
    Study("01_baseline", lambda p, store: baseline_runs(p),
          title="The reference network and the best model",
          question="How far above the sweeps' reference network does the best model get, and does "
                   "it meet the targets of 94% (CIFAR-10) and 72% (CIFAR-100)?",
          figures=("training_curves.png", "confusion_matrix_10.png", "confusion_matrix_100.png",
                   "confusion_matrix_100_superclasses.png",
                   *(f"per_class_accuracy_{ds}.png" for ds in DATASETS)),
          findings=("baseline_answer", "best_check", "reference_check", "confusion_sentence")),
    Study("02_augmentation_ablation", lambda p, store: augmentation_runs(p),
          title="Data augmentation",
          question="Which augmentations change the reference network's test accuracy against "
                   "random crop and flip, and does the answer hold at a longer budget?",
          sweeps=(Sweep("augmentation", tuple(AUGMENTATIONS), _RECIPE["augment"]),
                  Sweep("augmentation, long budget", tuple(a + LONG for a in LONG_AUGMENTATIONS),
                        _RECIPE["augment"] + LONG, finding="budget_interaction",
                        repeats="augmentation")),
          figures=("augmentation_ablation.png", "augmentation_deltas.png",
                   "augmentation_budgets.png", "augmentation_splits.png"),
          findings=(*_ANSWER, "budget_interaction")),
    Study("03_depth_study",
          lambda p, store: (overfitting_runs(p) + early_stopping_runs(p, recorded_choice(p))
                            + lr_grid_runs(p) + optimizer_runs(p, recorded_lr_choice(p))
                            + depth_runs(p)),
          measures=lambda p: _recorded_range_tests(p),
          title="Depth and overfitting, early stopping, learning rate and optimizers",
          question="How do depth, width, dropout and weight decay change overfitting; what does "
                   "early stopping save; which learning rate, optimizer and schedule train best?",
          sweeps=(*(Sweep(k.name, tuple(label for label, _ in k.variants()),
                          k.label(k.standard), rank=k.name == "depth",
                          question="How do depth, width, dropout and weight decay change "
                                   "overfitting?", datasets=_CIFAR10) for k in KNOBS),
                  Sweep("early stopping", EARLY_STOPPING, EARLY_STOPPING[0],
                        finding="epochs_saved", datasets=_CIFAR10,
                        question="What does early stopping save, and what does it cost?"),
                  Sweep("learning-rate grid", tuple(grid_label(o, lr) for o in OPTIMIZERS
                                                    for lr in LR_GRIDS[o]),
                        grid_label(_RECIPE["optimizer"], _RECIPE["lr"]),
                        datasets=_CIFAR10, grid=True, question=_LR_QUESTION),
                  Sweep("optimizer", tuple(o + CHOSEN for o in OPTIMIZERS),
                        _RECIPE["optimizer"] + CHOSEN, rank=True, datasets=_CIFAR10,
                        question=_LR_QUESTION),
                  Sweep("schedule", tuple(f"{name} schedule" for name in SCHEDULES),
                        f"{next(iter(SCHEDULES))} schedule", rank=True, datasets=_CIFAR10,
                        question=_LR_QUESTION),
                  Sweep("depth on the full training sets",
                        tuple(f"depth {d}{FULL_SET}" for d in FULL_SET_DEPTHS),
                        f"depth {_SIMPLE_CNN['depth']}{FULL_SET}", rank=True,
                        question="Does depth help CIFAR-10, and does it overfit CIFAR-100, on "
                                 "the full training sets?")),
          figures=("overfitting_depth.png", "overfitting_width_dropout_decay.png",
                   "early_stopping_curves.png", "lr_grid.png", "lr_range_tests.png",
                   "optimizers.png", "schedules.png",
                   "depth_full_sets.png"),
          findings=(*_ANSWER, "epochs_saved")),
    # 04 and 05 reuse 01's models from the run cache.
    Study("04_interpretability", lambda p, store: baseline_runs(p),
          title="Looking inside the trained networks",
          question="What do the models look at, and which classes do the best models confuse?",
          figures=("gradcam_saliency.png", "first_layer_filters_reference.png",
                   "first_layer_filters_best.png", "misclassified_cifar10.png",
                   "top_confused_pair_cifar10.png"),
          findings=("confusion_sentence",)),
    Study("05_compression", lambda p, store: baseline_runs(p, datasets=("cifar10",)),
          measures=lambda p: ("compressed models", *_recorded_compressions(p), []),
          title="Compression: pruning, int8, ONNX",
          question="How small and how fast can the CIFAR-10 models get, and at what cost in "
                   "test accuracy?",
          figures=("compression_tradeoffs.png",), findings=("compression_answer",)),
    Study("06_architectures", lambda p, store: architecture_runs(p, store),
          title="Architectures: accuracy against training time",
          question="Which network reaches the highest test accuracy at each training budget, "
                   "each trained with its own family's recipe?",
          sweeps=tuple(Sweep(f"architecture, budget ×{f}",
                             tuple(architecture_label(m, f) for m in ARCHITECTURES),
                             architecture_label(RECIPES["baseline"]["model"], f), rank=True,
                             datasets=tuple(ds for ds in DATASETS if f in BUDGETS[ds]))
                       for f in BUDGET_FACTORS),
          figures=("architecture_frontier.png",), findings=_ANSWER),
    # 07 judges 02's runs and 01's best models by what each run's assessment measured.
    Study("07_robustness", lambda p, store: augmentation_runs(p) + [
              (label, c) for label, c in baseline_runs(p) if label == "best"],
          title="Robustness and calibration",
          question="How do the models hold up under common corruptions, are their confidences "
                   "honest, and do the augmentation verdicts change once these are counted?",
          figures=("robustness_tradeoff.png", "corruptions.png", "reliability.png",
                   "corruption_families.png")),
)}


# -- what executing notebooks will do here ------------------------------------------------------


def recorded_suggestions(profile: str) -> dict[str, float] | None:
    """Per optimizer, the lr its range test suggested, when all are in the run cache; else None."""
    steps = lr_find_steps(profile)
    tests = {o: measurements.recorded_lr_find(c, steps) for o, c in lr_find_configs(profile).items()}
    return None if None in tests.values() else {o: t["suggested_lr"] for o, t in tests.items()}


def lr_grid_frame(runs) -> pd.DataFrame:
    """The grid's runs (`config`, `result`) as `lr_grid`'s rows: optimizer, lr, val_acc."""
    return pd.DataFrame([{"optimizer": r.config.optimizer, "lr": r.config.lr,
                          "val_acc": (r.result.get("val") or {}).get("val_acc")} for r in runs],
                        columns=["optimizer", "lr", "val_acc"])


def lr_choice(runs) -> dict[str, float]:
    """Per optimizer, the rate chosen on the grid runs' validation accuracy."""
    return {o: c.lr for o, c in lr_grid.choose(lr_grid_frame(runs)).items()}


def recorded_lr_choice(profile: str) -> dict[str, float] | None:
    """The rates chosen on the grid, when all its runs are in the run cache; else None (a plan
    then counts the runs at the chosen rates at the grids' centres: as many runs)."""
    grid = [c for _, c in lr_grid_runs(profile)]
    if len(cache.recorded_keys(grid)) < len({c.key() for c in grid}):
        return None
    runs = [cache.cached(c) for c in grid]
    if any(r is None or (r.result.get("val") or {}).get("val_acc") is None for r in runs):
        return None  # a record without its validation score: nothing to choose on
    return lr_choice(runs)


def recorded_choice(profile: str) -> stopping.Choice | None:
    """The early-stopping rule chosen on the histories of the runs without it, when all are in
    the run cache with their histories; else None (a plan then counts the stopped runs under a
    stand-in rule: as many runs)."""
    full = [c for label, c in early_stopping_runs(profile) if label == EARLY_STOPPING[0]]
    if len(cache.recorded_keys(full)) < len({c.key() for c in full}):
        return None  # (checked first: it reads no data while nothing is recorded)
    runs = [cache.cached(c) for c in full]
    if any(r is None or not r.result.get("history") for r in runs):
        return None
    return early_stopping_choice(runs)


def _recorded_range_tests(profile: str) -> tuple[str, int, int, list[RunConfig]]:
    """The range tests, and the runs waiting for the runs that choose their settings: those at
    the chosen rates wait for the grid, the early-stopping runs for the full runs' histories."""
    steps, configs = lr_find_steps(profile), lr_find_configs(profile).values()
    done = sum(measurements.recorded_lr_find(c, steps) is not None for c in configs)
    waiting = [] if recorded_lr_choice(profile) else [c for _, c in optimizer_runs(profile)]
    if recorded_choice(profile) is None:
        waiting += [c for label, c in early_stopping_runs(profile) if label == EARLY_STOPPING[1]]
    return "range tests", done, len(configs), waiting


def _recorded_compressions(profile: str) -> tuple[int, int]:
    """Notebook 05 compresses the first seed of the reference and the best of the best runs."""
    from cnnlib.study import compression  # slow to import, and only this look-up needs it
    runs, s = baseline_runs(profile, datasets=("cifar10",)), compression_settings(profile)
    reference = [min((c for label, c in runs if label == "reference"), key=lambda c: c.seed)]
    best = [c for label, c in runs if label == "best"]
    return (compression.recorded("reference", reference, s)
            + compression.recorded("best", best, s)), 2
