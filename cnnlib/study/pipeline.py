"""The study's main loop: execute the notebooks, export their reports, rebuild the results.

`./run_all.sh` sets up `.venv`, then hands its flags to `python -m cnnlib.study.pipeline`:

    --profile P     auto (default: $CNNLIB_PROFILE, else full on CUDA, cpu otherwise), smoke, cpu, full
    --only NB       one notebook: 01, 01_baseline or notebooks/01_baseline.ipynb
    --force         execute notebooks again even when already done
    --nproc N       train each run on N local processes with torchrun (default $CNNLIB_NPROC or 1)
    --jobs N        train N runs at once (default $CNNLIB_JOBS or 1; cnnlib.study.executors)
    --executor E    local (N worker processes here) or ray (default $CNNLIB_EXECUTOR or local)

Each notebook is executed with papermill (parameter PROFILE, kernel python3, cwd the project
root) into <outputs>/notebooks/, exported to <outputs>/reports/<name>.html without code and
without the outputs of cells tagged remove_output, and marked done. A notebook is skipped when
its marker holds the same profile and the same hashes of the notebook and of cnnlib's sources:
the training runs come from the run cache anyway, so a killed pipeline started again loses at
most the epoch in progress. Bad flags stop with one line and exit status 2, a failed notebook
with exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import nbformat
import papermill
from bs4 import BeautifulSoup  # nbconvert's own HTML parser
from nbconvert import HTMLExporter
from traitlets.config import Config

from cnnlib import _fileio as fileio
from cnnlib.data.obtain import DATASETS, obtain
from cnnlib.flags import Parser
from cnnlib.study import definitions, executors, locations
from cnnlib.study.readme import collect_results, training_time

PREFIX = "[run_all]"
PROFILE_CHOICES = ("auto", *locations.PROFILES)
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
KERNEL = "python3"
REMOVE_OUTPUT_TAG = "remove_output"  # training logs: kept in the executed notebook, not the report
NPROC_ENV = "CNNLIB_NPROC"  # read by the run cache: >1 trains each run through torchrun


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


def execute(notebook: Path, executed: Path, profile: str) -> None:
    """Run `notebook` with papermill into `executed`, its cell outputs logged as they come.
    Papermill writes its notebook again after each cell, so it writes a temporary file in the
    same folder; once it is whole (also when a cell failed: the traceback is in it), it is
    written into `executed` atomically. Stopped midway through a write, the previous
    `executed` is kept.
    """
    executed = Path(executed)
    partial = executed.with_name(f".{executed.stem}.partial.ipynb")
    partial.unlink(missing_ok=True)  # papermill opens it following links: none may be there
    try:
        papermill.execute_notebook(str(notebook), str(partial), parameters={"PROFILE": profile},
                                   kernel_name=KERNEL, cwd=str(locations.project_root()),
                                   log_output=True, progress_bar=False)
    finally:  # a failed cell too: papermill writes the whole notebook before it raises
        nb = _whole_notebook(partial)
        if nb is not None:
            _keep(nb, executed)
        partial.unlink(missing_ok=True)


def _whole_notebook(path: Path):
    try:
        return nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - missing, half written or not a notebook: not whole
        return None


def _keep(nb, executed: Path) -> None:
    """Write the executed notebook atomically, naming itself (not the temporary file papermill
    wrote) as its output."""
    nb.metadata.get("papermill", {})["output_path"] = str(executed)
    fileio.write_text(nbformat.writes(nb), executed)


def export_html(executed: Path, report: Path) -> None:
    """The report: no code, no prompts, no outputs of cells tagged remove_output, figures embedded
    with their alt text, nothing fetched from the internet to read it."""
    c = Config()
    c.TemplateExporter.exclude_input = True
    c.TemplateExporter.exclude_input_prompt = True
    c.TemplateExporter.exclude_output_prompt = True
    c.TagRemovePreprocessor.remove_all_outputs_tags = {REMOVE_OUTPUT_TAG}
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


def run_notebooks(notebooks: list[Path], out: Path, profile: str, force: bool = False) -> int:
    """Execute and export each notebook not done yet; 0, or 1 at the first failure."""
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    (out / "reports").mkdir(parents=True, exist_ok=True)
    sources = sources_hash()
    n = len(notebooks)
    for i, nb in enumerate(notebooks, 1):
        name = nb.stem
        executed = out / "notebooks" / f"{name}.ipynb"
        report = out / "reports" / f"{name}.html"
        marker = out / "notebooks" / f".{name}.done"
        expected = stamp(profile, nb, sources)
        if not force and is_done(marker, report, expected):
            print(f"{PREFIX} ({i}/{n}) {name}: already done for profile {profile}, skipped "
                  "(--force runs it again)")
            continue
        marker.unlink(missing_ok=True)
        print(f"{PREFIX} ({i}/{n}) {name}: executing (profile {profile}) -> {executed}")
        t0 = time.monotonic()
        try:
            execute(nb, executed, profile)
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
        print(f"{PREFIX} ({i}/{n}) {name}: done in {int(time.monotonic() - t0)} s -> {report}")
    return 0


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
    os.environ[locations.PROFILE_ENV] = profile  # the notebooks' "auto" resolves to it as well
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # as papermill's command does
    logging.basicConfig(format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)  # the cells' output, as it comes

    out = locations.outputs_root()
    print(f"{PREFIX} profile {profile}; outputs in {out}/; {len(notebooks)} notebook(s); "
          f"{args.jobs} run(s) at once ({args.executor}); training runs, one at a time:")
    for line in definitions.plan_lines(profile):
        print(f"{PREFIX}   {line}")
    start = time.monotonic()
    try:
        status = run_notebooks(notebooks, out, profile, force=args.force)
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
    # The clock covers this sitting only; a resumed study's runs keep their own wall times.
    print(f"{PREFIX} finished in {int(time.monotonic() - start)} s: reports in {out}/reports/, "
          f"results in {out / 'results.csv'}; {training_time(df)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
