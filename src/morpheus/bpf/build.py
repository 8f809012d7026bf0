"""`python -m morpheus.bpf.build`: compile the package's BPF sources into the build dir."""

from __future__ import annotations

from . import build_all

if __name__ == "__main__":
    for path in build_all():
        print(path)
