#!/usr/bin/env bash
# Set everything up, lint, and run the whole test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -ra "$@"
