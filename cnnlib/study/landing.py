"""The landing page, `<outputs>/reports/index.html`: one card per report, the Key Results.

A card holds the report's title and question (`sweeps.Study`), a short answer computed
from the results (one sentence per dataset), the regime it holds under, how sure it is, a
thumbnail of the report's main figure (the first of `Study.figures`) and a link to the
report. The page is one self-contained file (styles inline, thumbnails as data URIs, no
script), laid out for a phone as well as a desktop. It is rebuilt from the results tables,
so it changes only when they do.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cnnlib import _fileio as fileio
from cnnlib.study import locations, robustness
from cnnlib.study.definitions import STUDIES
from cnnlib.study.findings import (
    BEST_TARGETS,
    compression_answer,
    confusion_sentence,
    interactions,
    regime,
)
from cnnlib.study.stats import CONFIDENCE, NAMES, compare, n_seeds, rank, signed
from cnnlib.study.sweeps import Study
from cnnlib.viz._figure import pretty

INDEX = "index.html"
THUMB_WIDTH = 480  # px: sharp on a phone's screen, a few tens of kB per card


@dataclass
class Card:
    study: Study
    answer: list[str]  # one sentence per dataset and comparison (or per model)
    condition: str
    certainty: str
    thumbnail: str = ""  # a data URI, "" when the figure is missing


# -- the cards' sentences ---------------------------------------------------------------------------


def _seeds(part) -> str:
    n = part.groupby("label")["seed"].nunique()
    return n_seeds(int(n.min())) if n.min() == n.max() else f"{n.min()} to {n.max()} seeds"


def _interval(d) -> str:
    return f"{signed(d.mean)} pp ({CONFIDENCE:.0%} CI {d.interval_text()})" if d.n > 1 else \
        f"{signed(d.mean)} pp (one seed, no interval)"


def _pairing(deltas) -> str:
    return ("each change paired by seed with its reference; it counts when a paired t-test "
            "finds it after Holm's correction for the other comparisons of its sweep and dataset "
            f"({1 - CONFIDENCE:.0%} family-wise error); {len(deltas)} comparisons in all")


def baseline_card(rows) -> tuple[list[str], str, str]:
    answer, conditions, deltas = [], [], []
    for dataset, part in rows.groupby("dataset", sort=False):
        if not {"best", "reference"} <= set(part["label"]):
            continue
        d = compare(part, "reference", ["best"])[0]
        deltas.append(d)
        acc = part.groupby("label")["test_acc"].mean() * 100
        target = BEST_TARGETS.get(dataset)
        against = "" if target is None else (
            f"; the target of {target * 100:g}% is "
            + ("met" if acc["best"] >= target * 100
               else f"missed by {target * 100 - acc['best']:.2f} pp"))
        answer.append(f"{pretty(dataset)}: the best model reaches {acc['best']:.2f}% test "
                      f"accuracy, the reference network {acc['reference']:.1f}%: "
                      f"{_interval(d)}{against}.")
        conditions.append(f"{pretty(dataset)}: best model {regime(part, ['best'])}; reference "
                          f"{regime(part, ['reference'])}")
    return answer, ". ".join(conditions), f"{_seeds(rows)} per model; " + _pairing(deltas)


def _counted(deltas) -> str:
    """'1 improves (most: x, +2.5 pp), 4 hurt (most: y, -6.2 pp), 2 inconclusive'."""
    up = [d for d in deltas if d.detectable and d.mean > 0]
    down = [d for d in deltas if d.detectable and d.mean < 0]
    parts = []
    for group, verb, pick in ((up, "improve", max), (down, "hurt", min)):
        text = f"{len(group)} {verb}{'s' if len(group) == 1 else ''}"
        if group:
            d = pick(group, key=lambda d: d.mean)
            text += f" ({'most: ' if len(group) > 1 else ''}{d.label}, {signed(d.mean)} pp)"
        parts.append(text)
    return ", ".join(parts) + f", {len(deltas) - len(up) - len(down)} inconclusive"


def sweep_card(rows, study: Study) -> tuple[list[str], str, str]:
    """A sentence per dataset and sweep: how many changes improve, hurt or stay inconclusive
    against the sweep's reference, and the top of a ranked sweep with its paired margin (a grid,
    one run per label, is read by its report)."""
    answer, conditions, every = [], [], []
    for dataset, part in rows.groupby("dataset", sort=False):
        clauses, regimes = [], {}
        for sweep in (s for s in study.sweeps if not s.grid):
            members = [x for x in sweep.labels if x in set(part["label"])]
            if sweep.reference not in members or len(members) < 2:
                continue
            regimes.setdefault(regime(part, members), []).append(sweep.name)
            deltas = compare(part, sweep.reference, members)
            every += deltas
            text = (f"{pretty(dataset)}, test accuracy by {sweep.name}: against "
                    f"{sweep.reference}, {_counted(deltas)}")
            if sweep.rank:
                r = rank(part, members)[0]
                text += f"; highest {r.top} ({r.means[r.top] * 100:.1f}%)"
                if r.margin is not None:
                    sure = "a detectable lead" if r.margin.detectable else "inconclusive"
                    text += f", {_interval(r.margin)} ahead of {r.margin.reference}: {sure}"
            if sweep.repeats:
                found = interactions(part, sweep)
                flips = sum(a.detectable and b.detectable and (a.mean > 0) != (b.mean > 0)
                            for a, b, _ in found)
                moved = sum(c.detectable for _, _, c in found)
                text += (f"; between budgets, {moved} of {len(found)} paired differences change "
                         f"detectably and {flips} flip sign" if found else "")
            clauses.append(text)
        if clauses:
            answer += [c + "." for c in clauses]
            conditions.append(f"{pretty(dataset)}: " + "; ".join(
                (f"{', '.join(names)}: " if len(regimes) > 1 else "") + text
                for text, names in regimes.items()))
    return answer, ". ".join(conditions), f"{_seeds(rows)} per variant; " + _pairing(every)


def robustness_card(rows) -> tuple[list[str], str, str]:
    """Per dataset, the augmentation sweep counted by corruption accuracy and by calibration
    error against its reference (assessed runs of notebook 02 only)."""
    aug = rows[(rows["study"] == "02_augmentation_ablation") & rows["corruption_acc"].notna()]
    sweep, answer, conditions, every = robustness.AUGMENTATION, [], [], []
    for dataset, part in aug.groupby("dataset", sort=False):
        members = [x for x in sweep.labels if x in set(part["label"])]
        if sweep.reference not in members or len(members) < 2:
            continue
        for metric in robustness.METRICS:
            deltas = compare(part, sweep.reference, members, metric)
            every += deltas
            answer.append(f"{pretty(dataset)}, {NAMES[metric][0]} by augmentation: against "
                          f"{sweep.reference}, {_counted(deltas)}.")
        conditions.append(f"{pretty(dataset)}: {regime(part, members)}; corruptions on "
                          f"{int(part['assessed_images'].iloc[0]):,} test images without "
                          "test-time augmentation")
    return answer, ". ".join(conditions), (f"{_seeds(aug)} per variant; " + _pairing(every)
                                           if every else "")


def _plain(markdown: str) -> str:
    """A findings bullet as plain text: no list mark, bold or code marks."""
    return markdown.removeprefix("- ").replace("**", "").replace("`", "")


def _models(base, labels, datasets=None) -> str:
    """The regime of notebook 01's models (`base`: its rows) that notebooks 04 and 05 reuse."""
    parts = [f"{pretty(dataset)} {label}: {regime(part, [label])}"
             for dataset, part in base.groupby("dataset", sort=False)
             if datasets is None or dataset in datasets
             for label in labels if label in set(part["label"])]
    return "; ".join(parts) or "the models of the first report"


