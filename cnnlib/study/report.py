"""Tables, figures and text for the notebooks: the notebooks stay thin, the logic lives here.

Every notebook starts with ``ctx = report.start(name, PROFILE)`` (profile resolved,
output folders known under the project root), trains or fetches its runs through
``executors.run_all``, and turns them into tables (pandas frames) and figures
(``cnnlib.viz``) with the functions below. Text meant for an
nbval output check (``data_summary``, ``parameter_summary``, ``layer_summary``)
is deterministic: no timings, no paths (``tools/store_check_outputs.py`` stores
those outputs in the notebook files).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from cnnlib import _fileio as fileio
from cnnlib.models.registry import model_options
from cnnlib.study import locations, stats
from cnnlib.study.budget import duration
from cnnlib.study.checks import parameters
from cnnlib.study.definitions import PUBLISHED, architecture_budget
from cnnlib.study.findings import TTA_WORDS, interactions, options_words
from cnnlib.study.table import markdown_table
from cnnlib.training.evaluate import most_confused_pairs
from cnnlib.viz._figure import pretty

__all__ = [
    "CHECK_MARK", "COLUMN_NAMES", "Context", "answer", "best_run", "confused_pairs",
    "cost_table", "delta_table", "frontier_frame", "histories", "long_metrics",
    "md", "one_per_class", "option_column", "pair_examples", "pick",
    "pp", "provenance", "published", "runs_table", "save_table", "seed_table", "selection_rule",
    "show", "show_file", "start", "summary_table", "table", "with_gap", "with_parameters",
    "write_csv",
]

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


# -- notebook context ----------------------------------------------------------------------------


@dataclass
class Context:
    notebook: str
    profile: str
    root: Path
    out: Path  # outputs root: the required figures sit at its top level
    figures: Path  # every other figure
    tables: Path  # markdown/csv tables of the notebooks
    models: Path  # exported best checkpoints

    def figure(self, name: str) -> Path:
        return self.figures / name


def start(notebook: str, profile: str = "auto") -> Context:
    """Resolve the profile and name the folders, all under the project root whatever the
    working directory (JupyterLab starts kernels in notebooks/, papermill in the root)."""
    root = locations.project_root()
    locations.anchor_data_root()
    profile = locations.resolve_profile(profile)
    # captum imports tqdm.auto, which warns in kernels without ipywidgets: noise in reports.
    warnings.filterwarnings("ignore", message="IProgress not found")
    out = locations.outputs_root()
    ctx = Context(notebook, profile, root, out, out / "figures", out / "tables", locations.models_root())
    for folder in (ctx.out, ctx.figures, ctx.tables):
        folder.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.precision", 4)
    pd.set_option("display.max_rows", 200)
    print(f"{notebook}: profile {profile}; outputs in {ctx.out}/, run cache in "
          f"{locations.runs_root()}/, models in {ctx.models}/", flush=True)
    return ctx


def answer(ctx: Context, text: str, runs) -> None:
    """A report's opening: the computed answer to its question, then its provenance line."""
    md(f"**Answer.**\n\n{text}\n\n{provenance(ctx, runs)}")


def provenance(ctx: Context, runs) -> str:
    """A report's provenance line: profile, runs, the hardware they trained on and the days
    they finished (the commits are in the results tables). It names nothing of the sitting
    that built the report, so rebuilding from the same runs writes the same line."""
    hardware = sorted({r.result.get("hardware") or r.result.get("device", "") for r in runs})
    days = sorted({datetime.fromtimestamp(r.result["finished"], timezone.utc).date().isoformat()
                   for r in runs if isinstance(r.result.get("finished"), (int, float))})
    when = "" if not days else (f" on {days[0]}" if len(days) == 1
                                else f" between {days[0]} and {days[-1]}")
    return (f"_Profile `{ctx.profile}`; {len(runs)} runs, trained on {'; '.join(hardware)}"
            f"{when}._")


def show(fig, alt: str | None = None) -> None:
    """Display a Figure in the notebook as an embedded PNG (kept in HTML reports)."""
    # Imported here: IPython is there in a notebook kernel only.
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    alt = alt or fig.get_label() or _title(fig)  # plots.describe sets the label
    display(Image(data=buf.getvalue()), metadata={"image/png": {"alt": alt}})


def _title(fig) -> str:
    suptitle = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    if suptitle:
        return suptitle
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    return titles[0] if titles else "figure"


