// SPDX-License-Identifier: GPL-2.0-only
/* router: an IPv4 forwarding fast path in XDP.
 *
 * Per packet: read the global feature flags, check that the frame arrived on a routed
 * interface and is addressed to it, validate the IPv4 header, look the destination up in an
 * LPM trie, resolve the next hop, check the egress interface and its MTU, then decrement the
 * TTL (incremental checksum update, RFC 1624 eqn. 3), rewrite the MAC addresses and send the
 * frame out (XDP_TX when it leaves through the ingress interface, XDP_REDIRECT otherwise).
 * Everything the fast path does not handle goes to the stack untouched (XDP_PASS): non-IPv4,
 * IP options, TTL expiry (the stack sends the ICMP error), local and multicast destinations,
 * unresolved neighbours, oversized packets. Malformed IPv4 and blackhole routes are dropped.
 * The program never modifies a packet before it has decided to forward it.
 *
 * All configuration lives in maps written by the control plane at run time
 * (src/morpheus/nf/router.py mirrors every struct and decision of this file):
 *   rt_config    ARRAY[1]      u32 0 -> struct rt_config           global feature flags
 *   rt_ifaces    HASH          u32 ifindex -> struct rt_iface       routed interfaces
 *   rt_routes    LPM_TRIE      struct rt_lpm_key -> struct rt_route routing table
 *   rt_nexthops  ARRAY         u32 index -> struct rt_nexthop       resolved next hops
 *   rt_stats     PERCPU_ARRAY  u32 reason -> struct nfc_stat        counters
 */
#include "nf_common.h"

/* rt_config.flags */
#define RT_FEAT_FORWARD (1u << 0)      /* forwarding enabled (like net.ipv4.ip_forward) */
#define RT_FEAT_STATS (1u << 1)        /* count every decision in rt_stats */
#define RT_FEAT_NOROUTE_DROP (1u << 2) /* no matching route: drop instead of passing */

/* rt_iface.flags */
#define RT_IF_ENABLED (1u << 0) /* interface up and routed */

/* rt_route.flags (no flag: forward to the next hop) */
#define RT_ROUTE_LOCAL (1u << 0)     /* destination is this host: deliver to the stack */
#define RT_ROUTE_BLACKHOLE (1u << 1) /* discard silently */

/* rt_nexthop.flags */
#define RT_NH_VALID (1u << 0) /* neighbour resolved: dmac and smac are usable */

#define RT_MAX_ROUTES 65536
#define RT_MAX_NEXTHOPS 1024
#define RT_MAX_IFACES 64

/* Every packet is counted in exactly one reason. */
enum rt_stat {
	RT_STAT_FORWARD = 0,   /* redirected to another interface */
	RT_STAT_TX = 1,        /* sent back out of the ingress interface */
	RT_STAT_DISABLED = 2,  /* forwarding disabled: passed */
	RT_STAT_NOT_US = 3,    /* not a routed interface, or not addressed to its MAC: passed */
	RT_STAT_NOT_IP = 4,    /* not IPv4 (ARP, IPv6, VLAN-tagged...): passed */
	RT_STAT_MALFORMED = 5, /* runt frame or bad IPv4 header: dropped */
	RT_STAT_OPTIONS = 6,   /* IPv4 options present: passed */
	RT_STAT_MCAST = 7,     /* multicast, broadcast or class E destination: passed */
	RT_STAT_TTL = 8,       /* TTL <= 1: passed (the stack sends time-exceeded) */
	RT_STAT_NO_ROUTE = 9,  /* no matching route: passed, or dropped (RT_FEAT_NOROUTE_DROP) */
	RT_STAT_BLACKHOLE = 10, /* blackhole route: dropped */
	RT_STAT_LOCAL = 11,    /* local route: passed */
	RT_STAT_NO_NEIGH = 12, /* next hop missing or unresolved: passed */
	RT_STAT_LINK_DOWN = 13, /* egress interface unknown or disabled: passed */
	RT_STAT_MTU = 14,      /* larger than the egress MTU: passed (the stack fragments) */
	RT_STAT_MAX = 15,
};

struct rt_config {
	__u32 flags;
};

struct rt_iface {
	__u8 mac[ETH_ALEN];
	__u16 flags;
	__u32 mtu; /* largest IPv4 total length sent out of this interface */
};

/* LPM trie keys: prefix length in host order, then the address bytes in network order. */
struct rt_lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

struct rt_route {
	__u32 nexthop; /* index into rt_nexthops */
	__u32 flags;
};

struct rt_nexthop {
	__u32 ifindex; /* egress interface */
	__u32 flags;
	__u8 dmac[ETH_ALEN]; /* the neighbour's MAC */
	__u8 smac[ETH_ALEN]; /* the egress interface's MAC */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rt_config);
} rt_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RT_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct rt_iface);
} rt_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, RT_MAX_ROUTES);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__type(key, struct rt_lpm_key);
	__type(value, struct rt_route);
} rt_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RT_MAX_NEXTHOPS);
	__type(key, __u32);
	__type(value, struct rt_nexthop);
} rt_nexthops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RT_STAT_MAX);
	__type(key, __u32);
	__type(value, struct nfc_stat);
} rt_stats SEC(".maps");

