// SPDX-License-Identifier: GPL-2.0
/* One program per packet-program section name that libbpf 1.x knows. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("xdp.frags")
int sec_xdp_frags(struct xdp_md *ctx) { return bpf_xdp_get_buff_len(ctx) > 9000 ? XDP_DROP : XDP_PASS; }

SEC("xdp/devmap")
int sec_xdp_devmap(struct xdp_md *ctx) { return XDP_PASS; }

SEC("xdp/cpumap")
int sec_xdp_cpumap(struct xdp_md *ctx) { return XDP_PASS; }

SEC("xdp.frags/devmap")
int sec_xdp_frags_devmap(struct xdp_md *ctx) { return XDP_PASS; }

SEC("tc")
int sec_tc(struct __sk_buff *skb) { return skb->len > 1500 ? TC_ACT_SHOT : TC_ACT_OK; }

SEC("classifier")
int sec_classifier(struct __sk_buff *skb) { return TC_ACT_OK; }

SEC("action")
int sec_action(struct __sk_buff *skb) { return TC_ACT_OK; }

SEC("socket")
int sec_socket(struct __sk_buff *skb) { return skb->len; }

SEC("cgroup_skb/ingress")
int sec_cgroup_ingress(struct __sk_buff *skb) { return 1; }

SEC("cgroup_skb/egress")
int sec_cgroup_egress(struct __sk_buff *skb) { return 1; }

char _license[] SEC("license") = "GPL";
