#!/usr/bin/env bash
# Install Debian's SLURM (controller, node daemon, clients) and munge for the single-node
# cluster test (tests/test_slurm.py starts its own munged/slurmctld/slurmd in a temporary
# directory; nothing is configured system-wide). Idempotent.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
    echo "SLURM already installed: $(sbatch --version)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_slurm.sh: need root (or sudo) to apt-get install slurm" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show slurmctld >/dev/null 2>&1; then
    $SUDO apt-get update
fi
$SUDO apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
sbatch --version
