// SPDX-License-Identifier: GPL-2.0
/* A longest-prefix-match router: IPv4 and IPv6 routes in LPM tries, next hops in an array.
 *
 * LPM tries must be created with BPF_F_NO_PREALLOC, and their keys start with a 32-bit prefix
 * length followed by the address bytes. Routing decisions are the classic case for inlining the
 * hot prefixes of a large table.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_NEXTHOPS 256

struct lpm_v4_key {
	__u32 prefixlen;
	__u32 addr;		/* network order */
};

struct lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct nexthop {
	__u32 ifindex;
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

/* prefix -> index into `nexthops` */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
} routes_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, __u32);
} routes_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_NEXTHOPS);
	__type(key, __u32);
	__type(value, struct nexthop);
} nexthops SEC(".maps");

static __always_inline int forward(struct ethhdr *eth, __u32 *nh_index)
{
	struct nexthop *nh;

	if (!nh_index)
		return XDP_PASS;	/* no route: let the stack send the ICMP error */
	nh = bpf_map_lookup_elem(&nexthops, nh_index);
	if (!nh || !nh->ifindex)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	return bpf_redirect(nh->ifindex, 0);
}

SEC("xdp")
int xdp_router(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		struct lpm_v4_key key;

		if ((void *)(iph + 1) > data_end)
			return XDP_DROP;
		if (iph->ttl <= 1)
			return XDP_PASS;
		key.prefixlen = 32;
		key.addr = iph->daddr;
		/* TTL decrement with the checksum fix-up from Linux's ip_decrease_ttl(). */
		__u32 check = iph->check;
		check += bpf_htons(0x0100);
		iph->check = (__u16)(check + (check >= 0xFFFF));
		iph->ttl--;
		return forward(eth, bpf_map_lookup_elem(&routes_v4, &key));
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct lpm_v6_key key;

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		if (ip6->hop_limit <= 1)
			return XDP_PASS;
		key.prefixlen = 128;
		__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
		ip6->hop_limit--;
		return forward(eth, bpf_map_lookup_elem(&routes_v6, &key));
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
