"""The plan: per notebook, the runs it lists, those already recorded and those to train, and
the time they are expected to take here (`python -m cnnlib.study plan`, the pipeline's opening
lines)."""

from __future__ import annotations

from cnnlib.study import cache
from cnnlib.study.budget import Work, estimate_seconds, notebook_seconds, work_lines
from cnnlib.study.definitions import STUDIES
from cnnlib.study.locations import notebook_seconds_path, speeds_path
from cnnlib.training.config import RunConfig
from cnnlib.training.device import hardware, resolve_precision


def plan(profile: str, store=None) -> dict[str, list[tuple[str, RunConfig]]]:
    """Per notebook: its runs not already listed by an earlier notebook (and how many it lists)."""
    seen: set[str] = set()
    out = {}
    for name, study in STUDIES.items():
        configs = study.runs(profile, store)
        new = []
        for label, config in configs:
            if config.key() not in seen:
                seen.add(config.key())
                new.append((label, config))
        out[name] = (len(configs), new)
    return out


def plan_work(profile: str, notebooks=None, remeasure: bool = False) -> list[Work]:
    """Per notebook to execute (names, default all), what it will do here (`remeasure`: take
    its measurements again)."""
    speeds = speeds_path()
    runs = {name: {c.key(): c for _, c in STUDIES[name].runs(profile, speeds)}
            for name in (notebooks or STUDIES)}
    recorded = cache.recorded_keys([c for configs in runs.values() for c in configs.values()])
    seen, out = set(), []
    for name, configs in runs.items():
        new = [c for k, c in configs.items() if k not in recorded | seen]
        own = [c for k, c in configs.items() if k not in seen]  # those it lists first
        seen |= set(configs)
        what, done, total, waiting = (STUDIES[name].measures or (lambda p: ("", 0, 0, [])))(profile)
        elsewhere = cache.recorded_elsewhere(new)
        later = [c for c in new if c.key() in {w.key() for w in waiting}]
        new = [c for c in new if c not in later]
        out.append(Work(name, frozenset(configs), frozenset(set(configs) & recorded), len(new),
                        sum(estimate_seconds(c, speeds) for c in new),
                        notebook_seconds(profile, name, notebook_seconds_path()),
                        what, total, 0 if remeasure else done, len(later),
                        sum(estimate_seconds(c, speeds) for c in later),
                        sum(estimate_seconds(c, speeds) for c in own),
                        {p: len(keys) for p, keys in elsewhere.items()}))
    return out


def plan_lines(profile: str, notebooks=None, remeasure: bool = False,
               work: list[Work] | None = None) -> list[str]:
    """Per notebook to execute, its runs recorded or to train and the time expected here (as
    `budget.Work` estimates it), then the total."""
    config = RunConfig()
    precision = resolve_precision(config.precision, config.resolved_device())
    return work_lines(plan_work(profile, notebooks, remeasure) if work is None else work,
                      f"{hardware(str(config.resolved_device()))} ({precision})", precision)