def confusion_card(pairs: dict, base) -> tuple[list[str], str, str]:
    """The same sentences as the reports and the README (`findings.confusion_sentence`)."""
    answer = [_plain(confusion_sentence(table, dataset)) for dataset, table in pairs.items()]
    return (answer, _models(base, ["best"], pairs) + "; on the whole test set",
            "counts of one model's test predictions (one seed); no interval")


def compression_card(table, base) -> tuple[list[str], str, str]:
    # The report's own answer (findings.compression_answer), so both say the same.
    answer = [_plain(line) for line in compression_answer(table).splitlines()]
    rounds = (f"the median of {int(table['timing_rounds'].max())} timing rounds"
              if "timing_rounds" in table else "one timing round each")
    return (answer, _models(base, ["reference", "best"], ["cifar10"]) + "; timed on "
            + "; ".join(table["hardware"].dropna().unique()) + ", test accuracy without "
            "test-time augmentation",
            f"{rounds} on one machine; a speed-up counts only over the rounds' spread; "
            "accuracy changes of one model each")


# -- the page -----------------------------------------------------------------------------------------


def _thumbnail(out: Path, name: str) -> str:
    """The figure as a JPEG data URI at `THUMB_WIDTH` px (a tenth of a PNG's bytes for a
    chart this small, which a phone loads with the page), or "" when it is missing."""
    from PIL import Image  # a dependency of matplotlib, imported only here

    for path in (out / name, out / "figures" / name):
        if path.is_file():
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.width > THUMB_WIDTH:
                    im = im.resize((THUMB_WIDTH, round(im.height * THUMB_WIDTH / im.width)),
                                   Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=85, optimize=True)
            return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return ""


