"""Train a published best model again from scratch with a new seed, and check it against
the published seeds.

Notebook 01 publishes each dataset's best model as the mean ± sd of its seeds. This
script trains the same config (same profile, recipe and epochs) once more with a seed the
study did not use, and reports whether its test accuracy lands inside the published mean
± 2 sd: a check that the published figure is reproducible, not one lucky seed. The run
goes through the run cache (an interrupted check resumes). Its test accuracy is read
after training and chooses nothing.

    python benchmarks/rerun_best.py --dataset cifar10            # seed 3 on the cpu profile
    python benchmarks/rerun_best.py --dataset cifar100 --seed 7

The last line is ``inside_2sd=true`` or ``inside_2sd=false``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from cnnlib.flags import Parser
from cnnlib.study import cache as runs
from cnnlib.study import definitions as studies
from cnnlib.study import locations
from cnnlib.study.stats import mean_sd
from cnnlib.study.table import Row, read_results
from cnnlib.training.device import hardware


def published(results: Path, dataset: str, profile: str) -> pd.Series:
    """Test accuracies of notebook 01's best runs on `dataset` in `results` (one per seed)."""
    if not results.is_file():
        raise ValueError(f"--results: {results} does not exist; run notebook 01 first")
    df = read_results(results)
    rows = df[(df["study"] == "01_baseline") & (df["label"] == "best") & (df["dataset"] == dataset)
              & (df["profile"] == profile)]
    if len(rows) < 2:
        raise ValueError(f"--results: {results} has {len(rows)} best {dataset} rows of profile "
                         f"{profile}; a band needs at least 2 seeds")
    return rows.set_index("seed")["test_acc"]


def main(argv=None, data_root=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=studies.DATASETS, default="cifar10")
    p.add_argument("--seed", type=int, help="default: one above the study's largest seed")
    p.add_argument("--profile", default="auto", help="the profile whose best model is checked")
    p.add_argument("--results", help="the published table (default: <outputs>/results.csv)")
    args = p.parse_args(argv)
    try:
        profile = locations.resolve_profile(args.profile)
        accs = published(Path(args.results or locations.outputs_root() / "results.csv"), args.dataset,
                         profile)
        seed = max(accs.index) + 1 if args.seed is None else args.seed
        if seed in accs.index:
            raise ValueError(f"--seed: {seed} is one of the published seeds "
                             f"({', '.join(map(str, accs.index))}); give a new one")
    except ValueError as e:
        print(f"rerun_best: error: {e}", file=sys.stderr)
        return 2
    best = [c for label, c in studies.baseline_runs(profile, datasets=(args.dataset,))
            if label == "best"][0]
    run = runs.run(best.replace(seed=seed), "best", profile=profile, data_root=data_root)
    mean, sd = accs.mean(), accs.std(ddof=1)
    low, high = mean - 2 * sd, mean + 2 * sd
    inside = low <= run.test_acc <= high
    print(f"published ({profile}, {args.dataset} best, seeds {', '.join(map(str, accs.index))}): "
          f"{mean_sd(100 * mean, 100 * sd, 2)}%; mean ± 2 sd = [{100 * low:.2f}, {100 * high:.2f}]%")
    print(f"new seed {seed}: {100 * run.test_acc:.2f}% in {run.result['wall_seconds']:.0f} s on "
          f"{run.result.get('hardware') or hardware(run.result['device'])} "
          f"({Row.from_run(run).precision}), {'inside' if inside else 'outside'} the band")
    print(f"inside_2sd={str(inside).lower()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
