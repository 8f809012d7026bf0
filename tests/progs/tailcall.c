// SPDX-License-Identifier: GPL-2.0
/* A protocol dispatcher: the entry program parses the Ethernet header and tail-calls a
 * per-protocol stage through a prog array; the IPv4 stage tail-calls again, from inside a
 * subprogram, into a per-L4-protocol stage. The control plane fills `stages` after load, so
 * the object has no static initialiser for it (see unsupported/static_init.c for that).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

enum stage {
	STAGE_IPV4 = 0,
	STAGE_IPV6 = 1,
	STAGE_UDP = 2,
	STAGE_TCP = 3,
	STAGE_MAX = 8,
};

enum counter {
	CNT_DISPATCH_MISS = 0,	/* tail call failed: slot empty */
	CNT_L4_MISS,
	CNT_UDP,
	CNT_IPV6,
	CNT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, STAGE_MAX);
	__type(key, __u32);
	__type(value, __u32);
} stages SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		*c += 1;
}

/* A tail call from a subprogram: the kernel has to unwind this frame too. */
static __noinline int dispatch_l4(struct xdp_md *ctx, __u8 proto)
{
	switch (proto) {
	case IPPROTO_UDP:
		bpf_tail_call(ctx, &stages, STAGE_UDP);
		break;
	case IPPROTO_TCP:
		bpf_tail_call(ctx, &stages, STAGE_TCP);
		break;
	}
	count(CNT_L4_MISS);
	return XDP_PASS;
}

SEC("xdp")
int xdp_dispatch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		bpf_tail_call(ctx, &stages, STAGE_IPV4);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		bpf_tail_call(ctx, &stages, STAGE_IPV6);
	else
		return XDP_PASS;
	count(CNT_DISPATCH_MISS);
	return XDP_PASS;
}

SEC("xdp")
int xdp_ipv4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + sizeof(struct ethhdr);

	if ((void *)(iph + 1) > data_end)
		return XDP_DROP;
	/* Fragments and options go to the slow path in the stack. */
	if (iph->ihl != 5 || (iph->frag_off & bpf_htons(0x3fff)))
		return XDP_PASS;
	if (iph->ttl <= 1)
		return XDP_DROP;
	return dispatch_l4(ctx, iph->protocol);
}

SEC("xdp")
int xdp_ipv6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);

	if ((void *)(ip6 + 1) > data_end)
		return XDP_DROP;
	count(CNT_IPV6);
	if (ip6->hop_limit <= 1)
		return XDP_DROP;
	return dispatch_l4(ctx, ip6->nexthdr);
}

SEC("xdp")
int xdp_udp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);

	if ((void *)(udp + 1) > data_end)
		return XDP_DROP;
	count(CNT_UDP);
	/* Drop the classic amplification sources outright. */
	switch (bpf_ntohs(udp->source)) {
	case 19:	/* chargen */
	case 123:	/* ntp monlist */
	case 1900:	/* ssdp */
	case 11211:	/* memcached */
		return XDP_DROP;
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
