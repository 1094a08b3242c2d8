"""Tables, figures and text for the notebooks: the notebooks stay thin, the logic lives here.

Every notebook starts with ``ctx = report.start(name, PROFILE)`` (project root as
working directory, profile resolved, output folders known), trains or fetches
its runs through ``runs.run_all``, and turns them into tables (pandas frames)
and figures (``plots``/``interpret``) with the functions below. Text meant for an
nbval output check (``data_summary``, ``parameter_summary``, ``layer_summary``)
is deterministic: no timings, no paths.

``python -m cnnlib.report store-check-outputs NOTEBOOK... [--from DIR]`` stores,
in the notebook files, the smoke-profile outputs of the cells marked
``# NBVAL_CHECK_OUTPUT`` (the reference nbval compares against), taken from
executed copies in DIR or from executing the notebooks in a scratch folder;
every other output is stripped. Run it after changing what a check cell prints.
"""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data as cdata
from . import runs as cruns
from .models import count_parameters, create_model

__all__ = [
    "CHECK_MARK", "Context", "best_run", "confused_pairs", "data_summary", "delta_table",
    "histories", "layer_summary", "long_metrics", "md", "one_per_class", "option_column",
    "pair_examples", "parameter_summary", "pick", "plan_summary", "pp", "save_table", "show",
    "show_file", "start", "store_check_outputs", "summary_table", "with_gap",
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
    """Make the project root the working directory, resolve the profile, name the folders."""
    root = cruns.project_root()
    profile = cruns.resolve_profile(profile)
    # captum imports tqdm.auto, which warns in kernels without ipywidgets: noise in reports.
    warnings.filterwarnings("ignore", message="IProgress not found")
    out = cruns.outputs_root()
    ctx = Context(notebook, profile, root, out, out / "figures", out / "tables", cruns.models_root())
    for folder in (ctx.out, ctx.figures, ctx.tables):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        import pandas as pd

        pd.set_option("display.precision", 4)
        pd.set_option("display.max_rows", 200)
    except ImportError:  # pragma: no cover - pandas is part of the study extras
        pass
    print(f"{notebook}: profile {profile}; outputs in {ctx.out}/, run cache in "
          f"{cruns.runs_root()}/, models in {ctx.models}/", flush=True)
    return ctx


def show(fig, alt: str | None = None) -> None:
    """Display a Figure in the notebook as an embedded PNG (kept in HTML reports)."""
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    display(Image(data=buf.getvalue()), metadata={"image/png": {"alt": alt or _title(fig)}})


def _title(fig) -> str:
    suptitle = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    if suptitle:
        return suptitle
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    return titles[0] if titles else "figure"


def show_file(path, alt: str | None = None) -> None:
    """Display a PNG written earlier (e.g. by interpret.save_feature_maps)."""
    from IPython.display import Image, display

    path = Path(path)
    display(Image(filename=str(path)), metadata={"image/png": {"alt": alt or path.stem}})


def md(text: str) -> None:
    """Display markdown computed from the results (text that depends on the numbers)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def save_table(df, ctx: Context, name: str, index: bool = True) -> Path:
    """Write a table as CSV and markdown to <outputs>/tables/<name>.{csv,md}; return the .md."""
    ctx.tables.mkdir(parents=True, exist_ok=True)
    df.to_csv(ctx.tables / f"{name}.csv", index=index)
    path = ctx.tables / f"{name}.md"
    frame = df.reset_index() if index else df
    path.write_text(cruns.markdown_table(frame) + "\n")
    return path


# -- deterministic summaries (nbval output checks) ----------------------------------------------


def data_summary(datasets=cdata.DATASETS, data_root=None) -> str:
    """Sizes, classes, channel statistics and fingerprint of each dataset, as text."""
    lines = []
    for name in datasets:
        d = cdata.load_cifar(name, root=data_root)
        mean, std = cdata.channel_stats(d.train_images)
        counts = torch.bincount(d.train_labels, minlength=d.num_classes)
        low, high = int(counts.min()), int(counts.max())
        per_class = f"{low}" if low == high else f"{low}-{high}"
        lines.append(f"{name}: {len(d.train_labels)} train / {len(d.test_labels)} test images, "
                     f"{tuple(d.train_images.shape[1:])} uint8, {d.num_classes} classes "
                     f"({per_class} train images per class)")
        if d.superclasses:
            lines.append(f"  {len(d.superclasses)} superclasses of "
                         f"{d.num_classes // len(d.superclasses)} classes each")
        shown = ", ".join(d.classes[:10]) + (", ..." if d.num_classes > 10 else "")
        lines.append(f"  classes: {shown}")
        lines.append("  train mean (RGB): " + " ".join(f"{v:.4f}" for v in mean)
                     + "   std: " + " ".join(f"{v:.4f}" for v in std))
        lines.append(f"  fingerprint: {cruns.data_fingerprint(name, data_root)}")
    return "\n".join(lines)


def _num_classes(dataset: str) -> int:
    return 10 if dataset == "cifar10" else 100


def parameter_summary(configs) -> str:
    """One line per distinct network of a list of (label, RunConfig): parameters and options."""
    lines, seen = [], set()
    for label, c in configs:
        key = (c.dataset, c.model, json.dumps(c.model_options, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        n = count_parameters(create_model(c.model, _num_classes(c.dataset), **c.model_options))
        options = ", ".join(f"{k}={v}" for k, v in sorted(c.model_options.items())) or "defaults"
        lines.append(f"{c.dataset:9s} {label:24s} {c.model:9s} {n:>10,d} parameters  ({options})")
    return "\n".join(lines)


def plan_summary(configs) -> str:
    """What a list of (label, RunConfig) trains: run counts, variants, sizes and seeds."""
    lines = []
    unique = len({c.key() for _, c in configs})
    lines.append(f"{len(configs)} runs, {unique} distinct configs")
    by_dataset: dict[str, list[str]] = {}
    for label, c in configs:
        labels = by_dataset.setdefault(c.dataset, [])
        if label not in labels:
            labels.append(label)
    for dataset, labels in by_dataset.items():
        lines.append(f"  {dataset}: {', '.join(labels)}")
    for field in ("epochs", "batch_size", "train_subset", "val_size", "test_subset", "seed"):
        values = sorted({getattr(c, field) for _, c in configs})
        lines.append(f"  {field}: {', '.join(str(v) for v in values)}")
    return "\n".join(lines)


def layer_summary(model) -> str:
    """The model's conv layers: name, channels in -> out, kernel, frozen or not."""
    from torch import nn

    lines = [f"{type(model).__name__}: {count_parameters(model):,d} parameters"]
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            k = "x".join(str(s) for s in m.kernel_size)
            frozen = "" if m.weight.requires_grad else " (frozen)"
            lines.append(f"  {name:28s} {m.in_channels:4d} -> {m.out_channels:4d}  {k}{frozen}")
    return "\n".join(lines)


# -- picking runs --------------------------------------------------------------------------------


def pick(runs, dataset: str, label: str, seed: int | None = None):
    """The run of `label` on `dataset` (the lowest seed unless `seed` is given)."""
    found = [r for r in runs if r.config.dataset == dataset and r.label == label
             and (seed is None or r.config.seed == seed)]
    if not found:
        raise ValueError(f"pick: no run {label!r} on {dataset} (seed {seed})")
    return min(found, key=lambda r: r.config.seed)


def best_run(runs, dataset: str, label: str = "best"):
    """Of the runs of `label` on `dataset`, the one with the highest test accuracy."""
    found = [r for r in runs if r.config.dataset == dataset and r.label == label]
    if not found:
        raise ValueError(f"best_run: no run {label!r} on {dataset}")
    return max(found, key=lambda r: (r.test_acc, -r.config.seed))


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
    from .models import model_options

    default = model_options(model)[name]
    return df["options"].map(lambda s: json.loads(s).get(name, default))


def with_gap(df):
    """Adds `gap`: final-epoch train accuracy minus validation accuracy (percentage points)."""
    return df.assign(gap=(df["train_acc"] - df["val_acc"]) * 100)


def summary_table(df, by=("dataset", "label")):
    """Mean ± std over seeds of train/val/test accuracy (%) and test loss, per group.

    Groups keep the order in which they first appear (the order of the runs).
    """
    import pandas as pd

    rows = []
    for key, part in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key, strict=True))
        row["seeds"] = len(part)
        for col, name, scale, digits in (("train_acc", "train acc %", 100, 1),
                                         ("val_acc", "val acc %", 100, 1),
                                         ("test_acc", "test acc %", 100, 1),
                                         ("test_loss", "test loss", 1, 3)):
            row[name] = _pm(part[col] * scale, digits)
        rows.append(row)
    return pd.DataFrame(rows).set_index(list(by))


def _pm(values, digits: int = 1) -> str:
    values = values.dropna()
    if not len(values):
        return ""
    if len(values) == 1:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def delta_table(df, reference: str, metric: str = "test_acc", order=None):
    """Change of `metric` in percentage points against the `reference` label, per dataset.

    Paired by seed: each seed's run is compared with the reference run of the same
    seed, then mean ± std over seeds. Rows: labels; columns: datasets.
    """
    import pandas as pd

    table: dict[str, dict[str, str]] = {}
    for dataset, part in df.groupby("dataset", sort=False):
        ref = part[part["label"] == reference].set_index("seed")[metric]
        if not len(ref):
            raise ValueError(f"delta_table: no {reference!r} run on {dataset}")
        for label, runs_ in part.groupby("label", sort=False):
            d = (runs_.set_index("seed")[metric] - ref).dropna() * 100
            table.setdefault(label, {})[f"{dataset} Δ pp"] = _signed(d)
            table[label][f"{dataset} acc %"] = _pm(runs_[metric] * 100)
    out = pd.DataFrame.from_dict(table, orient="index").fillna("")
    if order is not None:
        out = out.reindex([o for o in order if o in out.index])
    out.index.name = "augmentation" if reference == "none" else "variant"
    return out


def _signed(values) -> str:
    if not len(values):
        return ""
    mean = values.mean()
    if len(values) == 1:
        return f"{mean:+.1f}"
    return f"{mean:+.1f} ± {values.std(ddof=1):.1f}"


