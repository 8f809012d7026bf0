"""The options that say how an object is read, shared by inspect, disasm, load and
parse-bench: which BTF CO-RE relocates against, a program type for non-standard section
names, legacy map definitions."""

from __future__ import annotations

import argparse
from typing import Any


def add_read_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--btf", metavar="FILE",
                   help="relocate CO-RE against this BTF file (raw BTF or an ELF with .BTF) "
                        "instead of the running kernel's, like libbpf's btf_custom_path")
    p.add_argument("--type", dest="program_type", metavar="TYPE",
                   help="program type of every program, for non-standard section names "
                        "(xdp, xdp.frags, tc, tcx/ingress, ...), like bpftool's `type`")
    p.add_argument("--legacy-maps", action="store_true",
                   help='accept legacy SEC("maps") struct bpf_map_def definitions '
                        "(iproute2's tc loader reads them; libbpf 1.x does not)")


def read_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for `morpheus.loader.read_for_kernel`."""
    return {"btf": args.btf, "program_type": args.program_type,
            "legacy_maps": args.legacy_maps}
