"""The study's main loop: execute the notebooks, export their reports, rebuild the results.

`./run_all.sh` sets up `.venv`, then hands its flags to `python -m cnnlib.study.pipeline`:

    --profile P     auto (default: $CNNLIB_PROFILE, else full on CUDA, cpu otherwise), smoke, cpu, full
    --only NB       one notebook: 01, 01_baseline or notebooks/01_baseline.ipynb
    --force         execute notebooks again even when already done
    --nproc N       train each run on N local processes with torchrun (default $CNNLIB_NPROC or 1)
    --jobs N        train N runs at once (default $CNNLIB_JOBS or 1; cnnlib.study.executors)
    --executor E    local (N worker processes here) or ray (default $CNNLIB_EXECUTOR or local)
    --remeasure     take the range tests and compression measurements again, and execute the
                    notebooks that take them (default $CNNLIB_REMEASURE: 1 yes, 0 no)
    --verbose       log papermill's per-cell lines, every cell's output and the kernel's warnings

Each notebook is executed with papermill (parameter PROFILE, kernel python3, cwd the project
root) into <outputs>/notebooks/, exported to <outputs>/reports/<name>.html without code and
without the outputs of cells tagged remove_output, and marked done. A notebook is skipped when
its marker holds the same profile and the same hashes of the notebook and of cnnlib's sources:
the training runs come from the run cache anyway, so a killed pipeline started again loses at
most the epoch in progress. Bad flags stop with one line and exit status 2, a failed notebook
with exit status 1.

It tells what it will do before it starts: per notebook, its runs recorded in the run cache and
those to train, with the time expected here (training from speeds measured here, the rest from
what the notebook took here last time, kept in the run cache's notebook_seconds.json); while a
notebook runs, a line after each minute without one says how long is left; the last line
separates this run's time from the training time the study's recorded runs cost.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import nbformat
import papermill
from bs4 import BeautifulSoup  # nbconvert's own HTML parser
from nbconvert import HTMLExporter
from nbconvert.preprocessors import CoalesceStreamsPreprocessor
from traitlets.config import Config

from cnnlib import _fileio as fileio
from cnnlib.data.duplicates import obtain_lists
from cnnlib.data.obtain import DATASETS, obtain
from cnnlib.flags import Parser
from cnnlib.study import cache, definitions, executors, locations, measurements, plan
from cnnlib.study.budget import Work, duration, record_notebook_seconds
from cnnlib.study.readme import collect_results, training_time

PREFIX = "[run_all]"
PROFILE_CHOICES = ("auto", *locations.PROFILES)
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
KERNEL = "python3"
REMOVE_OUTPUT_TAG = "remove_output"  # training logs: kept in the executed notebook, not the report
# Checks for developers (nbval's compared outputs, row counts): in the notebook, not the report.
REMOVE_CELL_TAG = "remove_cell"
NPROC_ENV = "CNNLIB_NPROC"  # read by the run cache: >1 trains each run through torchrun
HEARTBEAT_SECONDS = 60.0  # a notebook quiet this long gets a line: how long so far, how long left
QUIET_KERNEL = ["--IPKernelApp.log_level=CRITICAL"]  # its transport warnings are not the study's


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, checked: a bad one exits with status 2 and one line naming the allowed values."""
    p = Parser(prog="run_all.sh", error_prefix="run_all:", allow_abbrev=False,
               description="Execute the notebooks, export their HTML reports, rebuild the "
                           "results tables (./run_all.sh sets up .venv first).")
    p.add_argument("--profile",
                   help=f"one of {', '.join(PROFILE_CHOICES)} (default $CNNLIB_PROFILE or auto)")
    p.add_argument("--only", metavar="NOTEBOOK",
                   help="one notebook: 01, 01_baseline or notebooks/01_baseline.ipynb")
    p.add_argument("--force", action="store_true", help="execute notebooks again even when done")
    p.add_argument("--nproc",
                   help="processes per training run (torchrun; default $CNNLIB_NPROC or 1)")
    p.add_argument("--jobs", help="training runs at once (default $CNNLIB_JOBS or 1)")
    p.add_argument("--executor", help="local or ray (default $CNNLIB_EXECUTOR or local)")
    p.add_argument("--remeasure", action="store_true",
                   help="take the range tests and compression measurements again and execute "
                        "the notebooks that take them (default $CNNLIB_REMEASURE: 1 yes, 0 no)")
    p.add_argument("--verbose", action="store_true",
                   help="log papermill's per-cell lines, every cell's output and the kernel's "
                        "warnings (default: what the cells print, and their errors)")
    args = p.parse_args(argv)

    def given(flag: str, env: str, default: str) -> tuple[str, str]:
        """The flag's value, else its variable's, with the name to blame when it is bad."""
        value = getattr(args, flag.removeprefix("--"))
        if value is not None:
            return value, flag
        return (os.environ[env], env) if os.environ.get(env) else (default, flag)

    # The variables the notebooks' kernels read are checked here too, named as themselves:
    # a bad one stops the pipeline before any work, not in the first notebook.
    profile, name = given("--profile", locations.PROFILE_ENV, "auto")
    if profile not in PROFILE_CHOICES:
        p.error(f"{name} '{profile}' is not allowed; allowed: {', '.join(PROFILE_CHOICES)}")
    args.profile = profile
    try:
        (nproc, nproc_name), (jobs, jobs_name) = (given("--nproc", NPROC_ENV, "1"),
                                                  given("--jobs", executors.JOBS_ENV, "1"))
        args.nproc = executors.count(nproc, nproc_name)
        args.jobs = executors.count(jobs, jobs_name)
        args.executor = executors.executor_name(*given("--executor", executors.EXECUTOR_ENV,
                                                       "local"))
        executors.exclusive(args.jobs, args.nproc, jobs_name, nproc_name)
        if os.environ.get(executors.THREADS_ENV):  # no flag: read by the kernels' executors
            executors.count(os.environ[executors.THREADS_ENV], executors.THREADS_ENV)
        args.remeasure = measurements.remeasure_asked() or args.remeasure  # a bad variable: refused
    except ValueError as e:
        p.error(str(e))
    return args


