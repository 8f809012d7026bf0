"""`python -m morpheus.bpf.build`: compile the package's BPF sources into the build dir,
and the user-space data plane's runtime into LLVM bitcode next to them."""

from __future__ import annotations

from . import build_all

if __name__ == "__main__":
    from ..userspace.build import build_runtime

    for path in build_all():
        print(path)
    print(build_runtime())
