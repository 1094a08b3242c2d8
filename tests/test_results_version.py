"""The results version: a change that moves a trained number must raise `RESULTS_VERSION`.

The run cache keys a run by its config, its data and `provenance.RESULTS_VERSION` (not by a
hash of the sources), so moving code keeps the published runs. What keeps the version honest
is this test: it trains a fixed set of tiny configs that together use every model family,
augmentation, optimizer, schedule, TTA level and dataset for a few steps on CPU in fp32,
and compares their metrics with the ones stored in `results_version.json` for this version.

A failure means one of two things. The change was meant to change results: raise
`RESULTS_VERSION` and store the metrics again. It was not: find what changed them.

    python tests/test_results_version.py --store           # after raising RESULTS_VERSION
    python tests/test_results_version.py --store --force   # only the test's inputs changed

The tolerance absorbs what differs between CPUs (AVX2 and AVX-512 kernels sum in other
orders: 3e-5 at most after these few steps) and not what a real change does (1e-3 and up).
CPUs with AMX, and CPUs with AVX2 only (where oneDNN emulates bf16), differ by more in two
runs (the Muon run's bf16 orthogonalization, the ResNet-20 run): the store holds those runs'
metrics for them separately (`by_isa`, keyed by `device.cpu_isa()`, written by
``--store --isa``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from cifar_files import write_synthetic

import cnnlib.models
from cnnlib.data import augment
from cnnlib.data import cifar as cdata
from cnnlib.data.augment import AUGMENTATIONS, parse_augment
from cnnlib.data.obtain import DATASETS
from cnnlib.flags import Parser
from cnnlib.models.registry import list_models
from cnnlib.study.provenance import RESULTS_VERSION
from cnnlib.training.config import OPTIMIZERS, RECIPES, SCHEDULES, RunConfig
from cnnlib.training.device import cpu_isa
from cnnlib.training.evaluate import TTA_LEVELS
from cnnlib.training.loop import Trainer

STORE = Path(__file__).with_name("results_version.json")
SIZES = {"cifar10": (256, 64), "cifar100": (256, 64)}  # (n_train, n_test) of the data written
# AVX2 against AVX-512 kernels: 3e-5 at most (the Adam runs' test loss), mostly under 1e-6;
# a 1% change of the default lr moves the update norm 1e-2, jitter 0.4 -> 0.41 moves it 1e-3.
RTOL = 3e-4
ATOL = 1e-7

# Every run: CPU, fp32, a few steps of batch 16 on 64 training images (4 steps an epoch).
BASE = dict(device="cpu", precision="fp32", batch_size=16, train_subset=64, val_size=32,
            test_subset=64, epochs=1)
TINY = {"width": 8, "depth": 3}  # the baseline CNN's options where the default size is not the point
# name -> (recipe or None, overrides). Fields left out keep RunConfig's (or the recipe's)
# defaults on purpose: a changed default moves the numbers of the runs that use it.
RUNS: dict[str, tuple[str | None, dict]] = {
    "defaults": (None, {}),
    "recipe-baseline": ("baseline", dict(model_options=TINY)),
    "recipe-fastnet": ("fastnet", dict(model_options={"widths": (8, 16, 16)},
                                       epochs=1.5)),  # 6 steps: the lookahead's 5-step update
    # altflip's two epochs; the whitening bias trains throughout (the next run freezes it)
    "recipe-fastnet_muon": ("fastnet_muon", dict(model_options={"widths": (8, 16, 16)},
                                                 epochs=2, whiten_epochs=0)),
    "fastnet-whitening-frozen": ("fastnet", dict(model_options={"widths": (8, 16, 16)},
                                                 epochs=1.5, whiten_epochs=0.5)),
    "recipe-sgd_cosine": ("sgd_cosine", {}),  # resnet20: the recipe's network at its size
    "densenet-jitter-cutout": (None, dict(model="densenet_bc", model_options={"depth": 10,
                                          "growth": 4}, augment="jitter+cutout",
                                          optimizer="sgd", schedule="step")),
    "resnet-mixup-adam": (None, dict(model="resnet20", augment="flip+mixup", optimizer="adam",
                                     lr=1e-3, schedule="cosine", tta=1)),
    "wrn-cutmix-adamw-cifar100": (None, dict(model="wrn16_4", dataset="cifar100", batch_size=8,
                                             train_subset=16, test_subset=16, augment="cutmix",
                                             optimizer="adamw", lr=1e-3, weight_decay=0.05,
                                             schedule="constant", label_smoothing=0.1)),
    "autoaugment-zeros": (None, dict(model_options=TINY, augment="autoaugment+crop",
                                     pad_mode="zeros", crop_padding=3)),
    "randaugment": (None, dict(model_options=TINY, augment="randaugment+flip")),
    "trivialaugment-tta2": (None, dict(model_options=TINY, augment="trivialaugment", tta=2)),
    "augmix": (None, dict(model_options=TINY, augment="augmix")),
    "none-early-stop": (None, dict(model_options={**TINY, "residual": True, "dropout": 0.1},
                                   augment="none", epochs=6, early_stop_patience=1,
                                   early_stop_metric="val_loss", lr=0.4)),
    "mixup-cutmix-cifar100": (None, dict(model_options=TINY, dataset="cifar100",
                                         augment="crop+mixup+cutmix", mixup_alpha=0.4)),
    "cutmix-half-the-batches": (None, dict(model_options=TINY, augment="crop+cutmix",
                                           mix_prob=0.5)),
}


def tiny_configs() -> dict[str, RunConfig]:
    configs = {}
    for name, (recipe, overrides) in RUNS.items():
        fields = {**(RECIPES[recipe] if recipe else {}), **BASE, **overrides}
        configs[name] = RunConfig(**fields)
    return configs


def model_families() -> dict[str, str]:
    """Every registered model -> the module (family) whose factory it is."""
    families = {}
    for info in pkgutil.iter_modules(cnnlib.models.__path__, "cnnlib.models."):
        module = sys.modules.get(info.name)
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name in list_models() and fn.__module__ == info.name:
                families[name] = info.name
    return families


def write_data(root: Path) -> Path:
    for name, (n_train, n_test) in SIZES.items():
        write_synthetic(name, root, n_train=n_train, n_test=n_test, seed=0)
    return root


@contextlib.contextmanager
def one_thread():
    """One intra-op thread: a kernel then sums in one order on a given CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def measure(config: RunConfig, data_root: Path) -> dict:
    """Train one tiny run; the numbers that any change of the code that trains it moves."""
    with one_thread():
        trainer = Trainer(config, None, data_root=data_root, progress=False)
        start = [p.detach().clone() for p in trainer.model.parameters()]
        result = trainer.run()
        params = [p.detach() for p in trainer.model.parameters()]
    metrics = {
        "steps": trainer.step,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "train_loss": result.history[-1]["train_loss"],
        "test_loss": result.test["loss"],
        "test_acc": result.test["acc"],
        "init_norm": _norm(start),  # the init (and fastnet's data-dependent whitening)
        "update_norm": _norm(p - s for p, s in zip(params, start, strict=True)),
    }
    if "val_loss" in result.history[-1]:
        metrics["val_loss"] = result.history[-1]["val_loss"]
    if "superclass_acc" in result.test:
        metrics["superclass_acc"] = result.test["superclass_acc"]
    return metrics


