#!/usr/bin/env bash
# apt_install PACKAGE...: install Debian packages as root (or through sudo); runs
# apt-get update only when the package index does not know the first package yet.
# Sourced by scripts/install_browser.sh and scripts/install_slurm.sh.
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "$(basename "$0"): need root (or sudo) to apt-get install $*" >&2
            return 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show "$1" >/dev/null 2>&1; then
        $sudo apt-get update
    fi
    $sudo apt-get install -y --no-install-recommends "$@"
}
