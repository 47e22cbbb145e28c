#!/usr/bin/env bash
# Set up everything (scripts/setup.sh), lint (ruff, line length 120: pyproject.toml) and run
# the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check moire_al tests benchmarks scripts
export MOIRE_AL_DATA=${MOIRE_AL_DATA:-$(mktemp -d /tmp/moire-al-test.XXXXXX)}
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
