#!/usr/bin/env bash
# Set up moire-al on a fresh Debian 12 machine (root, Python 3.11): the .venv with the
# project and its pinned dependencies, the job database server, the DFT codes
# (CP2K, GPAW) and a headless browser for the web GUI test. Idempotent: a second run
# reuses what is installed (pip is skipped while pyproject.toml is unchanged).
#
#   MOIRE_AL_SKIP_DFT=1      skip CP2K/GPAW (the demo's reference labeller needs neither)
#   MOIRE_AL_SKIP_BROWSER=1  skip chromium
#   MOIRE_AL_SKIP_SLURM=1    skip SLURM + munge (the single-node cluster test)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '\n== %s\n' "$*"; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$(command -v "$cand"); break
    fi
  done
fi
[ -n "$PY" ] || { echo "moire-al needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi

stamp=.venv/.moire-al-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing moire-al and its dependencies into .venv"
  .venv/bin/pip install -q -e ".[server,test]"
  echo "$want" > "$stamp"
else
  log "python dependencies up to date (.venv)"
fi

# D3(BJ)'s reference C6 table (moire_al.models.d3) is CP2K's dftd3.dat: needed even without DFT
if ! dpkg -s cp2k-data >/dev/null 2>&1; then
  log "cp2k-data (the D3 reference C6 table)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cp2k-data
fi
log "compiled kernels (moire_al.models.native)"
.venv/bin/python -m moire_al.models.native >/dev/null || log "kernels will build on first use"

if [ "${MOIRE_AL_SKIP_DFT:-0}" != 1 ] && [ -f scripts/install_dft.sh ]; then
  log "DFT codes (CP2K, GPAW)"
  bash scripts/install_dft.sh
fi
if [ "${MOIRE_AL_SKIP_BROWSER:-0}" != 1 ] && [ -f scripts/install_browser.sh ]; then
  log "headless browser for the web GUI test"
  bash scripts/install_browser.sh
fi
if [ "${MOIRE_AL_SKIP_SLURM:-0}" != 1 ] && [ -f scripts/install_slurm.sh ]; then
  log "SLURM and munge for the single-node cluster test"
  bash scripts/install_slurm.sh
fi
log "ready: $ROOT/.venv/bin/moire-al, $ROOT/.venv/bin/lpad"
