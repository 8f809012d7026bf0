"""Entry point: `morpheus <command> ...`. Each command lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata

# command name → module under morpheus.cli providing `add_parser(subparsers)` and `run(args)`
COMMANDS = {
    "inspect": "inspect_cmd",
    "disasm": "disasm_cmd",
    "parse-bench": "parse_bench_cmd",
    "nf": "nf_cmd",
    "traffic": "traffic_cmd",
    "bench": "bench_cmd",
    "optimize": "optimize_cmd",
    "check": "check_cmd",
    "load": "load_cmd",
    "run": "run_cmd",
    "status": "status_cmd",
    "map": "map_cmd",
    "demo": "demo_cmd",
    "report": "report_cmd",
    "send": "send_cmd",
}


def _version() -> str:
    # The installed distribution's metadata, so that a wheel reports what pip installed;
    # a bare source tree (PYTHONPATH=src) falls back to the package's own constant.
    try:
        return metadata.version("morpheus-xdp")
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="morpheus",
        description="Run-time specialization of eBPF/XDP programs to their maps and traffic.",
    )
    parser.add_argument("--version", action="version",
                        version=f"morpheus (morpheus-xdp) {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"morpheus.cli.{module}")
        mod.add_parser(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        # Errors of our layers carry actionable messages; no traceback for users.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"morpheus {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
