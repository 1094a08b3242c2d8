"""Does bf16 cost accuracy? The fast recipe in bf16 and in fp32 at equal epochs, paired by seed.

On a CPU with native bf16, `precision="auto"` trains in bf16, about twice as fast as fp32.
This script trains the same config in both precisions, seed for seed, at each epoch budget,
and prints, per budget, the mean ± sd of the test accuracy and of the minutes, and the
paired difference bf16 - fp32 with its confidence interval, Holm-corrected over the budgets
(they are one family of comparisons). The bf16 arm is the `auto` run, so it shares the run
cache with `time_to_accuracy.py` and notebook 01's best CIFAR-10 model (the defaults here
are that model's config: fastnet_muon, 2,000 images held out); only the fp32 runs are new.
The test accuracy is read after training and chooses nothing. A run recorded on another
machine is served from the cache like one trained here; a budget whose two arms come from
different machines says so, since their minutes then compare machines too.

    python benchmarks/precision_parity.py                      # 2 and 8 epochs, 2 seeds each
    python benchmarks/precision_parity.py --epochs 2 --seeds 3

Writes <outputs>/precision_parity.csv (one row per run). The last line per budget reads
``bf16_minus_fp32_<epochs>ep=<pp>`` (the mean paired difference, percentage points).
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
from cnnlib.study.stats import Delta, holm, mean_sd
from cnnlib.study.table import Row
from cnnlib.training.config import RECIPES, recipe
from cnnlib.training.device import hardware, resolve_precision

COST = 0.3  # pp: the bf16 cost worth naming (the bar), judged on the interval


def verdict(d: Delta) -> str:
    """What the interval says about a cost above COST, in words."""
    low, high = d.interval
    if d.n < 2:
        return "one seed: no interval"
    if high < -COST:
        return f"bf16 costs more than {COST} pp"
    if low >= -COST and high <= COST:
        return f"within ±{COST} pp"
    if low >= -COST:
        return f"bf16 costs at most {COST} pp (it may gain more)"
    return f"inconclusive with {d.n} seeds: the interval reaches below -{COST} pp"


def main(argv=None, data_root=None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=[r for r in RECIPES if r != "baseline"],
                   default="fastnet_muon")
    p.add_argument("--epochs", type=epochs, nargs="+", default=[2, 8])
    p.add_argument("--seeds", type=int, default=2, help="seeds per budget and precision (default 2)")
    p.add_argument("--val-size", type=int, default=2000,
                   help="training images held out (default 2000, as notebook 01's best model)")
    p.add_argument("--train-subset", type=int, default=0,
                   help="train on the first N images only (default 0: all; a quick look)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--out", default=os.environ.get("CNNLIB_OUTPUTS", "outputs"))
    args = p.parse_args(argv)
    points = [(e, s, prec) for e in args.epochs for s in range(args.seeds) for prec in ("auto", "fp32")]
    try:
        configs = [recipe(args.recipe, epochs=e, seed=s, precision=prec, val_size=args.val_size,
                          train_subset=args.train_subset,
                          **({"batch_size": args.batch_size} if args.batch_size is not None else {}))
                   for e, s, prec in points]
        problem = ("--seeds must be >= 2 (a paired interval needs two)" if args.seeds < 2
                   else f"--val-size {args.val_size} is not allowed; give 0 to 49999"
                   if not 0 <= args.val_size < 50_000
                   else f"this machine has no native bf16 ({hardware()}): `auto` trains in fp32 "
                        "here, so there is no bf16 arm to compare"
                   if resolve_precision("auto", configs[0].resolved_device()) != "bf16" else None)
    except ValueError as e:  # RunConfig names the field and its allowed values
        problem = str(e)
    if problem:  # one line, before anything trains
        print(f"precision_parity: error: {problem}", file=sys.stderr)
        return 2

    rows = []
    for i, ((e, s, prec), config) in enumerate(zip(points, configs, strict=True), 1):
        name = "bf16" if prec == "auto" else "fp32"
        print(f"[{i}/{len(points)}] {args.recipe} {e:g} epochs, seed {s}, {name}", flush=True)
        r = runs.run(config, f"{args.recipe} {e:g} ep {name}", profile=locations.resolve_profile(),
                     data_root=data_root)
        row = Row.from_run(r)
        rows.append({"recipe": args.recipe, "epochs": e, "seed": s, "precision": row.precision,
                     "minutes": r.result["wall_seconds"] / 60, "test_acc": r.test_acc,
                     "hardware": row.hardware, "commit": r.result.get("commit", ""),
                     "run_key": r.path.name})
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(df.to_csv(index=False), out / "precision_parity.csv")  # atomic, no link followed

    print(f"machine: {' + '.join(sorted(set(df['hardware'])))}")
    print("| epochs | precision | seeds | test acc % | minutes per run |")
    print("|---|---|---|---|---|")
    for (e, prec), part in df.groupby(["epochs", "precision"], sort=False):
        print(f"| {e:g} | {prec} | {len(part)} | {mean_sd(100 * part.test_acc.mean(), 100 * part.test_acc.std(), 2)} "
              f"| {mean_sd(part.minutes.mean(), part.minutes.std(), 2)} |")
    deltas = []
    for e, part in df.groupby("epochs", sort=False):
        acc = part.pivot(index="seed", columns="precision", values="test_acc")
        deltas.append(Delta(f"{e:g}", "bf16", "fp32", "test_acc",
                            tuple(float(v) for v in (acc["bf16"] - acc["fp32"]) * 100)))
    for e, part in df.groupby("epochs", sort=False):  # the run cache is shared between machines
        arms = {prec: " + ".join(sorted(set(g.hardware))) for prec, g in part.groupby("precision")}
        if arms["bf16"] != arms["fp32"]:
            print(f"note: at {e:g} epochs the bf16 runs were recorded on {arms['bf16']} and the "
                  f"fp32 runs on {arms['fp32']}: their minutes compare machines as well as "
                  "precisions (an empty CNNLIB_RUNS trains both arms here)")
    for d in holm(deltas):
        print(f"bf16 - fp32 at {d.dataset} epochs ({args.recipe}, {args.seeds} seeds, paired): "
              f"{d.numbers()}; {verdict(d)}")
    for d in deltas:
        print(f"bf16_minus_fp32_{d.dataset}ep={d.mean:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
