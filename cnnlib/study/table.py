"""The results table: one row per run (`Row`), its columns, and the rows on disk.

`Row`'s fields are the columns of every results csv, in order (`COLUMNS`). A notebook
writes its study's rows to `<outputs>/results/<study>.csv` (`save_results`);
`readme.collect_results` reads every study's rows once (`read_studies`) and merges them
into `<outputs>/results.csv`. Every results csv is read by `read_results` and written,
atomically, by `write_results`, with its SHA-256 beside it (`<name>.csv.sha256`, in
`sha256sum`'s format): `read_studies` refuses a study's table that does not match it, so
that a damaged or hand-edited table never reaches results.csv or the README unseen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from cnnlib import _fileio as fileio
from cnnlib.data.corruptions import CORRUPTIONS
from cnnlib.study.cache import Run
from cnnlib.study.locations import outputs_root
from cnnlib.training.config import RunConfig


@dataclass(frozen=True)
class Row:
    """One run's row of the results table; the fields are the columns, in table order."""

    study: str
    label: str
    dataset: str
    model: str
    options: str  # the model options as sorted JSON
    augmentations: str
    seed: int
    epochs: float
    epochs_run: int
    best_epoch: int | None
    optimizer: str
    lr: float
    schedule: str
    weight_decay: float
    label_smoothing: float
    batch_size: int
    train_images: int | None
    val_size: int
    train_acc: float | None
    val_acc: float | None
    test_acc: float
    test_loss: float
    test_top5: float | None
    tta: int  # the test-time augmentation level
    precision: str
    wall_seconds: float
    device: str
    hardware: str
    profile: str
    commit: str
    run_key: str
    # training.assess's numbers (a run's result.json "assessment"), as `ASSESS_COLUMNS`
    assessment: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_run(cls, run: Run, study: str = "") -> Row:
        c, r = run.config, run.result
        last = r["history"][-1] if r.get("history") else {}
        return cls(
            study=study, label=run.label, dataset=c.dataset, model=c.model,
            options=json.dumps(c.model_options, sort_keys=True), augmentations=c.augment,
            seed=c.seed, epochs=c.epochs, epochs_run=len(r.get("history") or []),
            best_epoch=r.get("best_epoch"), optimizer=c.optimizer, lr=c.lr,
            schedule=c.schedule, weight_decay=c.weight_decay,
            label_smoothing=c.label_smoothing, batch_size=c.batch_size,
            train_images=r.get("train_images"), val_size=c.val_size,
            train_acc=last.get("train_acc"),
            val_acc=r["val"].get("val_acc"), test_acc=r["test"]["acc"],
            test_loss=r["test"]["loss"], test_top5=r["test"].get("top5"), tta=c.tta,
            precision=r.get("precision") or _precision_before_recorded(c, r["device"]),
            wall_seconds=round(r["wall_seconds"], 1), device=r["device"],
            hardware=r.get("hardware", ""), profile=r.get("profile", ""),
            commit=r.get("commit", ""), run_key=run.path.name, assessment=run.assessment,
        )

    def as_dict(self) -> dict:
        row = asdict(self)
        assessment = row.pop("assessment")
        out = {**row, **assessment_columns(assessment)}
        if out["test_acc_no_tta"] is None and not out["tta"]:  # scored without TTA already
            out["test_acc_no_tta"] = out["test_acc"]
        return out


# The assessment's columns, after the run's: empty for a run without one (a record finished
# before it was measured). Corruption accuracies are on `assessed_images` test images without
# TTA, beside their clean accuracy; calibration and duplicate-free accuracy on the run's own
# scored predictions.
ASSESS_COLUMNS = ["test_acc_no_tta", "assessed_images", "clean_subset_acc", "corruption_acc",
                  *(f"corruption_{name}" for name in CORRUPTIONS), "ece", "nll", "temperature",
                  "ece_scaled", "nll_scaled", "dup_free_acc", "duplicates_removed",
                  "assess_seconds"]


def assessment_columns(assessment: dict | None) -> dict:
    a = assessment or {}
    families = a.get("families") or {}
    seconds = a.get("seconds")
    return {"test_acc_no_tta": a.get("test_acc_no_tta"), "assessed_images": a.get("images"), "clean_subset_acc": a.get("clean_acc"),
            "corruption_acc": a.get("corruption_acc"),
            **{f"corruption_{name}": families.get(name) for name in CORRUPTIONS},
            **{k: a.get(k) for k in ("ece", "nll", "temperature", "ece_scaled", "nll_scaled",
                                     "dup_free_acc", "duplicates_removed")},
            "assess_seconds": None if seconds is None else round(seconds, 1)}


