"""Command-line flags: an argparse parser whose mistakes cost the user one line.

argparse answers a bad flag with its usage and then the error; the project's rule for bad
input is one line naming the problem, and exit status 2. Every command line of the project
(the `cnnlib` CLI, `run_all.sh`, the benchmarks and tools) builds its parser from `Parser`;
sub-commands inherit it.
"""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors print `<prog>: error: <message>` and exit 2."""

    def __init__(self, *args, error_prefix: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix or f"{self.prog}: error:"

    def error(self, message: str):
        print(f"{self.error_prefix} {message}", file=sys.stderr)
        sys.exit(2)


def epochs(text: str) -> float | int:
    """An epoch budget flag: whole numbers stay ints, so "6" prints as 6 (the run key is the
    same either way)."""
    value = float(text)
    return int(value) if value.is_integer() else value