def long_metrics(df, x: str, metrics=("train_acc", "val_acc", "test_acc")):
    """Results in long format (one row per run and metric) for grouped bars; values in %."""
    import pandas as pd

    names = {"train_acc": "train", "val_acc": "validation", "test_acc": "test"}
    parts = [pd.DataFrame({x: df[x], "dataset": df["dataset"], "seed": df["seed"],
                           "split": names.get(m, m), "accuracy %": df[m] * 100})
             for m in metrics]
    return pd.concat(parts, ignore_index=True).dropna(subset=["accuracy %"])


def confused_pairs(metrics: dict, top: int = 10):
    """The `top` most confused (true, predicted) pairs of a run's test metrics, as a frame."""
    import pandas as pd

    from .evaluate import most_confused_pairs

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


# -- stored reference outputs for nbval -----------------------------------------------------------


def _is_check(cell) -> bool:
    return cell.get("cell_type") == "code" and CHECK_MARK in "".join(cell.get("source", ""))


def store_check_outputs(paths, executed_dir=None, timeout: int = 900) -> None:
    """Store in each notebook the smoke-profile outputs of its check cells; strip all others.

    The outputs come from executed copies of the same notebooks in `executed_dir` (e.g. the
    `outputs/notebooks/` of `./run_all.sh --profile smoke`, cells matched by id), else from
    executing each notebook now: smoke profile, runs in a temporary folder, kernel started in
    the notebook's folder as under nbval. Other cells lose outputs and execution counts; a
    check cell's count is its position among the code cells (nbval needs one), so the
    committed file is small and stable.
    """
    import tempfile

    import nbformat

    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            path = Path(path)
            nb = nbformat.read(path, as_version=4)
            if executed_dir is not None:
                done = nbformat.read(Path(executed_dir) / path.name, as_version=4)
                if done.metadata.get("papermill", {}).get("parameters", {}).get(
                        "PROFILE", "smoke") != "smoke":
                    raise ValueError(f"{executed_dir}/{path.name}: not a smoke-profile execution")
            else:
                done = _execute_smoke(path, Path(tmp), timeout)
            by_id = {c.get("id"): c for c in done.cells}
            by_source = {c.source: c for c in done.cells}
            code = [c for c in nb.cells if c.cell_type == "code"]
            for number, cell in enumerate(code, 1):
                cell.execution_count = None
                cell.outputs = []
                if _is_check(cell):
                    # nbval skips a reference cell without an execution count.
                    cell.execution_count = number
                    twin = by_id.get(cell.get("id")) or by_source.get(cell.source)
                    if twin is None or twin.source != cell.source:
                        raise ValueError(f"{path}: no executed twin of check cell {cell.source!r}")
                    cell.outputs = [o for o in twin.outputs if o.get("name") == "stdout"]
            nbformat.write(nb, path)
            print(f"stored check outputs: {path}", flush=True)


def _execute_smoke(path: Path, scratch: Path, timeout: int):
    import nbformat
    from nbclient import NotebookClient

    env = {"CNNLIB_PROFILE": "smoke", cruns.OUTPUTS_ENV: str(scratch / "outputs"),
           cruns.RUNS_ENV: str(scratch / "runs"), cruns.MODELS_ENV: str(scratch / "models")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
        return nb
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m cnnlib.report")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("store-check-outputs",
                       help="execute notebooks (smoke profile, scratch folders) and store the "
                            f"outputs of their '{CHECK_MARK}' cells; strip all others")
    s.add_argument("notebooks", nargs="+")
    s.add_argument("--from", dest="executed", default=None,
                   help="folder of smoke-profile executions of these notebooks (by name) to take "
                        "the outputs from, instead of executing them now")
    s.add_argument("--timeout", type=int, default=900)
    args = p.parse_args(argv)
    store_check_outputs(args.notebooks, args.executed, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
