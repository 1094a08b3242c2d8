#!/usr/bin/env bash
# The project's test command: sets up .venv (and the data when it can be had), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")"
CNNLIB_DATA_OPTIONAL=1 ./run_all.sh --setup-only
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