def notebooks_in(folder: Path) -> list[Path]:
    """The study's notebooks (NN_name.ipynb), in order."""
    return sorted(Path(folder).glob(NOTEBOOK_GLOB))


def select(notebooks: list[Path], only: str | None) -> list[Path]:
    """All notebooks, or the one `only` names (01, 01_baseline, notebooks/01_baseline.ipynb)."""
    if not only:
        return notebooks
    want = Path(only).name.removesuffix(".ipynb")
    hits = [nb for nb in notebooks if nb.stem == want or nb.stem.startswith(want + "_")]
    if len(hits) != 1:
        names = ", ".join(nb.stem for nb in notebooks)
        raise ValueError(f"--only '{only}' matches {len(hits)} notebooks; choose one of: {names}")
    return hits


# ---------------------------------------------------------------------------
# Done-markers


def _sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def sources_hash() -> str:
    """A hash of every cnnlib source file: a change anywhere in the package reruns the notebooks."""
    package = Path(__file__).resolve().parents[1]
    return _sha16(b"".join(p.read_bytes() for p in sorted(package.rglob("*.py"))))


def stamp(profile: str, notebook: Path, sources: str) -> str:
    return f"profile={profile} notebook={_sha16(Path(notebook).read_bytes())} cnnlib={sources}"


def is_done(marker: Path, report: Path, expected: str) -> bool:
    """Done: the report exists and the marker holds the expected stamp."""
    return marker.is_file() and report.is_file() and marker.read_text().strip() == expected


# ---------------------------------------------------------------------------
# One notebook


def execute(notebook: Path, executed: Path, profile: str, verbose: bool = False,
            watch: _Watch | None = None) -> None:
    """Run `notebook` with papermill into `executed`, what its cells print passed on as it comes
    (and seen by `watch`): without `verbose` nothing else (a failed cell raises with its
    traceback); with it, papermill's per-cell lines, every output and the kernel's warnings.
    Papermill writes its notebook again after each cell, so it writes a temporary file in the
    same folder; once it is whole (also when a cell failed: the traceback is in it), it is
    written into `executed` atomically. Stopped midway through a write, the previous
    `executed` is kept.
    """
    executed = Path(executed)
    watch = watch or _Watch()
    partial = executed.with_name(f".{executed.stem}.partial.ipynb")
    partial.unlink(missing_ok=True)  # papermill opens it following links: none may be there
    log = logging.getLogger("papermill")
    handler = logging.StreamHandler(sys.stderr)  # papermill's lines, whoever configured logging
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(watch.seen)
    before = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.ERROR)  # its warnings too: --verbose
    log.propagate = False
    quiet = {} if verbose else dict(stdout_file=_Stream(sys.stdout, watch),
                                    stderr_file=_Stream(sys.stderr, watch),
                                    extra_arguments=QUIET_KERNEL)
    try:
        papermill.execute_notebook(str(notebook), str(partial), parameters={"PROFILE": profile},
                                   kernel_name=KERNEL, cwd=str(locations.project_root()),
                                   log_output=verbose, progress_bar=False, **quiet)
    finally:  # a failed cell too: papermill writes the whole notebook before it raises
        log.removeHandler(handler)
        log.level, log.propagate = before
        nb = _whole_notebook(partial)
        if nb is not None:
            _keep(nb, executed)
        partial.unlink(missing_ok=True)


