// SPDX-License-Identifier: GPL-2.0
/* Traffic-control programs: DSCP marking on egress and EtherType accounting on ingress.
 *
 * SCHED_CLS programs see a struct __sk_buff context and return TC_ACT_* codes. "tc" is the
 * current libbpf section name, "classifier" the legacy one; both must map to the same program
 * type. The marker rewrites the packet with helpers (bpf_skb_store_bytes, bpf_l3_csum_replace)
 * rather than through direct packet access.
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IP_OFF		sizeof(struct ethhdr)
#define TOS_OFF		(IP_OFF + offsetof(struct iphdr, tos))
#define CSUM_OFF	(IP_OFF + offsetof(struct iphdr, check))

/* UDP destination port (host order) -> DSCP code point */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, __u16);
	__type(value, __u8);
} port_dscp SEC(".maps");

enum {
	ET_IPV4,
	ET_IPV6,
	ET_ARP,
	ET_VLAN,
	ET_OTHER,
	ET_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ET_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ethertype_bytes SEC(".maps");

SEC("tc")
int tc_dscp_mark(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *udp;
	__u8 old_tos, new_tos, *dscp;
	__u16 dport;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_UDP || iph->ihl != 5)
		return TC_ACT_OK;
	udp = (void *)(iph + 1);
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_OK;

	dport = bpf_ntohs(udp->dest);
	dscp = bpf_map_lookup_elem(&port_dscp, &dport);
	if (!dscp)
		return TC_ACT_OK;
	old_tos = iph->tos;
	new_tos = (*dscp << 2) | (old_tos & 0x3);	/* keep the ECN bits */
	if (new_tos == old_tos)
		return TC_ACT_OK;

	/* The helpers invalidate packet pointers; nothing below touches iph again. */
	bpf_l3_csum_replace(skb, CSUM_OFF, bpf_htons(old_tos), bpf_htons(new_tos), 2);
	bpf_skb_store_bytes(skb, TOS_OFF, &new_tos, sizeof(new_tos), 0);
	return TC_ACT_OK;
}

SEC("classifier")
int tc_ethertype_acct(struct __sk_buff *skb)
{
	__u32 key;
	__u64 *bytes;
	__be16 proto;

	/* Copy rather than direct access: works for non-linear skbs too. */
	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
		return TC_ACT_OK;
	switch (bpf_ntohs(proto)) {
	case ETH_P_IP:
		key = ET_IPV4;
		break;
	case ETH_P_IPV6:
		key = ET_IPV6;
		break;
	case ETH_P_ARP:
		key = ET_ARP;
		break;
	case ETH_P_8021Q:
	case ETH_P_8021AD:
		key = ET_VLAN;
		break;
	default:
		key = ET_OTHER;
		break;
	}
	bytes = bpf_map_lookup_elem(&ethertype_bytes, &key);
	if (bytes)
		*bytes += skb->len;
	/* Untagged-only port: stacked VLANs are dropped here, not by the bridge. */
	return key == ET_VLAN && skb->vlan_present ? TC_ACT_SHOT : TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