def show_file(path, alt: str | None = None) -> None:
    """Display a PNG written earlier (e.g. by interpret.save_feature_maps)."""
    # Imported here: IPython is there in a notebook kernel only.
    from IPython.display import Image, display

    path = Path(path)
    if alt is None:  # plots.save_figure writes the figure's alt text into the PNG
        # Imported here: only a PNG shown without alt text needs it.
        from PIL import Image as PILImage

        with PILImage.open(path) as png:
            alt = png.text.get("Description") or path.stem
    display(Image(filename=str(path)), metadata={"image/png": {"alt": alt}})


def md(text: str) -> None:
    """Display markdown computed from the results (text that depends on the numbers)."""
    # Imported here: IPython is there in a notebook kernel only.
    from IPython.display import Markdown, display

    display(Markdown(text))


# Column names as a reader writes them; names that are words already pass unchanged.
COLUMN_NAMES = {
    "train_acc": "train accuracy %", "val_acc": "validation accuracy %",
    "test_acc": "test accuracy %", "test_loss": "test loss", "test_top5": "test top-5 %",
    "val acc %": "validation acc %", "wall_seconds": "wall seconds",
    "train_images": "training images", "epochs_run": "epochs run", "best_epoch": "best epoch",
    "size_mb": "size (MB)", "size_ratio": "size vs fp32", "acc_change_pp": "accuracy change (pp)",
    "speedup_b1": "speed-up at batch 1", "speedup_b256": "speed-up at batch 256",
    "zip_mb": "zipped (MB)", "latency_ms_b1": "latency at batch 1 (ms, median)",
    "latency_ms_b1_min": "fastest", "latency_ms_b1_max": "slowest",
    "throughput_b256": "images/s at batch 256 (median)", "throughput_b256_min": "lowest",
    "throughput_b256_max": "highest", "timing_rounds": "timing rounds", "params": "parameters",
    "steps": "fine-tuning steps", "calibration": "calibration images",
    "test_subset": "test images (0 = all)", "seconds": "seconds per timing",
    "qat_steps": "QAT steps",
}
# Columns that hold class names (shown as words: "maple_tree" -> "maple tree").
_CLASS_COLUMNS = ("true", "predicted", "class", "superclass of true")


def table(df, index: bool = True):
    """A table (or one record, a dict) as the report shows it: its index as ordinary columns (`index`), column names,
    dataset and class names as a reader writes them, booleans as yes/no, no row numbers.
    Plain HTML, so rebuilding from the same numbers writes the same bytes."""
    # Imported here: IPython is there in a notebook kernel only.
    from IPython.display import HTML

    if isinstance(df, dict):  # one record, e.g. a profile's settings
        df = pd.DataFrame([df])
    out = df.reset_index() if index and any(n is not None for n in df.index.names) else df.copy()
    for col in out.columns:
        if out[col].dtype == bool:
            out[col] = out[col].map({True: "yes", False: "no"})
        elif col == "dataset":  # a non-breaking hyphen: "CIFAR-10" never wraps in a column
            out[col] = out[col].map(lambda d: pretty(d).replace("-", "\u2011"))
        elif col in _CLASS_COLUMNS:
            out[col] = out[col].map(pretty)
    out.columns = [COLUMN_NAMES.get(str(c), str(c).replace("_", " ")) for c in out.columns]
    return HTML(out.to_html(index=False, border=0, na_rep="", justify="left"))


def write_csv(df, path, index: bool = False) -> Path:
    """Write a frame as CSV at `path`, atomically (a crash never leaves half a file)."""
    return fileio.write_text(df.to_csv(index=index), path)


def save_table(df, ctx: Context, name: str, index: bool = True) -> Path:
    """Write a table as CSV and markdown to <outputs>/tables/<name>.{csv,md}, each atomically;
    return the .md."""
    write_csv(df, ctx.tables / f"{name}.csv", index=index)
    frame = df.reset_index() if index else df
    return fileio.write_text(markdown_table(frame) + "\n", ctx.tables / f"{name}.md")


# -- tables for readers ------------------------------------------------------------------------


