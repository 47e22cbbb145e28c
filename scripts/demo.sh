#!/usr/bin/env bash
# Set up everything (scripts/setup.sh), start the job database, and run the main job:
# a small real hyperactive-learning loop through FireWorks, then print the status
# table and where the report is. Extra arguments go to `moire-al demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/moire-al demo "$@"
