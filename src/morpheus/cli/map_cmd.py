"""`morpheus map update|delete|lookup MAP KEY [VALUE]`: control-plane writes via the agent."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="read or write a map of a running agent (hex key/value)")
    p.add_argument("op", choices=["update", "delete", "lookup"])
    p.add_argument("map")
    p.add_argument("key", help="key bytes in hex")
    p.add_argument("value", nargs="?", help="value bytes in hex (update)")
    p.add_argument("--name", help="agent name (default: the only one running)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.server import request
    from .status_cmd import agent_socket

    payload = {"op": args.op, "map": args.map, "key": args.key}
    if args.op == "update":
        if args.value is None:
            raise ValueError("update needs a value")
        payload["value"] = args.value
    elif args.value is not None:
        raise ValueError(f"{args.op} takes a map and a key only, not a value "
                         f"({args.value!r})")
    reply = request(agent_socket(args.name), payload)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error"))
    print(json.dumps(reply))
    return 0