static __always_inline int rt_done(__u32 features, __u32 reason, __u64 bytes, int verdict)
{
	if (features & RT_FEAT_STATS)
		nfc_stat_add(&rt_stats, reason, bytes);
	return verdict;
}

/* Decrement the TTL and patch the header checksum with RFC 1624 eqn. 3,
 * HC' = ~(~HC + ~m + m'), where m is the 16-bit word holding TTL and protocol.
 */
static __always_inline void rt_decrement_ttl(struct iphdr *iph)
{
	__u32 old_word = ((__u32)iph->ttl << 8) | iph->protocol;
	__u32 new_word = old_word - 0x0100;
	__u32 sum;

	sum = (~(__u32)bpf_ntohs(iph->check) & 0xffff) + (~old_word & 0xffff) + new_word;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	iph->check = bpf_htons((__u16)~sum);
	iph->ttl -= 1;
}

SEC("xdp")
int xdp_router(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 ingress = ctx->ingress_ifindex;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	struct rt_lpm_key key = { .prefixlen = 32 };
	struct rt_iface *in, *out;
	struct rt_nexthop *nh;
	struct rt_route *route;
	struct rt_config *config;
	__u32 zero = 0, features, total, nh_index, egress;

	config = bpf_map_lookup_elem(&rt_config, &zero);
	if (!config)
		return XDP_PASS;
	features = config->flags;

	if ((void *)(eth + 1) > data_end)
		return rt_done(features, RT_STAT_MALFORMED, bytes, XDP_DROP);
	if (!(features & RT_FEAT_FORWARD))
		return rt_done(features, RT_STAT_DISABLED, bytes, XDP_PASS);

	in = bpf_map_lookup_elem(&rt_ifaces, &ingress);
	if (!in || !(in->flags & RT_IF_ENABLED))
		return rt_done(features, RT_STAT_NOT_US, bytes, XDP_PASS);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return rt_done(features, RT_STAT_NOT_IP, bytes, XDP_PASS);
	if (!nfc_mac_equal(eth->h_dest, in->mac))
		return rt_done(features, RT_STAT_NOT_US, bytes, XDP_PASS);

	if ((void *)(iph + 1) > data_end)
		return rt_done(features, RT_STAT_MALFORMED, bytes, XDP_DROP);
	if (iph->version != 4 || iph->ihl < 5)
		return rt_done(features, RT_STAT_MALFORMED, bytes, XDP_DROP);
	/* Trailing bytes (Ethernet padding) are fine; a total length the frame cannot hold is not. */
	total = bpf_ntohs(iph->tot_len);
	if (total < sizeof(*iph) || total > (__u64)(data_end - (void *)iph))
		return rt_done(features, RT_STAT_MALFORMED, bytes, XDP_DROP);
	if (iph->ihl != 5)
		return rt_done(features, RT_STAT_OPTIONS, bytes, XDP_PASS);
	/* 224.0.0.0/4 (multicast) and 240.0.0.0/4 (class E, limited broadcast). */
	if ((bpf_ntohl(iph->daddr) >> 28) >= 0xe)
		return rt_done(features, RT_STAT_MCAST, bytes, XDP_PASS);
	if (iph->ttl <= 1)
		return rt_done(features, RT_STAT_TTL, bytes, XDP_PASS);

	key.addr = iph->daddr;
	route = bpf_map_lookup_elem(&rt_routes, &key);
	if (!route)
		return rt_done(features, RT_STAT_NO_ROUTE, bytes,
			       (features & RT_FEAT_NOROUTE_DROP) ? XDP_DROP : XDP_PASS);
	if (route->flags & RT_ROUTE_BLACKHOLE)
		return rt_done(features, RT_STAT_BLACKHOLE, bytes, XDP_DROP);
	if (route->flags & RT_ROUTE_LOCAL)
		return rt_done(features, RT_STAT_LOCAL, bytes, XDP_PASS);

	nh_index = route->nexthop;
	nh = bpf_map_lookup_elem(&rt_nexthops, &nh_index);
	if (!nh || !(nh->flags & RT_NH_VALID))
		return rt_done(features, RT_STAT_NO_NEIGH, bytes, XDP_PASS);
	egress = nh->ifindex;
	out = bpf_map_lookup_elem(&rt_ifaces, &egress);
	if (!out || !(out->flags & RT_IF_ENABLED))
		return rt_done(features, RT_STAT_LINK_DOWN, bytes, XDP_PASS);
	if (total > out->mtu)
		return rt_done(features, RT_STAT_MTU, bytes, XDP_PASS);

	rt_decrement_ttl(iph);
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	if (egress == ingress)
		return rt_done(features, RT_STAT_TX, bytes, XDP_TX);
	rt_done(features, RT_STAT_FORWARD, bytes, 0);
	return bpf_redirect(egress, 0);
}

char LICENSE[] SEC("license") = "GPL";