def measure_all(data_root: Path, names=None) -> dict:
    configs = tiny_configs()
    return {name: measure(configs[name], data_root) for name in (names or configs)}


def fingerprints(data_root: Path) -> dict:
    return {name: cdata.fingerprint(cdata.load_cifar(name, root=data_root, download=False))
            for name in SIZES}


def differences(stored: dict, measured: dict) -> list[str]:
    """One line per metric that moved beyond the tolerance (counts: at all; accuracies: by
    more than one test image, as a logit tie may break the other way on another CPU)."""
    out = []
    for name in sorted(stored.keys() | measured.keys()):
        old, new = stored.get(name), measured.get(name)
        if old is None or new is None:
            out.append(f"{name}: {'not stored' if old is None else 'not measured'}")
            continue
        images = (tiny_configs()[name] if name in RUNS else RunConfig(**BASE)).test_subset
        for key in sorted(old.keys() | new.keys()):
            a, b = old.get(key), new.get(key)
            if a is None or b is None:
                same = a is b
            elif isinstance(a, int) and isinstance(b, int):
                same = a == b
            elif key.endswith("acc"):
                same = abs(a - b) <= 1 / images + 1e-9
            else:
                same = math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)
            if not same:
                out.append(f"{name}: {key} {a!r} -> {b!r}")
    return out


def load_store() -> dict:
    return json.loads(STORE.read_text())


# -- the tests --------------------------------------------------------------------------------


def test_the_tiny_configs_cover_every_family_augmentation_and_optimizer():
    configs = tiny_configs().values()
    families = model_families()
    assert set(families) == set(list_models()), "a registered model outside cnnlib.models.*"
    assert {families[c.model] for c in configs} == set(families.values())
    used = set().union(*(parse_augment(c.augment) for c in configs))
    assert used == set(AUGMENTATIONS) - {"none"}
    assert any(not parse_augment(c.augment) for c in configs)  # "none" as well
    assert {c.optimizer for c in configs} == set(OPTIMIZERS)
    assert {c.schedule for c in configs} == set(SCHEDULES)
    assert {c.tta for c in configs} == set(TTA_LEVELS)
    assert {c.dataset for c in configs} == set(DATASETS)
    assert {c.pad_mode for c in configs} == set(augment.PAD_MODES)
    assert {c.early_stop_metric for c in configs if c.early_stop_patience}
    assert any(c.label_smoothing for c in configs) and any(c.lookahead for c in configs)
    assert set(RECIPES) <= {recipe for recipe, _ in RUNS.values()}
    assert all(c.precision == "fp32" and c.device == "cpu" for c in configs)


