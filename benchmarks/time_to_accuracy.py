"""CIFAR-10 test accuracy against wall-clock time on this machine's CPU.

Each point is a complete run with its own schedule (a 2-epoch schedule is not
the first two epochs of a 6-epoch one): the fast recipe (fastnet) at several
epoch budgets, and the baseline CNN for contrast. Runs go through the run
cache, so an interrupted benchmark resumes and finished points are reused.

    python benchmarks/time_to_accuracy.py                      # fastnet 2,4,6 epochs + baseline
    python benchmarks/time_to_accuracy.py --fast-epochs 2 4 6 8 --baseline-epochs 5 10

Writes outputs/time_to_accuracy.csv and .png. Last line: minutes_to_90=<x>
(the first budget whose run reaches 90%, interpolated between budgets).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from cnnlib import plots, runs
from cnnlib.train import recipe


def minutes_to(df: pd.DataFrame, target: float) -> float | None:
    """Linear interpolation of minutes at which the accuracy curve first crosses `target`."""
    pts = df.sort_values("minutes")[["minutes", "test_acc"]].to_numpy()
    for (m0, a0), (m1, a1) in zip(pts, pts[1:], strict=False):
        if a0 >= target:
            return float(m0)
        if a1 >= target:
            return float(m0 + (target - a0) * (m1 - m0) / (a1 - a0))
    return float(pts[0][0]) if len(pts) and pts[0][1] >= target else None


def epochs_arg(text: str) -> float | int:
    """An epoch budget; whole numbers stay ints, so "6" is the same cached run as epochs=6."""
    value = float(text)
    return int(value) if value.is_integer() else value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast-epochs", type=epochs_arg, nargs="+", default=[2, 4, 6])
    p.add_argument("--baseline-epochs", type=epochs_arg, nargs="+", default=[4])
    p.add_argument("--out", default=os.environ.get("CNNLIB_OUTPUTS", "outputs"))
    args = p.parse_args()

    points = [("fastnet", recipe("fastnet", epochs=e)) for e in args.fast_epochs]
    points += [("baseline", recipe("baseline", epochs=e, val_size=0)) for e in args.baseline_epochs]
    rows = []
    for i, (name, config) in enumerate(points, 1):
        print(f"[{i}/{len(points)}] {name} {config.epochs:g} epochs", flush=True)
        r = runs.run(config, f"{name} {config.epochs:g} ep", profile="cpu")
        rows.append({"recipe": name, "epochs": config.epochs, "minutes": r.result["wall_seconds"] / 60,
                     "test_acc": r.test_acc, "device": r.result["device"], "run_key": r.path.name})
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "time_to_accuracy.csv", index=False)
    plots.plot_lines(df.assign(test_acc_pct=df.test_acc * 100), x="minutes", y="test_acc_pct",
                     hue="recipe", path=out / "time_to_accuracy.png",
                     ylabel="CIFAR-10 test accuracy (%)", title="Accuracy vs wall-clock minutes (CPU)")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    m = minutes_to(df[df.recipe == "fastnet"], 0.90)
    print(f"minutes_to_90={m:.1f}" if m is not None else "minutes_to_90=n/a")


if __name__ == "__main__":
    main()