def runs_table(configs) -> pd.DataFrame:
    """What a list of (label, RunConfig) trains, for readers: one row per dataset and label
    with its network, parameters, epochs, training images, augmentation, test-time
    augmentation and seeds (the planned epochs: a wall-clock budget's are in the results)."""
    rows: dict[tuple[str, str], dict] = {}
    for label, c in configs:
        options = json.dumps(c.model_options, sort_keys=True)
        images = c.train_subset or 50_000 - c.val_size
        row = rows.setdefault((c.dataset, label), {
            "dataset": c.dataset, "label": label,
            "network": c.model + (f" ({options_words(options)})" if c.model_options else ""),
            "parameters": f"{parameters(c.model, c.dataset, options):,}",
            "epochs": f"{c.epochs:g}", "training images": f"{images:,}",
            "augmentation": c.augment, "test-time augmentation": TTA_WORDS.get(c.tta, c.tta),
            "seeds": []})
        row["seeds"].append(c.seed)
    return pd.DataFrame([{**r, "seeds": ", ".join(map(str, sorted(set(r["seeds"]))))}
                         for r in rows.values()])


# -- picking runs --------------------------------------------------------------------------------


def pick(runs, dataset: str, label: str, seed: int | None = None):
    """The run of `label` on `dataset` (the lowest seed unless `seed` is given)."""
    found = [r for r in runs if r.config.dataset == dataset and r.label == label
             and (seed is None or r.config.seed == seed)]
    if not found:
        raise ValueError(f"pick: no run {label!r} on {dataset} (seed {seed})")
    return min(found, key=lambda r: r.config.seed)


def model_runs(runs) -> list:
    """The runs whose models or test metrics notebooks 01, 04 and 05 load: per dataset of
    the baseline study, the reference's first seed and the validation-chosen best."""
    datasets = sorted({r.config.dataset for r in runs})
    return [r for ds in datasets for r in (pick(runs, ds, "reference"), best_run(runs, ds))]


def best_run(runs, dataset: str, label: str = "best"):
    """Of the runs of `label` on `dataset`, the one with the highest validation accuracy.

    Never reads test metrics (choosing on them would bias the chosen run's test score).
    Without a validation split the lowest seed is taken; `selection_rule` says which.
    """
    return _choose(runs, dataset, label)[0]


def selection_rule(runs, dataset: str, label: str = "best") -> str:
    """How `best_run` chose among the runs of `label` on `dataset`, as a sentence."""
    return _choose(runs, dataset, label)[1]


def _choose(runs, dataset: str, label: str):
    found = sorted((r for r in runs if r.config.dataset == dataset and r.label == label),
                   key=lambda r: r.config.seed)
    if not found:
        raise ValueError(f"best_run: no run {label!r} on {dataset}")
    val = [r.result.get("val", {}).get("val_acc") for r in found]
    if len(found) == 1:
        return found[0], f"the only `{label}` run on {dataset} (seed {found[0].config.seed})"
    if any(v is None for v in val):
        return found[0], (f"the lowest seed ({found[0].config.seed}) of the {len(found)} "
                          f"`{label}` runs on {dataset}: without a validation split there is "
                          "nothing to choose on but the test set, which no choice reads")
    i = max(range(len(found)), key=lambda i: val[i])  # ties: the lowest seed
    return found[i], (f"the highest validation accuracy ({pp(val[i])}, seed "
                      f"{found[i].config.seed}) of the {len(found)} `{label}` runs on {dataset}")


def histories(runs, seed: int | None = None, name=None) -> dict[str, list[dict]]:
    """{name: history} for plots.plot_history; one seed (the lowest) per (dataset, label)."""
    name = name or (lambda r: f"{r.config.dataset} {r.label}")
    out: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: r.config.seed):
        if seed is not None and r.config.seed != seed:
            continue
        out.setdefault(name(r), r.history)
    return out


# -- tables from results frames ------------------------------------------------------------------


def option_column(df, name: str, model: str = "baseline"):
    """A model option as a column of a results frame (the model's default where unset)."""
    default = model_options(model)[name]
    return df["options"].map(lambda s: json.loads(s).get(name, default))


def with_gap(df):
    """Adds `gap`: final-epoch train accuracy minus validation accuracy (percentage points)."""
    return df.assign(gap=(df["train_acc"] - df["val_acc"]) * 100)


def with_parameters(df):
    """Adds `parameters`: each run's network size (from its model, dataset and options)."""
    return df.assign(parameters=[parameters(m, d, o) for m, d, o in
                                 zip(df["model"], df["dataset"], df["options"], strict=True)])