class _Watch:
    """The log while one notebook runs: each line going by is seen, and after
    HEARTBEAT_SECONDS without one (a long cell: a range test, a timing, an epoch) a line
    says how long the notebook has run and how long it should still take. Without a name it
    only watches."""

    def __init__(self, name: str | None = None, expected: float | None = None,
                 unknown: str = "its time here is not yet measured"):
        self.name, self.expected, self.unknown = name, expected, unknown
        self.start = self.last = time.monotonic()
        self.lock = threading.Lock()
        self.at_line_start = True  # a progress bar (\r, no newline) leaves it False
        self.out = sys.stdout
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True) if name else None

    def __enter__(self):
        if self.thread:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()

    def wrote(self, text: str) -> None:  # with self.lock held
        self.last = time.monotonic() if "\n" in text else self.last
        self.at_line_start = text.endswith("\n") if text else self.at_line_start

    def seen(self, record) -> bool:  # a logging filter: papermill's lines (verbose)
        self.last = time.monotonic()
        return True

    def _beat(self) -> None:
        while not self.stop.wait(min(5.0, HEARTBEAT_SECONDS / 4)):
            now = time.monotonic()
            with self.lock:
                if now - self.last >= HEARTBEAT_SECONDS:
                    self.out.write(("" if self.at_line_start else "\n") + self.line(now) + "\n")
                    self.out.flush()
                    self.last, self.at_line_start = now, True

    def line(self, now: float) -> str:
        ran, expected = now - self.start, self.expected
        left = (self.unknown if expected is None else f"longer than the {duration(expected)} "
                "expected" if ran >= expected else
                f"about {duration(expected - ran)} left of the {duration(expected)} expected")
        return f"{PREFIX} {self.name}: running for {duration(ran)}; {left}"


class _Stream:
    """What a cell prints, passed on to `stream` as it comes, for the watch to see."""

    def __init__(self, stream, watch: _Watch):
        self.stream, self.watch = stream, watch

    def write(self, text: str) -> None:
        with self.watch.lock:
            self.stream.write(text)
            self.stream.flush()
            self.watch.wrote(text)

    def flush(self) -> None:
        self.stream.flush()


def _whole_notebook(path: Path):
    try:
        return nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - missing, half written or not a notebook: not whole
        return None


def _keep(nb, executed: Path) -> None:
    """Write the executed notebook atomically, naming itself (not the temporary file papermill
    wrote) as its output. What varies from one execution to the next with the same results
    is made one: a cell's printed chunks (split where the kernel happened to flush) are joined,
    the parameters cell gets a fixed id (papermill draws one): its report is rebuilt the same."""
    nb.metadata.get("papermill", {})["output_path"] = str(executed)
    CoalesceStreamsPreprocessor().preprocess(nb, {})
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell["id"] = "injected-parameters"
    fileio.write_text(nbformat.writes(nb), executed)


def export_html(executed: Path, report: Path) -> None:
    """The report: no code, no prompts, no outputs of cells tagged remove_output, no cells
    tagged remove_cell, figures embedded with their alt text, nothing fetched from the
    internet to read it."""
    c = Config()
    c.TemplateExporter.exclude_input = True
    c.TemplateExporter.exclude_input_prompt = True
    c.TemplateExporter.exclude_output_prompt = True
    c.TagRemovePreprocessor.remove_all_outputs_tags = {REMOVE_OUTPUT_TAG}
    c.TagRemovePreprocessor.remove_cell_tags = {REMOVE_CELL_TAG}
    nb = nbformat.read(executed, as_version=4)
    _images_with_alt_text(nb)
    resources = {"metadata": {"name": executed.stem}}  # the page title, as from_filename gives it
    body, _ = HTMLExporter(config=c).from_notebook_node(nb, resources=resources)
    fileio.write_text(_offline(body), report)  # atomic, UTF-8


