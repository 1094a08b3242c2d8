"""The results table: one row per run, per study and merged, and the README's tables.

A notebook writes its study's rows to `<outputs>/results/<study>.csv` (`save_results`);
`python -m cnnlib.results collect` (the pipeline's last step) merges them into
`<outputs>/results.csv` and `results.md` and rewrites the README between its markers: the
Key Results table and the findings (`findings.readme_section`).
"""

from __future__ import annotations

from pathlib import Path

from . import fileio, findings
from .runs import Run, outputs_root

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


def collect_results(out=None, readme: str | None = "README.md"):
    """Merge every study's rows into <outputs>/results.csv and results.md; refresh the README.

    Studies are read in file-name order (01_..., 02_...). Returns the merged frame. When
    `readme` names a file, the Key Results table and the findings (`findings.readme_section`)
    replace the text between their markers.
    """
    import pandas as pd

    out = Path(out or outputs_root())
    parts = sorted((out / "results").glob("*.csv"))
    frames = [pd.read_csv(p) for p in parts]
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS)
    # One row per run: a run shared by two studies (or two labels of a sweep) keeps its
    # first row, in notebook order; outputs/results/<study>.csv keep every label.
    df = df.drop_duplicates("run_key", keep="first", ignore_index=True)
    fileio.write_text(df.to_csv(index=False), out / "results.csv")
    fileio.write_text(results_markdown(df), out / "results.md")
    if readme:
        path = Path(readme)
        for text, (begin, end) in ((key_results(df), (BEGIN, END)),
                                   (findings.readme_section(out), FINDINGS)):
            if not path.exists() or not update_readme(path, text, begin, end):
                print(f"results: {readme} has no {begin} ... {end} markers; left as it is")
    return df


def results_markdown(df) -> str:
    cols = ["study", "label", "dataset", "model", "augmentations", "seed", "epochs", "train_images",
            "val_acc", "test_acc", "test_loss", "wall_seconds", "device", "profile"]
    table = df[cols].assign(wall_seconds=df["wall_seconds"].map(lambda v: f"{v:.1f}"))
    return "# Results\n\nOne row per training run (`outputs/results.csv` has every column).\n\n" + \
        markdown_table(table) + "\n"


def key_results(df) -> str:
    """Baseline and best model per dataset: mean +- std over seeds (from 01_baseline's rows)."""
    sub = df[df["study"] == "01_baseline"] if len(df) else df
    if not len(sub):
        return "_No results yet: run `./run_all.sh`._"
    # Rows written before results named the hardware show the device instead.
    hw = sub.get("hardware", sub["device"])
    sub = sub.assign(hardware=hw.where(hw.notna() & (hw != ""), sub["device"]))
    g = sub.groupby(["dataset", "label", "model", "profile", "hardware"], sort=True)
    rows = []
    for (dataset, label, model, profile, hw), part in g:
        n = len(part)
        rows.append({
            "dataset": dataset, "model": f"{label} ({model})",
            "test acc %": plus_minus(part["test_acc"] * 100),
            "test loss": plus_minus(part["test_loss"], 3),
            "seeds": n, "epochs": _num(part["epochs"].iloc[0]),
            "train images": int(part["train_images"].iloc[0]),
            "augmentation": part["augmentations"].iloc[0],
            "wall min / run": f"{part['wall_seconds'].mean() / 60:.1f}", "hardware": hw,
            "profile": profile,
        })
    import pandas as pd

    return markdown_table(pd.DataFrame(rows))


def training_time(df) -> str:
    """The study's training, summed over its runs (one row each) with the machines they ran on.

    A study resumed across sittings or machines keeps each run's own wall time, so this is
    the time the results cost, whatever the pipeline's own clock says about the last sitting.
    """
    if not len(df):
        return "no runs"
    per = df.groupby("hardware", sort=False)["wall_seconds"].agg(["size", "sum"])
    where = "; ".join(f"{int(n)} on {hw}" for hw, (n, _) in per.iterrows())
    return f"{len(df)} runs trained for {df['wall_seconds'].sum() / 3600:.1f} h in all ({where})"


def plus_minus(values, digits: int = 1) -> str:
    """A pandas Series as "mean ± std" over its non-missing values ("mean" for one, "" for none)."""
    values = values.dropna()
    if not len(values):
        return ""
    if len(values) == 1:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _num(x) -> str:
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


BEGIN, END = "<!-- key-results:begin -->", "<!-- key-results:end -->"
FINDINGS = ("<!-- findings:begin -->", "<!-- findings:end -->")


def update_readme(path: Path, table: str, begin: str = BEGIN, end: str = END) -> bool:
    """Replace the text between two markers (default: key results); False when one is missing."""
    text = path.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
    return True


def main(argv=None) -> int:
    """`python -m cnnlib.results collect`: rebuild the results table (the pipeline's last step)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m cnnlib.results")
    p.add_argument("command", choices=["collect"],
                   help="merge the studies' results and refresh the README's tables")
    p.add_argument("--out", default=None, help="outputs folder (default: $CNNLIB_OUTPUTS or outputs)")
    p.add_argument("--readme", default="README.md", help="README to update ('' for none)")
    args = p.parse_args(argv)
    out = Path(args.out or outputs_root())
    df = collect_results(out, args.readme or None)
    print(f"results: {len(df)} rows -> {out / 'results.csv'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
