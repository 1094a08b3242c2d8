"""The README's generated sections and the merged results table.

`collect_results` (the pipeline's last step, `python -m cnnlib.study collect`) merges the
studies' rows into `<outputs>/results.csv` and `results.md` and rewrites the README between
its markers: the Key Results table, the findings (`findings.readme_section`), what the recorded
runs cost (`study_cost`) and the benchmarks' tables (compression, time to accuracy).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cnnlib import _fileio as fileio
from cnnlib.study import findings, landing
from cnnlib.study.locations import outputs_root
from cnnlib.study.stats import mean_sd, plus_minus
from cnnlib.study.table import compact_number, markdown_table, read_studies, write_results
from cnnlib.training.device import AUTO_MACHINES
from cnnlib.viz._figure import pretty

CONFUSED_DATASETS = ("cifar10", "cifar100")


def read_confused_pairs(out) -> dict[str, pd.DataFrame]:
    """The best models' most confused pairs, <out>/tables/confused_pairs_<dataset>.csv (as
    notebook 01 saves them), per dataset that has the file."""
    paths = {d: Path(out) / "tables" / f"confused_pairs_{d}.csv" for d in CONFUSED_DATASETS}
    return {d: pd.read_csv(p) for d, p in paths.items() if p.exists()}


def collect_results(out=None, readme: str | None = "README.md"):
    """Merge every study's rows into <outputs>/results.csv and results.md, write the landing
    page <outputs>/reports/index.html; refresh the README.

    The studies' rows are read once (`table.read_studies`, in file-name order: 01_...,
    02_...), and so are the confused-pairs tables: the merged table, the Key Results and the
    findings are all computed from them. Returns the merged frame. When `readme` names a
    file, the Key Results table and the findings (`findings.readme_section`) replace the
    text between their markers.
    """
    out = Path(out or outputs_root())
    rows = read_studies(out)
    # One row per run: a run shared by two studies (or two labels of a sweep) keeps its
    # first row, in notebook order; outputs/results/<study>.csv keep every label.
    df = rows.drop_duplicates("run_key", keep="first", ignore_index=True)
    write_results(df, out / "results.csv")
    fileio.write_text(results_markdown(df), out / "results.md")
    confused = read_confused_pairs(out)
    if readme:
        path = Path(readme)
        sections = [(key_results(df), (BEGIN, END)),
                    (findings.readme_section(rows, confused), FINDINGS),
                    (study_cost(df), STUDY_COST)]
        # The benchmarks' tables, once their files exist (else the README keeps what it has).
        sections += [(text, markers) for text, markers in
                     ((compression_section(out), COMPRESSION),
                      (time_to_accuracy_section(out), TIME_TO_ACCURACY)) if text]
        for text, (begin, end) in sections:
            if not path.exists() or not update_readme(path, text, begin, end):
                print(f"results: {readme} has no {begin} ... {end} markers; left as it is")
    landing.write_index(out, rows, key_results_frame(df), confused)
    return df


def results_markdown(df) -> str:
    cols = ["study", "label", "dataset", "model", "augmentations", "seed", "epochs", "train_images",
            "val_acc", "test_acc", "test_loss", "wall_seconds", "device", "profile"]
    table = df[cols].assign(wall_seconds=df["wall_seconds"].map(lambda v: f"{v:.1f}"))
    return "# Results\n\nOne row per training run (`outputs/results.csv` has every column).\n\n" + \
        markdown_table(table) + "\n"


def key_results_frame(df) -> pd.DataFrame:
    """Baseline and best model per dataset: mean +- sd over seeds (from 01_baseline's rows)."""
    sub = df[df["study"] == "01_baseline"] if len(df) else df
    if not len(sub):
        return pd.DataFrame()
    # Rows written before results named the hardware show the device instead.
    hw = sub.get("hardware", sub["device"])
    sub = sub.assign(hardware=hw.where(hw.notna() & (hw != ""), sub["device"]))
    g = sub.groupby(["dataset", "label", "model", "profile", "hardware"], sort=True)
    rows = []
    for (dataset, label, model, profile, hw), part in g:
        tta = int(part["tta"].iloc[0]) if "tta" in part and part["tta"].notna().any() else 0
        rows.append({
            "dataset": pretty(dataset),
            "model": f"{label} ({model})",
            "test acc %": plus_minus(part["test_acc"] * 100),
            # With TTA, what the same models give without it (empty where not measured).
            "test acc % without TTA": plus_minus(part["test_acc_no_tta"] * 100)
            if "test_acc_no_tta" in part and tta else plus_minus(part["test_acc"] * 100),
            "test loss": plus_minus(part["test_loss"], 3),
            "seeds": len(part), "epochs": compact_number(part["epochs"].iloc[0]),
            "train images": f"{int(part['train_images'].iloc[0]):,}",
            "augmentation": part["augmentations"].iloc[0],
            "test-time augmentation": findings.TTA_WORDS.get(tta, str(tta)),
            "wall min / run": f"{part['wall_seconds'].mean() / 60:.1f}", "hardware": hw,
            "profile": profile,
        })
    return pd.DataFrame(rows)


def key_results(df) -> str:
    """The Key Results table (`key_results_frame`) in markdown."""
    table = key_results_frame(df)
    return markdown_table(table) if len(table) else "_No results yet: run `./run_all.sh`._"


def training_time(df) -> str:
    """What the study's recorded runs (one row each) cost in training, and where they ran.

    Each run keeps its own wall time, whichever sitting or machine trained it: this is what
    the results cost, not what the last pipeline run did (the pipeline says that apart).
    """
    if not len(df):
        return "the study has no recorded runs yet"
    hardware = df["hardware"].replace("", None).fillna("hardware not recorded")
    per = df.groupby(hardware, sort=False)["wall_seconds"].agg(["size", "sum"])
    where = (f"on {per.index[0]}" if len(per) == 1 else
             "(" + "; ".join(f"{int(n)} on {hw}" for hw, (n, _) in per.iterrows()) + ")")
    return (f"the study's {len(df)} recorded runs cost {df['wall_seconds'].sum() / 3600:.1f} h "
            f"of training {where}")


def study_cost(df) -> str:
    """The README's sentence on what the recorded runs cost (`training_time`), per profile."""
    if not len(df):
        return f"No profile yet: {training_time(df)}."
    profiles = ", ".join(f"`{p}`" for p in dict.fromkeys(df["profile"]))
    precisions = df["precision"].dropna().unique() if "precision" in df else []
    rebuild = "a rebuild whose runs are all recorded trains nothing"
    if len(precisions) == 1 and precisions[0] in AUTO_MACHINES:  # `auto` decides the run keys
        p = precisions[0]
        rebuild = (f"they trained in {p}: {rebuild} where `auto` resolves to {p} "
                   f"({AUTO_MACHINES[p]}) and trains them again elsewhere, since the run "
                   "cache keys a run by its precision")
    return f"Profile {profiles}: {training_time(df)} (the sum of their wall times); {rebuild}."


def _machine(df) -> str:
    """Where a benchmark's rows ran: hardware, precision and commits, as one phrase (files
    written before they recorded these columns say so)."""
    def values(column, sep):
        return sep.join(df[column].dropna().astype(str).unique()) if column in df else ""

    commits = sorted({c for c in values("commit", " ").split()})
    parts = [values("hardware", "; ") or "hardware not recorded", values("precision", "/"),
             f"commit {', '.join(commits)}" if commits else ""]
    return ", ".join(p for p in parts if p)


def compression_section(out) -> str | None:
    """The README's compression table from <out>/compression.csv (notebook 05); None without it."""
    path = Path(out) / "compression.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    table = pd.DataFrame({
        "model": df["model"], "variant": df["variant"], "size MB": df["size_mb"].map("{:.2f}".format),
        "test acc %": (df["test_acc"] * 100).map("{:.2f}".format),
        "Δ pp": df["acc_change_pp"].map("{:+.2f}".format),
        "ms / image (b1)": _with_range(df, "latency_ms_b1", "{:.2f}"),
        "images/s (b256)": _with_range(df, "throughput_b256", "{:,.0f}"),
        "speedup b256": df["speedup_b256"].map("{:.1f}x".format)})
    rounds = (f" Timings: median of {int(df['timing_rounds'].max())} rounds (range in brackets)."
              if "timing_rounds" in df else " Timings: one round each.")
    return f"Machine: {_machine(df)}.{rounds}\n\n" + markdown_table(table)  # hardware: threads


