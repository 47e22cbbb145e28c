#!/usr/bin/env bash
# Install Debian's SLURM (controller, node daemon, clients) and munge for the single-node
# cluster test (tests/test_slurm.py starts its own munged/slurmctld/slurmd in a temporary
# directory; nothing is configured system-wide). Idempotent.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
    echo "SLURM already installed: slurmctld $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || echo '?')"
    exit 0
fi

source "$(dirname "$0")/apt_install.sh"
apt_install slurmctld slurmd slurm-client munge
echo "SLURM installed: slurmctld $(dpkg-query -W -f='${Version}' slurmctld)"
