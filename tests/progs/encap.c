// SPDX-License-Identifier: GPL-2.0
/*
 * Encapsulates every IPv4 packet in an outer IPv4 header (bpf_xdp_adjust_head) and sends it
 * back out. A frame that is already encapsulated (protocol 4) is dropped, so a replay that
 * handed the program its own output would show up as drops.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} outer_dst SEC(".maps");

SEC("xdp")
int xdp_encap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->protocol == IPPROTO_IPIP)
		return XDP_DROP; /* our own output: the frame was not refreshed */
	__u16 inner_len = ip->tot_len;
	__u32 zero = 0;
	__u32 *dst = bpf_map_lookup_elem(&outer_dst, &zero);
	if (!dst)
		return XDP_ABORTED;
	__u32 daddr = *dst;

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	struct ethhdr *new_eth = data;
	struct ethhdr *old_eth = data + sizeof(struct iphdr);
	struct iphdr *outer = data + sizeof(*new_eth);
	if ((void *)(outer + 1) > end || (void *)(old_eth + 1) > end)
		return XDP_ABORTED;
	__builtin_memcpy(new_eth, old_eth, sizeof(*new_eth));
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = 0;
	outer->tot_len = bpf_htons(bpf_ntohs(inner_len) + sizeof(struct iphdr));
	outer->id = 0;
	outer->frag_off = 0;
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = bpf_htonl(0x0a000001);
	outer->daddr = daddr;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
