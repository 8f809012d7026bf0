"""`morpheus run OBJ --iface IF`: attach a program and keep it specialized."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..optimizer import PlanOptions

    p = sub.add_parser(name, help="run a program on an interface under the agent")
    p.add_argument("object")
    p.add_argument("--iface", required=True, help="interface to attach to (XDP)")
    p.add_argument("--netns", help="network namespace the interface lives in (ip netns name)")
    p.add_argument("--program", help="program in the object (default: the only one)")
    p.add_argument("--name", help="agent name (default: the program name)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between cycles")
    p.add_argument("--sample-rate", type=int, default=16, help="sample 1 lookup in N")
    p.add_argument("--xdp-mode", choices=["native", "generic"], default="native")
    p.add_argument("--swap", choices=["link", "prog-array"], default="link",
                   help="swap versions by updating the XDP link (default) or through a "
                        "prog-array trampoline: faster swaps, one tail call per packet")
    p.add_argument("--maps", metavar="DIR",
                   help="use the object's maps pinned by another owner under DIR, one pin per "
                        "map name (bpfman: /run/bpfman/fs/maps/PROG_ID; `bpftool prog loadall "
                        "OBJ PROGS pinmaps DIR`), each checked against the object's "
                        "definition; the agent never creates, pins or removes them")
    p.add_argument("--no-attach", action="store_true",
                   help="attach nothing: pin the entry program (a prog-array trampoline the "
                        "agent swaps versions behind) as PIN_DIR/entry for another loader to "
                        "attach, e.g. `bpftool net attach xdp pinned "
                        "/sys/fs/bpf/morpheus/NAME/entry dev IF`; implies --swap prog-array")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1")
    p.add_argument("--detach-on-exit", action="store_true",
                   help="remove the program when the agent stops (default: keep it running, "
                        "with its pinned write watcher, for a later agent to adopt)")
    p.add_argument("--no-watch", action="store_true",
                   help="do not watch for map writes that bypass the agent (then only "
                        "writes made through a running agent are honoured by inlined code)")
    p.add_argument("--run-stats", action="store_true",
                   help="enable BPF run-time statistics (ns/packet in status; costs ~35 ns "
                        "per packet)")
    p.add_argument("--check-trace", metavar="PCAP",
                   help="before each swap, run the candidate and the unspecialized program on "
                        "these packets (copies of the maps) and keep the running version if "
                        "any verdict, output byte or data-plane map write differs")
    p.add_argument("--check-packets", type=int, default=1000,
                   help="use at most this many packets of --check-trace (default 1000)")
    p.add_argument("--check-nf", metavar="NF",
                   help="the built-in NF the program is (router, switch, firewall, lb): the "
                        "check adds the NF's held-back flows and edge cases (of its default "
                        "configuration) on the NF's ports")
    p.add_argument("--check-frames-only", action="store_true",
                   help="check on the --check-trace packets alone (default: also near-miss "
                        "keys of every inlined site, moves, unseen flows, edge cases and "
                        "control-plane writes to guarded entries, as optimize's check)")
    p.add_argument("--verifier-budget", type=int, default=PlanOptions.verifier_budget,
                   help="instructions the verifier may process per version (a pessimistic "
                        "estimate; default %(default)s); over it, comparison trees converge "
                        "their hits, then the least used are dropped")
    p.add_argument("--lpm-max", type=int, default=PlanOptions.lpm_max,
                   help="LPM tries with at most this many prefixes are inlined whole, as "
                        "address ranges (default %(default)s; 0: hot keys only)")
    p.add_argument("--no-measure-sampling-cost", action="store_true",
                   help="do not measure what sampling costs on the live traffic (the "
                        "measurement alternates the unspecialized programs for ~1.2 s once)")
    p.add_argument("--backend", choices=["kernel", "userspace"], default="kernel",
                   help="data plane: the kernel (default), or user space: the program "
                        "JIT-compiled and run on the interface's frames over AF_XDP (copy "
                        "mode); XDP_TX frames go back out, the other verdicts end there")
    p.add_argument("--poller-cpu", type=int,
                   help="with --backend userspace: pin the AF_XDP poller thread to this CPU")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    backend = getattr(args, "backend", "kernel")
    if backend == "userspace":
        refused = [flag for flag, given in (("--swap prog-array", args.swap != "link"),
                                            ("--run-stats", args.run_stats),
                                            ("--detach-on-exit", args.detach_on_exit),
                                            ("--maps", args.maps is not None),
                                            ("--no-attach", args.no_attach))
                   if given]
        if refused:
            print(f"morpheus run: {', '.join(refused)} applies to the kernel backend only "
                  "(user space swaps a pointer between batches, times every batch, and its "
                  "data plane ends with the agent)", file=sys.stderr)
            return 2
    elif args.poller_cpu is not None:
        print("morpheus run: --poller-cpu applies to --backend userspace only",
              file=sys.stderr)
        return 2
    from ..optimizer import PlanOptions
    from ..runtime.agent import Agent, AgentOptions
    from ..runtime.server import ControlServer, socket_path

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    check_frames: tuple[bytes, ...] = ()
    if args.check_trace:
        from ..traffic.pcap import read_pcap

        try:
            check_frames = tuple(read_pcap(args.check_trace)[: max(0, args.check_packets)])
        except (OSError, ValueError) as exc:
            print(f"morpheus run: cannot read --check-trace: {exc}", file=sys.stderr)
            return 2
        if not check_frames:
            print(f"morpheus run: {args.check_trace} holds no packets", file=sys.stderr)
            return 2
    check_nf = None
    if getattr(args, "check_nf", None):
        from ..nf import get

        try:
            check_nf = get(args.check_nf)
        except (KeyError, ValueError) as exc:
            print(f"morpheus run: --check-nf: {exc}", file=sys.stderr)
            return 2
    options = AgentOptions(interval=args.interval, sample_rate=args.sample_rate,
                           xdp_mode=args.xdp_mode, watch_external=not args.no_watch,
                           run_stats=args.run_stats, check_frames=check_frames,
                           check_enrich=not getattr(args, "check_frames_only", False),
                           check_nf=check_nf,
                           swap="prog-array" if args.no_attach else args.swap,
                           maps_dir=args.maps, attach=not args.no_attach,
                           measure_instrumentation=not args.no_measure_sampling_cost,
                           plan=PlanOptions(verifier_budget=args.verifier_budget,
                                            lpm_max=args.lpm_max))
    if backend == "userspace":
        from ..runtime.useragent import UserspaceAgent

        agent: Agent = UserspaceAgent(args.object, iface=args.iface, program=args.program,
                                      netns=args.netns, name=args.name, options=options,
                                      poller_cpu=args.poller_cpu)
    else:
        agent = Agent(args.object, iface=args.iface, program=args.program, netns=args.netns,
                      name=args.name, options=options)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()  # takes the name's lock: one agent per name
    control = metrics = None
    try:
        control = ControlServer(agent, socket_path(agent.name))
        control.start()
        if args.metrics_port is not None:
            from ..runtime.metrics import serve

            _, metrics = serve(agent, control, args.metrics_port)
        running = {"event": "running", "backend": agent.backend, "name": agent.name,
                   "socket": str(socket_path(agent.name)),
                   "metrics_port": metrics.port if metrics else None}
        if agent.maps_dir is not None:
            running["maps_dir"] = str(agent.maps_dir)  # the owner's, as found under --maps
        if not agent.options.attach:
            running["entry"] = str(agent.pin_dir / "entry")  # for the loader that attaches it
        print(json.dumps(running), flush=True)
        while not stop.is_set():
            agent.cycle()
            stop.wait(args.interval)
    finally:
        if control is not None:
            control.close()
        if metrics is not None:
            metrics.close()
        agent.stop(detach=args.detach_on_exit)
    return 0