def _with_range(df, column: str, fmt: str):
    """A timing column's medians, with their lowest and highest round where recorded."""
    if f"{column}_min" not in df:
        return df[column].map(fmt.format)
    return [f"{fmt.format(m)} ({fmt.format(lo)}–{fmt.format(hi)})"
            for m, lo, hi in zip(df[column], df[f"{column}_min"], df[f"{column}_max"], strict=True)]


def minutes_to(points, target: float) -> float | None:
    """Minutes at which a mean accuracy curve (minutes_mean, test_acc_mean) first reaches
    `target`, interpolated linearly between budgets; None when it never does."""
    pts = points.sort_values("minutes_mean")[["minutes_mean", "test_acc_mean"]].to_numpy()
    if len(pts) and pts[0][1] >= target:
        return float(pts[0][0])
    for (m0, a0), (m1, a1) in zip(pts, pts[1:], strict=False):
        if a1 >= target > a0:
            return float(m0 + (target - a0) * (m1 - m0) / (a1 - a0))
    return None


def time_to_accuracy_section(out, targets=(0.90, 0.94)) -> str | None:
    """The README's time-to-accuracy table from <out>/time_to_accuracy.csv
    (benchmarks/time_to_accuracy.py) and where the fast recipe reaches each target."""
    path = Path(out) / "time_to_accuracy.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    table = pd.DataFrame({
        "recipe": df["recipe"], "epochs": df["epochs"].map(compact_number), "seeds": df["n"],
        "train images": df["train_images"] if "train_images" in df else "",
        "minutes per run": [mean_sd(m, s, 2) for m, s in zip(df["minutes_mean"],
                                                              df["minutes_std"], strict=True)],
        "test acc %": [mean_sd(100 * a, 100 * s, 2) for a, s in zip(df["test_acc_mean"],
                                                                    df["test_acc_std"], strict=True)]})
    reach = []
    for name, fast in df[df["recipe"] != "baseline"].groupby("recipe", sort=False):
        top = fast.loc[fast["test_acc_mean"].idxmax()]
        for target in targets:
            m = minutes_to(fast, target)
            reach.append(f"- {name}, {target:.0%}: " + (
                f"after {m:.1f} min (between budgets: interpolated)" if m is not None else
                f"not reached; the best budget gives {top['test_acc_mean'] * 100:.2f}% in "
                f"{top['minutes_mean']:.1f} min"))
    return (f"Machine: {_machine(df)}.\n\n" + markdown_table(table)
            + ("\n\nWhere the fast recipe's mean curve reaches each target:\n\n" + "\n".join(reach)
               if reach else ""))


# The README's generated sections sit between these markers.
BEGIN, END = "<!-- key-results:begin -->", "<!-- key-results:end -->"
FINDINGS = ("<!-- findings:begin -->", "<!-- findings:end -->")
COMPRESSION = ("<!-- compression:begin -->", "<!-- compression:end -->")
TIME_TO_ACCURACY = ("<!-- time-to-accuracy:begin -->", "<!-- time-to-accuracy:end -->")
STUDY_COST = ("<!-- study-cost:begin -->", "<!-- study-cost:end -->")


def update_readme(path: Path, table: str, begin: str = BEGIN, end: str = END) -> bool:
    """Replace the text between two markers (default: key results); False when one is missing."""
    text = path.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    fileio.write_text(f"{head}{begin}\n{table}\n{end}{tail}", path)  # atomic: never half a README
    return True