def test_the_stored_metrics_belong_to_this_results_version():
    stored = load_store()
    assert stored["results_version"] == RESULTS_VERSION, (
        f"{STORE.name} holds the metrics of results version {stored['results_version']}, "
        f"RESULTS_VERSION is {RESULTS_VERSION}: store them again "
        "(python tests/test_results_version.py --store)")
    assert set(stored["runs"]) == set(RUNS), "the tiny configs changed: store the metrics again"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("results_version_data"))


def expected(stored: dict) -> dict:
    """The stored metrics for this CPU: a run stored for its vector units, else the common one."""
    return {**stored["runs"], **stored.get("by_isa", {}).get(cpu_isa(), {})}


def test_the_tiny_runs_give_the_stored_metrics(data_root):
    stored = load_store()
    assert fingerprints(data_root) == stored["data"], (
        "the synthetic data differ from the ones the metrics were stored with "
        "(tests/cifar_files.py changed?): store them again with --store --force")
    moved = differences(expected(stored), measure_all(data_root))
    assert not moved, (
        f"trained numbers differ from those stored for RESULTS_VERSION {RESULTS_VERSION}:\n  "
        + "\n  ".join(moved) + "\nIf the change is meant to change results, raise "
        "RESULTS_VERSION (cnnlib/study/provenance.py) and run "
        "python tests/test_results_version.py --store; otherwise find what moved them.")


def _with_default(field: str, value):
    """RunConfig.__init__'s defaults with `field`'s replaced: as if its default were edited."""
    names = [f.name for f in dataclasses.fields(RunConfig)]
    defaults = list(RunConfig.__init__.__defaults__)
    defaults[names.index(field)] = value
    return tuple(defaults)


def _kaiming_fan_in(kaiming):
    return lambda tensor, *args, **kwargs: kaiming(tensor, *args, **{**kwargs, "mode": "fan_in"})


# A change that keeps the cache key (code, not config fields) or moves a default.
CHANGES = {
    "lr default 0.05 -> 0.0505": ("defaults", RunConfig.__init__, "__defaults__",
                                  lambda: _with_default("lr", 0.0505)),
    "crop_padding default 4 -> 3": ("defaults", RunConfig.__init__, "__defaults__",
                                    lambda: _with_default("crop_padding", 3)),
    "jitter's grey weights": ("densenet-jitter-cutout", augment, "_GRAY",
                              lambda: (0.3, 0.59, 0.11)),
    "He init over fan_in": ("resnet-mixup-adam", torch.nn.init, "kaiming_normal_",
                            lambda: _kaiming_fan_in(torch.nn.init.kaiming_normal_)),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_that_moves_results_is_detected(change, data_root, monkeypatch):
    run, target, name, value = CHANGES[change]
    assert RunConfig().lr == 0.05 and RunConfig().crop_padding == 4  # what the changes edit
    before = measure_all(data_root, [run])
    monkeypatch.setattr(target, name, value())
    after = measure_all(data_root, [run])
    assert differences(before, after), f"{change}: not detected"
    assert not differences(after, measure_all(data_root, [run]))  # and no noise: same run, same numbers


# -- storing ----------------------------------------------------------------------------------


def store_isa(names: list[str]) -> None:
    """Store `names`' metrics for this CPU's vector units only (`by_isa`)."""
    blob = load_store()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_data(Path(tmp))
        if fingerprints(root) != blob["data"]:
            sys.exit("the synthetic data differ from the stored ones: --store --force first")
        runs = measure_all(root, names)
    blob.setdefault("by_isa", {}).setdefault(cpu_isa(), {}).update(runs)
    STORE.write_text(json.dumps(blob, indent=1, sort_keys=True) + "\n")
    print(f"{STORE}: {', '.join(names)} stored for {cpu_isa()}")


def store(force: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_data(Path(tmp))
        t0 = time.perf_counter()
        runs = measure_all(root)
        seconds = time.perf_counter() - t0
        data = fingerprints(root)
    if STORE.exists() and not force:
        old = load_store()
        moved = differences(old["runs"], runs) if old["data"] == data else ["the data"]
        if old["results_version"] == RESULTS_VERSION and moved:
            sys.exit(f"{STORE.name}: these metrics differ from the ones stored for results "
                     f"version {RESULTS_VERSION} ({moved[0]}, ...): raise RESULTS_VERSION in "
                     "cnnlib/study/provenance.py first, or pass --force if only this test's "
                     "inputs changed (its configs, its synthetic data, the torch version)")
    blob = {"results_version": RESULTS_VERSION, "torch": torch.__version__, "data": data,
            "runs": runs}
    STORE.write_text(json.dumps(blob, indent=1, sort_keys=True) + "\n")
    print(f"{STORE}: {len(runs)} runs stored for {RESULTS_VERSION} ({seconds:.0f} s)")


if __name__ == "__main__":
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", action="store_true", required=True,
                        help="train the tiny configs and store their metrics")
    parser.add_argument("--force", action="store_true",
                        help="overwrite metrics of the same results version")
    parser.add_argument("--isa", nargs="+", metavar="RUN",
                        help="store only these runs, for this CPU's vector units")
    args = parser.parse_args()
    if args.isa:
        store_isa(args.isa)
    else:
        store(force=args.force)