def _precision_before_recorded(config: RunConfig, device: str) -> str:
    """Runs finished before results recorded it: `auto` then meant bf16 on CUDA, fp32 on CPUs."""
    if config.precision != "auto":
        return config.precision
    return "bf16" if str(device).startswith("cuda") else "fp32"


COLUMNS = [f.name for f in fields(Row) if f.name != "assessment"] + ASSESS_COLUMNS


# Text columns stay text whatever they hold (a commit of digits, a label "None"); "" when empty.
_TEXT = [f.name for f in fields(Row) if f.type == "str"]


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """`df` in `COLUMNS` order (missing columns empty, others kept after them) with the
    schema's types: text columns "" where empty, a number column of None only NaN. A frame
    `write_results` wrote, `read_results` reads back equal; the bytes written do not change."""
    df = df.reindex(columns=[*COLUMNS, *(c for c in df.columns if c not in COLUMNS)])
    for c in COLUMNS:
        if c in _TEXT:
            df[c] = df[c].astype(object).fillna("").astype(str)  # a missing column is float NaN
        elif df[c].dtype == object:  # None (no value) in every row: a number column of NaN
            df[c] = pd.to_numeric(df[c])
    return df


def results_frame(runs: list[Run], study: str = "") -> pd.DataFrame:
    return _typed(pd.DataFrame([Row.from_run(r, study).as_dict() for r in runs], columns=COLUMNS))


def read_results(path) -> pd.DataFrame:
    """A results csv (a study's rows or results.csv) as a frame in `COLUMNS` order; a file
    written before a column existed reads that column as empty."""
    numbers = {c: [""] for c in COLUMNS if c not in _TEXT}  # only an empty cell is missing
    return _typed(pd.read_csv(path, dtype=dict.fromkeys(_TEXT, str), keep_default_na=False,
                              na_values=numbers))


def write_results(df: pd.DataFrame, path) -> Path:
    """Write a results frame as csv at `path`, atomically (`COLUMNS` first, in order), and
    its SHA-256 beside it (`checksum_path`)."""
    text = _typed(df).to_csv(index=False)
    path = fileio.write_text(text, path)
    digest = hashlib.sha256(text.encode()).hexdigest()
    fileio.write_text(f"{digest}  {path.name}\n", checksum_path(path))
    return path


def checksum_path(path) -> Path:
    """`<name>.sha256` beside a results csv: its SHA-256 as `sha256sum` writes it."""
    return Path(path).with_name(Path(path).name + ".sha256")


def verified(path) -> Path:
    """`path` if its bytes match the SHA-256 beside it, else DamagedFileError naming it
    (a table edited by hand, damaged, or written without its checksum)."""
    path, sums = Path(path), checksum_path(path)
    rebuild = f"run its notebook again to rebuild it (./run_all.sh --only {path.stem} --force)"
    try:
        want = sums.read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        raise fileio.DamagedFileError(f"{path}: no readable checksum beside it ({sums.name}); "
                                      f"refused: {rebuild}") from None
    if hashlib.sha256(path.read_bytes()).hexdigest() != want:
        raise fileio.DamagedFileError(f"{path}: changed since it was written (it does not "
                                      f"match {sums.name}); refused: {rebuild}")
    return path


def read_studies(out=None) -> pd.DataFrame:
    """Every study's rows, `<out>/results/*.csv` in file-name order (01_..., 02_...), as one
    frame; a run in two studies (or under two labels) keeps a row in each. A row without a
    study belongs to the one its file is named after. A file that does not match its
    checksum is refused (`verified`)."""
    paths = sorted((Path(out or outputs_root()) / "results").glob("*.csv"))
    frames = [df.assign(study=df["study"].where(df["study"] != "", p.stem))
              for p in paths if len(df := read_results(verified(p)))]
    return pd.concat(frames, ignore_index=True) if frames else _typed(pd.DataFrame(columns=COLUMNS))


def save_results(runs: list[Run], study: str, out=None) -> pd.DataFrame:
    """Write this study's rows to <outputs>/results/<study>.csv; returns the frame.

    A run that appears twice in a study (the same config under two labels) keeps
    both rows: each label is a point of its own sweep.
    """
    df = results_frame(runs, study)
    write_results(df, Path(out or outputs_root()) / "results" / f"{study}.csv")
    return df


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