def _images_with_alt_text(nb) -> None:
    """nbconvert's template drops a PNG output's alt text (metadata): give such outputs an
    <img> of their own, which the exporter prefers to the bare PNG."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            alt = out.get("metadata", {}).get("image/png", {}).get("alt")
            png = out.get("data", {}).get("image/png")
            if alt and png:
                out["data"]["text/html"] = (f'<img src="data:image/png;base64,{png.strip()}" '
                                            f'alt="{html.escape(alt)}">')


def _offline(body: str) -> str:
    """Drop the scripts the template loads from a CDN (require.js, MathJax, mermaid): the
    reports need none of them, and a reader may have no network."""
    soup = BeautifulSoup(body, "html.parser")
    for script in soup.find_all("script"):
        if ("//" in script.get("src", "") or "https://" in script.get_text()
                or script.get("type") == "text/x-mathjax-config"):
            script.decompose()
    return str(soup)


def pending(notebooks: list[Path], out: Path, profile: str, force: bool = False,
            remeasure: bool = False) -> list[Path]:
    """The notebooks to execute: not done yet for `profile` (all with `force`; with `remeasure`
    also those that take measurements besides training)."""
    sources = sources_hash()
    measuring = {name for name, study in definitions.STUDIES.items() if study.measures}
    return [nb for nb in notebooks if force or (remeasure and nb.stem in measuring)
            or not is_done(out / "notebooks" / f".{nb.stem}.done",
                           out / "reports" / f"{nb.stem}.html", stamp(profile, nb, sources))]


def run_notebooks(notebooks: list[Path], out: Path, profile: str, force: bool = False,
                  verbose: bool = False, remeasure: bool = False,
                  work: dict[str, Work] | None = None) -> int:
    """Execute and export each notebook not done yet; 0, or 1 at the first failure.
    `work`: what the plan expects of each (its time, for the progress lines)."""
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    (out / "reports").mkdir(parents=True, exist_ok=True)
    sources = sources_hash()
    todo = pending(notebooks, out, profile, force, remeasure)
    n = len(notebooks)
    for i, nb in enumerate(notebooks, 1):
        name = nb.stem
        executed = out / "notebooks" / f"{name}.ipynb"
        report = out / "reports" / f"{name}.html"
        marker = out / "notebooks" / f".{name}.done"
        expected = stamp(profile, nb, sources)
        if nb not in todo:
            print(f"{PREFIX} ({i}/{n}) {name}: already done for profile {profile}, skipped "
                  "(--force runs it again)")
            continue
        marker.unlink(missing_ok=True)
        w = (work or {}).get(name)
        seconds, what = (w.seconds, w.expected()) if w else (None, "its time is not known")
        print(f"{PREFIX} ({i}/{n}) {name}: executing (profile {profile}), {what} -> {executed}")
        t0, wall0 = time.monotonic(), time.time()
        try:
            with _Watch(name, seconds, what) as watch:
                execute(nb, executed, profile, verbose, watch)
        except papermill.PapermillExecutionError as e:
            if e.ename == executors.RunsFailed.__name__:  # each failure was reported as it came
                print(f"{PREFIX} FAILED: notebook {name}: {e.evalue}", file=sys.stderr)
                return 1
            print(e, file=sys.stderr)  # the cell's traceback
            return _failed(name, profile, executed)
        except Exception:  # noqa: BLE001 - the kernel died or did not start: same advice
            traceback.print_exc()
            return _failed(name, profile, executed)
        report.unlink(missing_ok=True)
        try:
            export_html(executed, report)
        except Exception as e:  # noqa: BLE001 - any exporter error fails this notebook
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            print(f"{PREFIX} FAILED: HTML export of {name} ({executed})", file=sys.stderr)
            return 1
        fileio.write_text(expected + "\n", marker)  # last: a half-written report is never marked done
        done = cache.work_between(wall0, time.time())
        _remember(profile, name, time.monotonic() - t0, done, w)
        print(f"{PREFIX} ({i}/{n}) {name}: done in {duration(time.monotonic() - t0)} "
              f"({done.runs} runs trained, {done.measurements} measurements taken) -> {report}")
    return 0


def _remember(profile: str, name: str, wall: float, done: cache.Work, w: Work | None) -> None:
    """Keep what a study notebook took besides training (and its measurements) for the next plan."""
    if name not in definitions.STUDIES:
        return  # not one of the study's notebooks
    total = w.measures_total if w else 0
    measure = (done.measure_seconds * max(1.0, total / done.measurements)
               if done.measurements else None)  # as long as all of them would take
    try:
        record_notebook_seconds(profile, name, locations.notebook_seconds_path(),
                                wall - done.train_seconds - done.measure_seconds, measure)
    except (OSError, ValueError) as e:  # only the next plan's estimate is lost
        print(f"{PREFIX} {name}: its time is not kept ({fileio.first_line(e)})", file=sys.stderr)


def _failed(name: str, profile: str, executed: Path) -> int:
    print(f"{PREFIX} FAILED: notebook {name} (profile {profile}) stopped with an error.\n"
          f"{PREFIX} The traceback is above; the executed notebook is {executed}.\n"
          f"{PREFIX} Fix it and run ./run_all.sh again: finished runs come from the cache.",
          file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------
# The whole pipeline


def obtain_data() -> None:
    """Both datasets present before the first notebook (the notebooks validate them as they load)."""
    print("[setup] obtaining CIFAR-10 and CIFAR-100")
    for name in DATASETS:
        obtain(name)
    try:  # only the duplicate metrics need the lists: without them those stay empty
        obtain_lists()
    except OSError as e:
        print(f"[setup] ciFAIR lists not obtained, their metrics stay empty: {fileio.first_line(e)}")


def collect(out: Path):
    """results.csv and results.md; the README's table only for the default outputs folder."""
    default = locations.in_project("outputs")  # outputs_root() without $CNNLIB_OUTPUTS
    readme = locations.in_project("README.md") if out.resolve() == default.resolve() else None
    df = collect_results(out, readme)
    print(f"results: {len(df)} rows -> {out / 'results.csv'}, {out / 'results.md'}")
    return df


