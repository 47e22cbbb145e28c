#!/usr/bin/env bash
# Install the DFT codes the labellers run: CP2K (Debian) and GPAW (PyPI, built
# against the system OpenMPI). Idempotent; run as root on Debian 12 from the repo.
# Measured on the dev machine: apt step ~25 s (packages cached), GPAW build ~35-55 s.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
GPAW_VERSION=26.7.0
GPAW_DATA_VERSION=1.2.1

need_apt=0
for p in cp2k cp2k-data libxc-dev libopenblas-dev libopenmpi-dev openmpi-bin build-essential pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    cp2k cp2k-data libxc-dev libopenblas-dev libopenmpi-dev openmpi-bin build-essential pkg-config
fi

# GPAW: the PyPI 'mpich' wheel puts MPICH's mpi.h into the venv's include dir,
# which setuptools searches first; a GPAW compiled with it and linked to OpenMPI
# segfaults in MPI_Comm_size. Put OpenMPI's headers first with a siteconfig.
if ! "$VENV/bin/python" - <<PY 2>/dev/null
import importlib.metadata as m, subprocess, sys
assert m.version("gpaw") == "$GPAW_VERSION" and m.version("gpaw-data") == "$GPAW_DATA_VERSION"
subprocess.run([sys.executable, "-c", "import _gpaw, gpaw.mpi; gpaw.mpi.world.size"], check=True,
               capture_output=True, timeout=120)
PY
then
  cfg=$(mktemp --suffix=.py)
  cat > "$cfg" <<'PY'
import subprocess
compiler = 'mpicc'
mpi = True
include_dirs += subprocess.check_output(['mpicc', '--showme:incdirs'], text=True).split()
libraries += ['xc', 'openblas']
PY
  PATH=/usr/bin:$PATH GPAW_CONFIG="$cfg" "$VENV/bin/pip" install --no-cache-dir --force-reinstall \
    --no-deps "gpaw==$GPAW_VERSION"
  "$VENV/bin/pip" install "gpaw-data==$GPAW_DATA_VERSION"
  rm -f "$cfg"
fi
echo "install_dft: cp2k $(dpkg-query -W -f='${Version}' cp2k), gpaw $GPAW_VERSION, gpaw-data $GPAW_DATA_VERSION"