def _read_csv(path: Path):
    return pd.read_csv(path) if path.is_file() else None


def cards(out, rows, confused: dict | None = None) -> list[Card]:
    """A card per study whose rows (or measurements) exist, in the notebooks' order."""
    out = Path(out)
    made = []
    for name, study in STUDIES.items():
        part = rows[rows["study"] == name] if len(rows) else rows
        base = rows[rows["study"] == "01_baseline"] if len(rows) else rows  # 04, 05 reuse them
        if name == "04_interpretability":
            content = confusion_card(confused or {}, base)
        elif name == "05_compression":
            table = _read_csv(out / "compression.csv")
            content = compression_card(table, base) if table is not None else ([], "", "")
        elif name == "07_robustness":
            content = (robustness_card(rows) if len(rows) and "corruption_acc" in rows
                       else ([], "", ""))
        elif not len(part):
            continue
        elif name == "01_baseline":
            content = baseline_card(part)
        else:
            content = sweep_card(part, study)
        if content[0]:
            made.append(Card(study, *content, thumbnail=_thumbnail(out, study.figures[0])
                             if study.figures else ""))
    return made


def _finished_dates(rows) -> tuple[str, str]:
    """The first and last day a run of `rows` finished (from the run cache), "" if unknown."""
    days = []
    for key in rows.get("run_key", pd.Series(dtype=str)).dropna().unique():
        try:
            summary = json.loads((locations.runs_root() / key / "result.json").read_text())
            days.append(datetime.fromtimestamp(summary["finished"], timezone.utc).date())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return (str(min(days)), str(max(days))) if days else ("", "")