def main(argv=None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keeps our lines in order with papermill's log
    args = parse_args(argv)
    try:
        notebooks = select(notebooks_in(locations.in_project("notebooks")), args.only)
        profile = locations.resolve_profile(args.profile)
        for folder, what in ((locations.outputs_root(), "outputs"),
                             (locations.runs_root(), "run cache")):
            fileio.check_writable(folder, what)  # a read-only one: here, not in a notebook
        obtain_data()
    except (ValueError, OSError) as e:  # bad flags, missing data, an unusable folder
        print(f"run_all: {e}", file=sys.stderr)
        return 2
    os.environ[NPROC_ENV] = str(args.nproc)
    os.environ[executors.JOBS_ENV] = str(args.jobs)  # the kernels' executors.run_all reads them
    os.environ[executors.EXECUTOR_ENV] = args.executor
    os.environ[measurements.REMEASURE_ENV] = "1" if args.remeasure else "0"  # and the measurements
    os.environ[locations.PROFILE_ENV] = profile  # the notebooks' "auto" resolves to it as well
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # as papermill's command does

    out = locations.outputs_root()
    start, wall0 = time.monotonic(), time.time()
    todo = pending(notebooks, out, profile, args.force, args.remeasure)
    print(f"{PREFIX} profile {profile}; outputs in {out}/; {len(todo)} of {len(notebooks)} "
          "notebook(s) to execute" + ("" if len(todo) == len(notebooks) else
                                      f" ({'the others are' if todo else 'all are'} done: "
                                      "--force executes them again)")
          + f"; {args.jobs} run(s) at once ({args.executor})" + (":" if todo else ""))
    try:
        work = plan.plan_work(profile, [nb.stem for nb in todo], args.remeasure) if todo else []
    except ValueError as e:  # a budget the run cache's pinned machine never timed
        print(f"run_all: {e}", file=sys.stderr)
        return 2
    for line in plan.plan_lines(profile, work=work) if todo else ():
        print(f"{PREFIX}   {line}")
    try:
        status = run_notebooks(notebooks, out, profile, force=args.force, verbose=args.verbose,
                               remeasure=args.remeasure, work={w.name: w for w in work})
    except KeyboardInterrupt:
        print(f"\n{PREFIX} interrupted: run it again to resume (finished runs come from the cache)",
              file=sys.stderr)
        return 130
    if status:
        return status
    try:
        df = collect(out)
    except (ValueError, OSError) as e:  # e.g. a results file that cannot be read or written
        print(f"{PREFIX} FAILED: collecting the results in {out}: {e}", file=sys.stderr)
        return 1
    print(f"{PREFIX} reports in {out}/reports/, results in {out / 'results.csv'}")
    print(last_line(time.monotonic() - start, cache.work_between(wall0, time.time()), len(todo),
                    training_time(df)))
    return 0


def last_line(seconds: float, done: cache.Work, reports: int, study: str) -> str:
    """This run's own time and work, then what the study's recorded runs cost (they may have
    trained in earlier runs, on other machines)."""
    return (f"{PREFIX} this run: {duration(seconds)} ({done.runs} runs trained, "
            f"{done.measurements} measurements taken, {reports} reports rebuilt); {study}")


if __name__ == "__main__":
    sys.exit(main())