def frontier_frame(df):
    """Notebook 06's rows with `network` and `budget` (the factor of the shortest budget) from
    each label, and `minutes`, the measured wall time of the run."""
    parts = [architecture_budget(x) for x in df["label"]]
    return df.assign(network=[m for m, _ in parts], budget=[f"×{f}" for _, f in parts],
                     minutes=df["wall_seconds"] / 60)


def published(dataset: str, network: str) -> float | None:
    """`definitions.PUBLISHED`'s accuracy (%) of `network` on `dataset`, or None."""
    return PUBLISHED.get(network, ({}, ""))[0].get(dataset)


def cost_table(df, seconds: float):
    """Per dataset, network and budget (`seconds`: the shortest budget of training steps):
    parameters, epochs, wall minutes per run and test accuracy (%), the last two mean ± std
    over seeds; then the network's published accuracy after its paper's full schedule, on its
    first row of each dataset (it belongs to no budget). Where the runs were trained on more
    than one machine, `trained on` names each row's (the wall minutes are theirs)."""
    rows, shown = [], set()
    frame = with_parameters(frontier_frame(df))
    mixed = frame["hardware"].nunique() > 1
    for (dataset, label), part in frame.groupby(["dataset", "label"], sort=False):
        network, factor = architecture_budget(label)
        budget = factor * seconds
        paper = None if (dataset, network) in shown else published(dataset, network)
        shown.add((dataset, network))
        rows.append({"dataset": dataset, "network": network,
                     "budget": f"{budget:g} s" if budget < 90 else duration(budget),
                     "parameters": f"{int(part['parameters'].iloc[0]):,}",
                     "epochs": ", ".join(f"{e:g}" for e in dict.fromkeys(part["epochs"])),
                     "wall min": stats.plus_minus(part["wall_seconds"] / 60, 2),
                     **({"trained on": "; ".join(dict.fromkeys(part["hardware"]))} if mixed
                        else {}),
                     "test acc %": stats.plus_minus(part["test_acc"] * 100), "seeds": len(part),
                     "published %": "" if paper is None else f"{paper:g}",
                     "published after": "" if paper is None else PUBLISHED[network][1]})
    return pd.DataFrame(rows)


def summary_table(df, by=("dataset", "label")):
    """Mean ± std over seeds of train/val/test accuracy (%) and test loss, per group.

    Groups keep the order in which they first appear (the order of the runs).
    """
    rows = []
    for key, part in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key, strict=True))
        row["seeds"] = len(part)
        for col, name, scale, digits in (("train_acc", "train acc %", 100, 1),
                                         ("val_acc", "val acc %", 100, 1),
                                         ("test_acc", "test acc %", 100, 1),
                                         ("test_loss", "test loss", 1, 3)):
            row[name] = stats.plus_minus(part[col] * scale, digits)
        rows.append(row)
    return pd.DataFrame(rows).set_index(list(by))


def seed_table(df, exported=()):
    """One row per run: epochs run, accuracies (%), test loss, minutes of training, and
    "yes" under *exported* for the runs whose `run_key` is in `exported`."""
    table = df[["dataset", "label", "seed", "epochs_run"]].rename(columns={"epochs_run": "epochs"})
    for col, name in (("train_acc", "train acc %"), ("val_acc", "val acc %"),
                      ("test_acc", "test acc %")):
        table[name] = (df[col] * 100).round(1)
    table["test loss"] = df["test_loss"].round(3)
    table["minutes"] = (df["wall_seconds"] / 60).round(1)
    table["exported"] = df["run_key"].isin(list(exported)).map({True: "yes", False: ""})
    return table.set_index(["dataset", "label", "seed"])


