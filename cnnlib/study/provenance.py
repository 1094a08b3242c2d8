"""What a result records about the code that produced it: the results version and the commit.

A run's cache key holds `RESULTS_VERSION`, not a hash of the sources: moving or renaming
code keeps every published run, while a change that changes a trained number must raise
the version. `tests/test_results_version.py` trains a fixed set of tiny configs (every model
family, augmentation and optimizer) and compares their metrics with the ones stored for
this version, so a change that moves a result without a new version fails the tests.
"""

from __future__ import annotations

import subprocess

from cnnlib.study.locations import project_root

# Raise it (any new string) with every change that changes a trained number, and store the
# reference metrics again (`python tests/test_results_version.py --store`). Its first value
# is the source hash that keyed the published runs before the version was made explicit.
RESULTS_VERSION = "1ef0e48ac4d8"

# What a study writes itself (figures, tables, results, exported models, committed records,
# the README's tables): a study that rewrites them while it runs has not changed its code.
GENERATED = ("outputs", "models", "README.md")


def git_commit() -> str:
    """The short commit of the project, with `-dirty` when a tracked file other than the
    GENERATED ones differs from it; "unknown" outside a git checkout."""
    root = str(project_root())

    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/",
                    *(f":(top,exclude){path}" for path in GENERATED))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit
