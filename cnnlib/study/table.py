"""The results table: one row per run, its columns, and a study's rows on disk.

A notebook writes its study's rows to `<outputs>/results/<study>.csv` (`save_results`);
`readme.collect_results` merges them into `<outputs>/results.csv`.
"""

from __future__ import annotations

from pathlib import Path

from cnnlib import _fileio as fileio
from cnnlib.study.cache import Run
from cnnlib.study.locations import outputs_root

# The keys of `Run.row`, in table order.
RESULT_COLUMNS = ["study", "label", "dataset", "model", "options", "augmentations", "seed", "epochs",
                  "epochs_run", "best_epoch", "optimizer", "lr", "schedule", "weight_decay",
                  "label_smoothing", "batch_size", "train_images", "val_size", "train_acc", "val_acc",
                  "test_acc", "test_loss", "test_top5", "tta", "precision", "wall_seconds", "device",
                  "hardware", "profile", "commit", "run_key"]


def results_frame(runs: list[Run], study: str = ""):
    import pandas as pd

    return pd.DataFrame([r.row(study) for r in runs], columns=RESULT_COLUMNS)


def save_results(runs: list[Run], study: str, out=None):
    """Write this study's rows to <outputs>/results/<study>.csv; returns the frame.

    A run that appears twice in a study (the same config under two labels) keeps
    both rows: each label is a point of its own sweep.
    """
    df = results_frame(runs, study)
    path = Path(out or outputs_root()) / "results" / f"{study}.csv"
    fileio.write_text(df.to_csv(index=False), path)
    return df


def mean_sd(mean: float, sd: float, digits: int = 1) -> str:
    """"mean ± sd", or the mean alone when there is no sd (NaN: one value)."""
    return f"{mean:.{digits}f}" if sd != sd else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def plus_minus(values, digits: int = 1) -> str:
    """A pandas Series as "mean ± std" over its non-missing values ("mean" for one, "" for none)."""
    values = values.dropna()
    if not len(values):
        return ""
    return mean_sd(values.mean(), values.std(ddof=1) if len(values) > 1 else float("nan"), digits)


def compact_number(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def markdown_table(df) -> str:
    """A DataFrame as a GitHub markdown table (floats: at most 4 decimals below 10, else 1;
    NaN empty)."""
    def cell(v):
        if isinstance(v, float):
            if v != v:  # NaN: no value (e.g. no validation split)
                return ""
            return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
