"""CIFAR-10 test accuracy against wall-clock time on this machine, with seeds.

Each point is a complete run with its own schedule (a 2-epoch schedule is not the
first two epochs of a 6-epoch one) on the 50,000 training images (less ``--val-size``
held out): a fast recipe (``--recipe``: fastnet_muon, or fastnet, airbench94's SGD
recipe) at several epoch budgets, and the baseline CNN for contrast.
Every budget runs with several seeds (``--seeds``; the longest fast budget with
``--seeds-longest``), so each point is a mean with its standard deviation. Runs go
through the run cache: an interrupted benchmark resumes and finished runs are reused.
The precision is the trainer's (``auto``: bf16 on a CPU with native bf16, else fp32)
unless ``--precision`` forces one.

    python benchmarks/time_to_accuracy.py                       # fastnet_muon 1,2,3 epochs + baseline
    python benchmarks/time_to_accuracy.py --fast-epochs 2 4 8 --seeds 2 --seeds-longest 5
    # airbench94's SGD recipe, as notebook 01's study v2 trained it (2,000 images held out)
    python benchmarks/time_to_accuracy.py --recipe fastnet --fast-epochs 2 4 6 10 \
        --baseline-epochs --val-size 2000

Writes <outputs>/time_to_accuracy.csv (mean and std per point, with the machine),
time_to_accuracy_runs.csv (one row per run and seed) and time_to_accuracy.png. The last
two lines are ``minutes_to_90=<x>`` and ``minutes_to_94=<x>``: where the mean fast-recipe
curve first reaches the target, interpolated between budgets (``n/a`` when it does not).
``python -m cnnlib.study collect`` then writes the table into the README.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from cnnlib import _fileio as fileio
from cnnlib.flags import Parser, epochs
from cnnlib.study import cache as runs
from cnnlib.study import locations
from cnnlib.study.readme import minutes_to
from cnnlib.study.table import Row
from cnnlib.training.config import RECIPES, recipe
from cnnlib.training.device import PRECISIONS
from cnnlib.viz import charts as plots


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, epochs): mean and std over seeds, and where they ran."""
    g = df.groupby(["recipe", "epochs"], sort=False)
    out = g.agg(seeds=("seed", lambda s: " ".join(map(str, s))), n=("seed", "size"),
                minutes_mean=("minutes", "mean"), minutes_std=("minutes", "std"),
                test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"),
                train_images=("train_images", "first"),
                # the run cache is not keyed by machine: a point whose runs come from two
                # machines says so rather than passing one machine's minutes as the other's
                hardware=("hardware", lambda s: " + ".join(sorted(set(s)))),
                precision=("precision", "first"),
                commit=("commit", lambda s: " ".join(sorted(set(s)))))
    return out.reset_index()


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=[r for r in RECIPES if r != "baseline"],
                   default="fastnet_muon", help="the fast recipe (default fastnet_muon)")
    p.add_argument("--fast-epochs", type=epochs, nargs="+", default=[1, 2, 3])
    p.add_argument("--baseline-epochs", type=epochs, nargs="*", default=[6])
    p.add_argument("--seeds", type=int, default=2, help="seeds per budget (default 2)")
    p.add_argument("--seeds-longest", type=int, default=3,
                   help="seeds for the longest fast budget (default 3)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--val-size", type=int, default=0,
                   help="training images held out of the fast runs (default 0; notebook 01's "
                        "best model holds out 2000)")
    p.add_argument("--out", default=os.environ.get("CNNLIB_OUTPUTS", "outputs"))
    args = p.parse_args()
    problem = ("--seeds and --seeds-longest must be >= 1" if min(args.seeds, args.seeds_longest) < 1
               else f"--val-size {args.val_size} is not allowed; give 0 to 49999"
               if not 0 <= args.val_size < 50_000 else None)
    if problem:  # one line, before anything trains
        print(f"time_to_accuracy: error: {problem}", file=sys.stderr)
        sys.exit(2)

    longest = max(args.fast_epochs)
    points = []
    for e in args.fast_epochs:
        n = args.seeds_longest if e == longest else args.seeds
        points += [(args.recipe, recipe(args.recipe, epochs=e, seed=s, precision=args.precision,
                                        val_size=args.val_size))
                   for s in range(n)]
    points += [("baseline", recipe("baseline", epochs=e, val_size=0, seed=s,
                                   precision=args.precision))
               for e in args.baseline_epochs for s in range(args.seeds)]
    rows = []
    for i, (name, config) in enumerate(points, 1):
        print(f"[{i}/{len(points)}] {name} {config.epochs:g} epochs, seed {config.seed}", flush=True)
        r = runs.run(config, f"{name} {config.epochs:g} ep", profile=locations.resolve_profile())
        row = Row.from_run(r)
        rows.append({"recipe": name, "epochs": config.epochs, "seed": config.seed,
                     "minutes": r.result["wall_seconds"] / 60, "test_acc": r.test_acc,
                     "train_images": row.train_images,
                     "precision": row.precision, "hardware": row.hardware,
                     "commit": r.result.get("commit", ""), "run_key": r.path.name})
    df = pd.DataFrame(rows)
    summary = summarize(df)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(df.to_csv(index=False), out / "time_to_accuracy_runs.csv")  # atomic, no link followed
    fileio.write_text(summary.to_csv(index=False), out / "time_to_accuracy.csv")
    machine = f"{summary['hardware'].iloc[0]}, {summary['precision'].iloc[0]}"
    plots.plot_time_to_accuracy(summary, path=out / "time_to_accuracy.png",
                                title=f"Time to accuracy: {machine}")
    cols = ["recipe", "epochs", "n", "train_images", "minutes_mean", "minutes_std", "test_acc_mean", "test_acc_std",
            "precision"]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"machine: {machine}")
    fast = summary[summary.recipe == args.recipe]
    print(f"minutes_to_90={fmt(minutes_to(fast, 0.90))}")
    print(f"minutes_to_94={fmt(minutes_to(fast, 0.94))}")


if __name__ == "__main__":
    main()
