// SPDX-License-Identifier: GPL-2.0
/* Sections of newer libbpf (tcx, netkit): the libbpf on this machine (1.1) does not know them,
 * so the tag comparison gives bpftool the type (`type tc`); our loader reads the names. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tcx/ingress")
int tcx_in(struct __sk_buff *skb) { return skb->len > 1500 ? TC_ACT_SHOT : TC_ACT_OK; }

SEC("tcx/egress")
int tcx_out(struct __sk_buff *skb) { return TC_ACT_OK; }

SEC("netkit/primary")
int netkit_primary(struct __sk_buff *skb) { return TC_ACT_OK; }

SEC("netkit/peer")
int netkit_peer(struct __sk_buff *skb) { return TC_ACT_OK; }

char _license[] SEC("license") = "GPL";
