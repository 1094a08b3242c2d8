"""The study's experiments: which configs each notebook runs, per profile.

A profile sizes the same experiments for a machine:
- smoke: tiny subsets and two epochs, seconds per notebook (tests, CI, nbval); the
         sweeps on CIFAR-100 keep only their first and last variant;
- cpu:   real full test sets, training subsets and short schedules sized for a few
         hours of `./run_all.sh` on 2 CPU cores (README, Profiles: the measured time);
- full:  paper-grade recipes for a GPU.
Every function returns a list of (label, RunConfig); notebooks pass it to
`runs.run_all` and plot what comes back.
"""

from __future__ import annotations

from .config import RECIPES, RunConfig, recipe
from .models import model_options as _model_defaults

DATASETS = ("cifar10", "cifar100")

# Sizes per profile. "study" is the small CNN's recipe for the sweeps (ablation,
# depth); "baseline" and "best" are notebook 01's two models.
# "reduce_sweeps": on every dataset after the first, a sweep keeps only its first and
# last variant (smoke: both datasets still go through every code path, in seconds).
# "lr_find_steps": length of notebook 03's learning-rate range test.
# "augmentation_seeds": seeds of notebook 02 (default: "seeds"), whose effects are small.
# "best_per_dataset": changes to "best" for one dataset.
# "compression": notebook 05 (compression_study.compress_model): fine-tuning steps and batch,
# calibration images, test images (0 = all), seconds per timing, QAT steps (0 = no QAT row).
# cpu: about 100 distinct runs; `python -m cnnlib.runs plan --profile cpu` counts them.
SETTINGS = {
    "smoke": {
        "seeds": (0,),
        "study": dict(train_subset=256, test_subset=200, val_size=128, epochs=2, batch_size=64,
                      model_options={"width": 8}),
        "baseline": dict(train_subset=256, test_subset=200, val_size=128, epochs=2, batch_size=64,
                         model_options={"width": 8}),
        "best": dict(train_subset=256, test_subset=200, val_size=128, epochs=2, batch_size=64,
                     tta=0, model_options={"widths": [16, 32, 32]}),
        "best_seeds": (0,),
        "reduce_sweeps": True,
        "lr_find_steps": 20,
        "compression": dict(steps=2, batch_size=32, calibration=64, test_subset=200,
                            seconds=0.05, qat_steps=0),
    },
    "cpu": {
        "seeds": (0, 1),
        "study": dict(train_subset=10000, val_size=5000, epochs=4, batch_size=128,
                      model_options={"width": 16}),
        "baseline": dict(val_size=5000, epochs=6, batch_size=128, model_options={"width": 16}),
        "best": dict(val_size=2000, epochs=3.5),
        # CIFAR-100 needs a longer schedule for the same accuracy class (measured: 6 epochs
        # reach about 66% in 25 min; 3.5 epochs already give 90% on CIFAR-10 in 16 min).
        "best_per_dataset": {"cifar100": dict(epochs=6)},
        "best_seeds": (0,),
        "augmentation_seeds": (0, 1, 2),
        "lr_find_steps": 100,
        "compression": dict(steps=300, batch_size=128, calibration=2048, test_subset=0,
                            seconds=1.0, qat_steps=0),
    },
    "full": {
        "seeds": (0, 1, 2),
        "study": dict(val_size=5000, epochs=30, batch_size=256),
        "baseline": dict(val_size=5000, epochs=30, batch_size=256),
        "best": dict(val_size=0, epochs=10),
        "best_seeds": (0, 1, 2),
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
    """`train.recipe`, with model options equal to the model's defaults left out.

    So the same network always has the same config, hence the same run-cache key
    ("kernel 3", "dropout 0.0" and "depth 6" of the sweeps are one run).
    """
    model = fields.get("model", RECIPES[name]["model"])
    defaults = _model_defaults(model)
    options = {k: v for k, v in (fields.pop("model_options", None) or {}).items()
               if k not in defaults or defaults[k] != v}
    return recipe(name, model_options=options, **fields)


def _study(profile: str, dataset: str, seed: int, **changes) -> RunConfig:
    """The small CNN of the sweeps, with changes; model options merge with the profile's."""
    s = dict(settings(profile)["study"])
    options = {**s.pop("model_options", {}), **changes.pop("model_options", {})}
    return _recipe("baseline", dataset=dataset, seed=seed, model_options=options, **{**s, **changes})


def baseline_runs(profile: str, datasets=DATASETS) -> list[tuple[str, RunConfig]]:
    """Notebook 01: the simple CNN and the best model on each dataset."""
    s = settings(profile)
    out = []
    for ds in datasets:
        out += [("baseline", _recipe("baseline", dataset=ds, seed=seed, **s["baseline"]))
                for seed in s["seeds"]]
        best = {**s["best"], **s.get("best_per_dataset", {}).get(ds, {})}
        out += [("best", _recipe("fastnet", dataset=ds, seed=seed, **best))
                for seed in s["best_seeds"]]
    return out


AUGMENTATIONS = ["none", "crop", "flip", "crop+flip", "crop+flip+jitter", "crop+flip+cutout",
                 "crop+flip+mixup", "crop+flip+cutmix", "crop+flip+randaugment"]


def augmentation_runs(profile: str, datasets=DATASETS) -> list[tuple[str, RunConfig]]:
    """Notebook 02: one augmentation added at a time, several seeds, both datasets."""
    s = settings(profile)
    return [(aug, _study(profile, ds, seed, augment=aug))
            for ds in datasets for aug in _variants(profile, ds, AUGMENTATIONS, datasets)
            for seed in s.get("augmentation_seeds", s["seeds"])]


DEPTHS = (2, 4, 6, 8, 10)


def depth_runs(profile: str, datasets=DATASETS) -> list[tuple[str, RunConfig]]:
    """Notebook 03, part 1: depth on both datasets (the train-validation gap)."""
    return [(f"depth {d}", _study(profile, ds, seed, model_options={"depth": d}))
            for ds in datasets for d in _variants(profile, ds, list(DEPTHS), datasets)
            for seed in settings(profile)["seeds"]]


def architecture_runs(profile: str, dataset: str = "cifar10") -> list[tuple[str, RunConfig]]:
    """Notebook 03, part 2: kernel size, width, dropout, plain vs residual."""
    seeds = settings(profile)["seeds"]
    width = settings(profile)["study"].get("model_options", {}).get("width", 32)
    variants = (
        [(f"kernel {k}", {"kernel_size": k}) for k in (3, 5, 7)]
        + [(f"width {w}", {"width": w}) for w in (width // 2, width, width * 2)]
        + [(f"dropout {p}", {"dropout": p}) for p in (0.0, 0.25, 0.5)]
        + [(f"{'residual' if r else 'plain'} depth 10", {"depth": 10, "residual": r}) for r in (False, True)]
    )
    return [(label, _study(profile, dataset, seed, model_options=opts))
            for label, opts in variants for seed in seeds]


def hyperparameter_runs(profile: str, dataset: str = "cifar10") -> list[tuple[str, RunConfig]]:
    """Notebook 03, part 3: learning-rate schedule and weight decay."""
    seeds = settings(profile)["seeds"]
    out = [(f"schedule {s}", _study(profile, dataset, seed, schedule=s))
           for s in ("step", "cosine", "onecycle") for seed in seeds]
    out += [(f"weight decay {wd:g}", _study(profile, dataset, seed, weight_decay=wd))
            for wd in (0.0, 5e-4, 5e-3) for seed in seeds]
    return out


def lr_find_config(profile: str, dataset: str = "cifar10") -> RunConfig:
    """The config whose learning rate notebook 03's range test scans (the sweeps' recipe)."""
    return _study(profile, dataset, 0)


def lr_find_steps(profile: str) -> int:
    return settings(profile).get("lr_find_steps", 100)


def compression_settings(profile: str) -> dict:
    """Notebook 05: the keyword arguments of `compression_study.compress_model`."""
    return dict(settings(profile)["compression"])


# The runs each notebook asks for (04 and 05 reuse 01's models from the run cache).
NOTEBOOKS = {
    "01_baseline": lambda p: baseline_runs(p),
    "02_augmentation_ablation": lambda p: augmentation_runs(p),
    "03_depth_study": lambda p: depth_runs(p) + architecture_runs(p) + hyperparameter_runs(p),
    "04_interpretability": lambda p: baseline_runs(p),
    "05_compression": lambda p: baseline_runs(p, datasets=("cifar10",)),
}


def plan(profile: str) -> dict[str, tuple[int, int]]:
    """Per notebook: (runs listed, runs not already listed by an earlier notebook)."""
    seen: set[str] = set()
    out = {}
    for name, fn in NOTEBOOKS.items():
        configs = fn(profile)
        keys = [c.key() for _, c in configs]
        new = {k for k in keys if k not in seen}
        seen |= new
        out[name] = (len(keys), len(new))
    return out
