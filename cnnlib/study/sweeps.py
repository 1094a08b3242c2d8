"""What a study and a sweep are: a notebook's runs, figures and findings (`Study`), and the
labels it compares with one of them (`Sweep`). `definitions.STUDIES` holds the study's ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnnlib.training.config import RunConfig


@dataclass(frozen=True)
class Sweep:
    """Labels of one study compared with one of them, the reference.

    `labels`: in the figures' order, generated from the variants the runs are made of;
    `rank`: state which label is highest, and its margin; `finding`: the `findings`
    function that states the sweep; `repeats`: see below.
    """

    name: str
    labels: tuple[str, ...]
    reference: str
    rank: bool = False
    finding: str = "sweep_lines"
    # The sweep this one repeats at a longer budget: its labels are that sweep's plus `LONG`.
    repeats: str = ""
    # The question it answers, a README heading (default: its study's question).
    question: str = ""
    # The datasets it runs on (default: all of its study's); elsewhere it is not missing.
    datasets: tuple[str, ...] = ()
    # A grid: one seed per label, read to choose a setting (on validation), never compared
    # label against label; its finding states the choice.
    grid: bool = False

    def __post_init__(self):
        if self.reference not in self.labels:
            raise ValueError(f"sweep {self.name}: reference {self.reference!r} is not one of "
                             f"its labels {self.labels}")

    @property
    def variants(self) -> tuple[str, ...]:
        """The labels compared with the reference."""
        return tuple(x for x in self.labels if x != self.reference)

    def runs_on(self, dataset: str) -> bool:
        return not self.datasets or dataset in self.datasets


@dataclass(frozen=True)
class Study:
    """One notebook: its runs per profile (`runs(profile, speeds store)`), its sweeps, the
    figures it writes (file names in the outputs folder or its figures/; the first is its main
    figure, the landing page's thumbnail), the names of the `findings` functions it states,
    and its title and question in a line each (the notebook states the question in full)."""

    name: str
    runs: Callable[[str, Any], list[tuple[str, RunConfig]]]
    sweeps: tuple[Sweep, ...] = ()
    figures: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    title: str = ""
    question: str = ""
    # What it measures besides training, kept in the run cache: (what, recorded, total, the
    # runs whose configs wait for measurements not recorded yet) on a profile.
    measures: Callable[[str], tuple[str, int, int, list[RunConfig]]] | None = None

    def sweep(self, name: str) -> Sweep:
        return next(s for s in self.sweeps if s.name == name)

    def check(self, runs: list[tuple[str, RunConfig]]) -> None:
        """Raise unless the runs' labels are exactly the sweeps' labels and every dataset
        with runs of a sweep has its reference (a label renamed on one side only)."""
        if not self.sweeps:
            return
        made = {label for label, _ in runs}
        declared = {x for s in self.sweeps for x in s.labels}
        problems = []
        if made != declared:
            problems.append(f"labels run but in no sweep: {sorted(made - declared)}; "
                            f"labels of a sweep never run: {sorted(declared - made)}")
        for dataset in dict.fromkeys(c.dataset for _, c in runs):
            here = {label for label, c in runs if c.dataset == dataset}
            problems += [f"{s.name} on {dataset}: no {s.reference!r} run" for s in self.sweeps
                         if here & set(s.labels) and s.reference not in here]
            problems += [f"{s.name} runs on {dataset}, not one of its datasets {s.datasets}"
                         for s in self.sweeps if here & set(s.labels) and not s.runs_on(dataset)]
        if problems:
            raise ValueError(f"{self.name}: " + "; ".join(problems))
