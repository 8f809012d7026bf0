"""Program section names → program type and expected attach type, as libbpf defines them."""

from __future__ import annotations

from dataclasses import dataclass

from ..uapi import AttachType, ProgType


@dataclass(frozen=True, slots=True)
class SectionDef:
    prefix: str
    prog_type: ProgType
    attach_type: int = 0
    exact: bool = False  # the name must equal the prefix or continue with '/'
    flags: int = 0  # prog_flags, e.g. BPF_F_XDP_HAS_FRAGS


BPF_F_XDP_HAS_FRAGS = 1 << 5

# Most specific first; a prefix matches the whole name or the name followed by '/'.
SECTIONS: tuple[SectionDef, ...] = (
    SectionDef("xdp.frags/devmap", ProgType.XDP, AttachType.XDP_DEVMAP, flags=BPF_F_XDP_HAS_FRAGS),
    SectionDef("xdp/devmap", ProgType.XDP, AttachType.XDP_DEVMAP),
    SectionDef("xdp.frags/cpumap", ProgType.XDP, AttachType.XDP_CPUMAP, flags=BPF_F_XDP_HAS_FRAGS),
    SectionDef("xdp/cpumap", ProgType.XDP, AttachType.XDP_CPUMAP),
    SectionDef("xdp.frags", ProgType.XDP, AttachType.XDP, flags=BPF_F_XDP_HAS_FRAGS),
    SectionDef("xdp", ProgType.XDP, AttachType.XDP),
    SectionDef("tcx/ingress", ProgType.SCHED_CLS, AttachType.TCX_INGRESS),
    SectionDef("tcx/egress", ProgType.SCHED_CLS, AttachType.TCX_EGRESS),
    SectionDef("tc/ingress", ProgType.SCHED_CLS, AttachType.TCX_INGRESS),
    SectionDef("tc/egress", ProgType.SCHED_CLS, AttachType.TCX_EGRESS),
    SectionDef("netkit/primary", ProgType.SCHED_CLS, AttachType.NETKIT_PRIMARY),
    SectionDef("netkit/peer", ProgType.SCHED_CLS, AttachType.NETKIT_PEER),
    SectionDef("tc", ProgType.SCHED_CLS),
    SectionDef("classifier", ProgType.SCHED_CLS),
    SectionDef("action", ProgType.SCHED_ACT),
    SectionDef("socket", ProgType.SOCKET_FILTER),
    SectionDef("cgroup/skb", ProgType.CGROUP_SKB),
    SectionDef("lwt_in", ProgType.LWT_IN),
    SectionDef("lwt_out", ProgType.LWT_OUT),
    SectionDef("lwt_xmit", ProgType.LWT_XMIT),
    SectionDef("lwt_seg6local", ProgType.LWT_SEG6LOCAL),
    SectionDef("sk_reuseport", ProgType.SK_REUSEPORT),
    SectionDef("kprobe", ProgType.KPROBE),
    SectionDef("kretprobe", ProgType.KPROBE),
    SectionDef("uprobe", ProgType.KPROBE),
    SectionDef("tracepoint", ProgType.TRACEPOINT),
    SectionDef("tp", ProgType.TRACEPOINT),
    SectionDef("raw_tracepoint", ProgType.RAW_TRACEPOINT),
    SectionDef("raw_tp", ProgType.RAW_TRACEPOINT),
    SectionDef("tp_btf", ProgType.TRACING, AttachType.TRACE_RAW_TP),
    SectionDef("fentry", ProgType.TRACING, AttachType.TRACE_FENTRY),
    SectionDef("fexit", ProgType.TRACING, AttachType.TRACE_FEXIT),
    SectionDef("fmod_ret", ProgType.TRACING, AttachType.MODIFY_RETURN),
    SectionDef("lsm", ProgType.LSM, AttachType.LSM_MAC),
    SectionDef("perf_event", ProgType.PERF_EVENT),
    SectionDef("cgroup_skb/ingress", ProgType.CGROUP_SKB, AttachType.CGROUP_INET_INGRESS),
    SectionDef("cgroup_skb/egress", ProgType.CGROUP_SKB, AttachType.CGROUP_INET_EGRESS),
    SectionDef("sk_skb/stream_parser", ProgType.SK_SKB, AttachType.SK_SKB_STREAM_PARSER),
    SectionDef("sk_skb/stream_verdict", ProgType.SK_SKB, AttachType.SK_SKB_STREAM_VERDICT),
    SectionDef("sk_skb", ProgType.SK_SKB),
    SectionDef("sk_msg", ProgType.SK_MSG, AttachType.SK_MSG_VERDICT),
    SectionDef("flow_dissector", ProgType.FLOW_DISSECTOR, AttachType.FLOW_DISSECTOR),
    SectionDef("sk_lookup", ProgType.SK_LOOKUP, AttachType.SK_LOOKUP),
    SectionDef("syscall", ProgType.SYSCALL),
)


def section_def(name: str) -> SectionDef | None:
    """The definition for a program section name, or None if it is not a program section."""
    for sdef in SECTIONS:
        if name == sdef.prefix or name.startswith(sdef.prefix + "/"):
            return sdef
    return None
