#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine and builds it:
# apt packages (clang-16, llvm-16, libbpf headers, bpftool, iproute2), a virtual environment
# at .venv with the package installed, and the BPF objects built from our C sources.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="clang-16 llvm-16 libbpf-dev bpftool iproute2 linux-libc-dev gcc make"
missing=""
for pkg in $APT_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "bootstrap: installing$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing the package into .venv"
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi

# bpffs for pinned maps, programs and links (usually mounted already).
if [ "$(id -u)" -eq 0 ] && ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
fi

.venv/bin/python -m morpheus.bpf.build >/dev/null
echo "bootstrap: ready"