_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
background:#f5f5f7}
header,main,footer{max-width:1140px;margin:auto;padding:12px 16px}
h1{font-size:1.6rem;margin:8px 0}
h2{font-size:1.25rem;margin:24px 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:16px}
.card{background:#fff;border-radius:12px;padding:16px;box-shadow:0 1px 3px #0002;
display:flex;flex-direction:column}
.thumb{display:block;height:190px;background:#fff;border:1px solid #e3e3e3;border-radius:6px}
.thumb img{width:100%;height:100%;object-fit:contain}
.card h3{font-size:1.15rem;margin:12px 0 4px}
.card p,.card li{margin:4px 0;font-size:.95rem}
.card ul{margin:4px 0 8px;padding-left:20px}
.meta{color:#444;font-size:.85rem!important}
.more{margin-top:auto;padding-top:8px;font-weight:600}
.label{font-weight:600}
a{color:#0b57d0}
.table{overflow-x:auto;background:#fff;border-radius:12px;padding:8px;box-shadow:0 1px 3px #0002}
table{border-collapse:collapse;font-size:.9rem;width:100%}
th,td{padding:6px 8px;border-bottom:1px solid #e5e5e5;text-align:left;white-space:nowrap}
th{background:#fafafa}
footer{color:#555;font-size:.9rem}
"""

# The Key Results columns a reader needs on this page (the README's table has them all).
_TABLE_COLUMNS = ("dataset", "model", "test acc %", "test acc % without TTA", "seeds", "epochs",
                  "train images", "augmentation", "test-time augmentation", "wall min / run")


def _card_html(card: Card) -> str:
    e = html.escape
    link = f"{card.study.name}.html"
    title = f"{card.study.name[:2]} · {card.study.title}"
    image = (f'<a class="thumb" href="{link}"><img src="{card.thumbnail}" alt="'
             f'{e(card.study.title)}: the report\'s main figure"></a>' if card.thumbnail else "")
    answer = "".join(f"<li>{e(x)}</li>" for x in card.answer)
    return (f'<article class="card">{image}<h3><a href="{link}">{e(title)}</a></h3>'
            f'<p><span class="label">Question.</span> {e(card.study.question)}</p>'
            f'<p class="label">Answer.</p><ul>{answer}</ul>'
            f'<p class="meta"><span class="label">Holds for:</span> {e(card.condition)}.</p>'
            f'<p class="meta"><span class="label">How sure:</span> {e(card.certainty)}.</p>'
            f'<a class="more" href="{link}">Read the report</a></article>')


def page(out, rows, key_results, confused: dict | None = None) -> str:
    """The landing page's HTML: `rows`, every study's rows (`table.read_studies`);
    `key_results`, the Key Results table (`readme.key_results_frame`); `confused`, the best
    models' confused pairs per dataset (`readme.read_confused_pairs`)."""
    made = cards(out, rows, confused)
    every = rows.drop_duplicates("run_key") if len(rows) else rows
    machines = "; ".join(str(h) for h in every.get("hardware", pd.Series(dtype=str)).dropna()
                         .unique() if h) or "not recorded"
    first, last = _finished_dates(every)
    when = (f"{first}" if first == last else f"{first} to {last}") if first else "not recorded"
    table = key_results[[c for c in _TABLE_COLUMNS if c in key_results]] if len(key_results) \
        else key_results
    table_html = (table.to_html(index=False, border=0, escape=True) if len(table)
                  else "<p>No results yet.</p>")
    profiles = ", ".join(sorted({str(p) for p in every.get("profile", []) if p}))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>CNNs on CIFAR-10 and CIFAR-100: the reports</title><style>{_STYLE}</style>"
        "</head><body><header><h1>CNNs on CIFAR-10 and CIFAR-100: the reports</h1>"
        "<p>Each card is one report: its question, the answer computed from its runs, the "
        "conditions the answer holds under and how sure it is. The full report behind each "
        "card has the method, every table and figure.</p></header><main>"
        f'<h2>Key results</h2><div class="table">{table_html}</div>'
        f'<h2>The reports</h2><section class="cards">{"".join(_card_html(c) for c in made)}'
        "</section></main>"
        f"<footer><p>{len(every)} training runs (profile {html.escape(profiles or 'none')}) "
        f"trained on {html.escape(machines)}, finished {when}.</p></footer></body></html>\n")


def write_index(out, rows, key_results, confused: dict | None = None) -> Path:
    """Write `<out>/reports/index.html` (atomically; arguments as `page`), return its path."""
    path = Path(out) / "reports" / INDEX
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_text(page(out, rows, key_results, confused), path)
    return path