def delta_table(df, reference: str, metric: str = "test_acc", order=None, name: str = "variant"):
    """`metric` of each label against the `reference` label, per dataset (`stats.compare`).

    Columns per dataset: accuracy (mean ± std over seeds, %), the paired change (pp, mean ±
    std), its 95% confidence interval and the verdict. Rows: labels (the index is `name`);
    `order`: the labels compared and their order (default: every label, as first seen).
    """
    table: dict[str, dict[str, str]] = {}
    if order is not None:  # the labels of one sweep: the others belong to another comparison
        df = df[df["label"].isin(order)]
    for dataset, part in df.groupby("dataset", sort=False):
        if reference not in set(part["label"]):
            raise ValueError(f"delta_table: no {reference!r} run on {dataset}")
        deltas = {d.label: d for d in stats.compare(part, reference, metric=metric)}
        for label, runs_ in part.groupby("label", sort=False):
            row = table.setdefault(label, {})
            row[f"{dataset} acc %"] = stats.plus_minus(runs_[metric] * 100)
            d = deltas.get(label)
            row[f"{dataset} Δ pp"] = d.change() if d else ""
            row[f"{dataset} CI (Holm level)"] = (f"{d.interval_text()} ({100 * d.level:.3g}%)"
                                                 if d and d.n > 1 else "")
            row[f"{dataset} verdict"] = d.verdict if d else "reference"
    out = pd.DataFrame.from_dict(table, orient="index").fillna("")
    if order is not None:
        out = out.reindex([o for o in order if o in out.index])
    out.index.name = name
    return out


def interaction_table(df, sweep, metric: str = "test_acc"):
    """A long-budget sweep's variants (`findings.interactions`): per dataset, the paired
    change at each budget with its verdict, and the change between budgets with its interval
    and verdict (pp)."""
    rows = []
    for dataset, part in df.groupby("dataset", sort=False):
        for at_short, at_long, change in interactions(part, sweep, metric):
            rows.append({"dataset": pretty(dataset), "variant": at_short.label,
                         "Δ pp, reference budget": at_short.change(),
                         "verdict, reference budget": at_short.verdict,
                         "Δ pp, long budget": at_long.change(),
                         "verdict, long budget": at_long.verdict,
                         "change between budgets, pp": change.change(),
                         "its CI": change.interval_text(),
                         "change": "detectable" if change.detectable else change.verdict})
    return pd.DataFrame(rows)


def long_metrics(df, x: str, metrics=("train_acc", "val_acc", "test_acc")):
    """Results in long format (one row per run and metric) for grouped bars; values in %."""
    names = {"train_acc": "train", "val_acc": "validation", "test_acc": "test"}
    parts = [pd.DataFrame({x: df[x], "dataset": df["dataset"], "seed": df["seed"],
                           "split": names.get(m, m), "accuracy %": df[m] * 100})
             for m in metrics]
    return pd.concat(parts, ignore_index=True).dropna(subset=["accuracy %"])


def confused_pairs(metrics: dict, top: int = 10):
    """The `top` most confused (true, predicted) pairs of a run's test metrics, as a frame."""
    rows = most_confused_pairs(metrics["confusion"], metrics["classes"], top=top)
    df = pd.DataFrame(rows, columns=["true", "predicted", "count", "share_of_true"])
    f2c, supers = metrics.get("fine_to_coarse"), metrics.get("superclasses")
    if f2c is not None and supers:
        index = {c: i for i, c in enumerate(metrics["classes"])}

        def superclass(c):
            return supers[int(f2c[index[c]])]

        df["same superclass"] = [superclass(t) == superclass(p)
                                 for t, p in zip(df["true"], df["predicted"], strict=True)]
        df["superclass of true"] = df["true"].map(superclass)
    df["share_of_true"] = (df["share_of_true"] * 100).round(1)
    return df.rename(columns={"share_of_true": "% of true class"})


def one_per_class(labels, n: int) -> list[int]:
    """Indices of the first test image of classes 0, 1, ... (n of them, fewer if absent)."""
    labels = torch.as_tensor(labels)
    out = []
    for c in range(int(labels.max()) + 1):
        hit = (labels == c).nonzero()
        if len(hit):
            out.append(int(hit[0]))
        if len(out) >= n:
            break
    return out


def pair_examples(metrics: dict, true: str, predicted: str, k: int = 8) -> list[int]:
    """Test indices where `true` was predicted as `predicted`, most confident first."""
    classes = metrics["classes"]
    t, p = classes.index(true), classes.index(predicted)
    labels, preds = torch.as_tensor(metrics["labels"]), torch.as_tensor(metrics["preds"])
    hit = ((labels == t) & (preds == p)).nonzero().squeeze(1)
    conf = torch.as_tensor(metrics["probs"])[hit, p]
    return hit[torch.argsort(conf, descending=True, stable=True)][:k].tolist()


def pp(x: float) -> str:
    """A fraction as a percentage with one decimal."""
    return f"{x * 100:.1f}%"
