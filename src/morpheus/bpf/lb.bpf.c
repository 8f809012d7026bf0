// SPDX-License-Identifier: GPL-2.0-only
/* lb: an L4 load balancer in the style of Katran.
 *
 * A packet to a VIP (address, port, protocol; port 0 in the table means "every port") is sent
 * to one of the VIP's backends, chosen by a Maglev consistent-hashing ring that the control
 * plane (src/morpheus/nf/lb.py) fills, and remembered in an LRU connection table so that
 * established flows keep their backend when the ring changes. The packet leaves IP-in-IP
 * encapsulated (outer source: the configured LB address, outer destination: the backend) in a
 * new Ethernet header towards the configured gateway, with XDP_TX.
 *
 * Verdicts: not IPv4 (including 802.1Q-tagged frames) -> XDP_PASS; truncated or invalid
 * Ethernet/IPv4/TCP/UDP headers -> XDP_DROP; IPv4 with options or fragmented -> XDP_PASS
 * (the stack deals with them: they carry no usable 5-tuple here); neither TCP nor UDP ->
 * XDP_PASS; no VIP -> XDP_PASS; VIP whose ring slot has no backend -> XDP_DROP;
 * bpf_xdp_adjust_head failure -> XDP_DROP; otherwise XDP_TX.
 *
 * The connection table is read and written only when lb_config.features has LB_F_CONNTRACK and
 * the VIP lacks LB_VIP_LRU_BYPASS. An entry whose backend slot has since been emptied (address
 * 0) is ignored and overwritten with the ring's current choice.
 */
#include "nf_l4.h"

#define LB_MAX_VIPS 64
#define LB_RING_SIZE 4099 /* prime, as Maglev requires; > 100x the backends of a VIP */
#define LB_MAX_BACKENDS 1024
#define LB_HASH_SEED 0x4d6f7270 /* "Morp" */
#define LB_OUTER_TTL 64

/* lb_config.features */
#define LB_F_STATS 0x1
#define LB_F_CONNTRACK 0x2

/* lb_vip_meta.flags */
#define LB_VIP_NO_SPORT 0x1    /* leave the source port out of the hash (clients that hop ports) */
#define LB_VIP_LRU_BYPASS 0x2  /* never use the connection table for this VIP */

enum lb_stat {
	LB_STAT_NON_IP = 0,   /* passed: not IPv4 */
	LB_STAT_MALFORMED,    /* dropped: truncated or invalid headers */
	LB_STAT_OPT_FRAG,     /* passed: IPv4 options or fragment */
	LB_STAT_NON_L4,       /* passed: neither TCP nor UDP */
	LB_STAT_NO_VIP,       /* passed: destination is no VIP */
	LB_STAT_CONN_HIT,     /* backend taken from the connection table */
	LB_STAT_CONN_MISS,    /* backend chosen by the ring */
	LB_STAT_NO_BACKEND,   /* dropped: the ring slot has no backend */
	LB_STAT_ENCAP_FAIL,   /* dropped: bpf_xdp_adjust_head failed */
	LB_STAT_TX,           /* encapsulated and sent */
	LB_STAT_MAX,
};

/* Run-time configuration: one entry, written by the control plane. */
struct lb_config {
	__be32 src_addr;   /* outer source address */
	__u8 own_mac[6];   /* outer Ethernet source */
	__u8 gw_mac[6];    /* outer Ethernet destination: the next hop towards the backends */
	__u32 features;    /* LB_F_* */
};

struct lb_vip_key {
	__be32 addr;
	__be16 port; /* 0: every port */
	__u8 proto;
	__u8 pad;
};

struct lb_vip_meta {
	__u32 index; /* ring number and slot in lb_vip_stats */
	__u32 flags; /* LB_VIP_* */
};

struct lb_backend {
	__be32 addr; /* 0: empty slot */
	__u32 flags; /* reserved */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} lb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, struct lb_vip_key);
	__type(value, struct lb_vip_meta);
} lb_vips SEC(".maps");

/* Ring of VIP i at [i * LB_RING_SIZE, (i + 1) * LB_RING_SIZE): backend indices. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_VIPS * LB_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} lb_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
} lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nf_flow_key);
	__type(value, __u32); /* backend index */
} lb_conn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct nf_counter);
} lb_vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, struct nf_counter);
} lb_stats SEC(".maps");

static __always_inline __u32 rotl32(__u32 x, __u32 r)
{
	return (x << r) | (x >> (32 - r));
}

/* One murmur3-style mixing round: the hash only has to spread flows evenly over the ring and
 * be cheap to mirror exactly in Python (morpheus.nf.lb.flow_hash).
 */
static __always_inline __u32 mix_word(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

/* Addresses and ports in host order, so that the value does not depend on endianness. */
static __always_inline __u32 flow_hash(__u32 saddr, __u32 daddr, __u32 ports, __u32 proto)
{
	__u32 h = LB_HASH_SEED;

	h = mix_word(h, saddr);
	h = mix_word(h, daddr);
	h = mix_word(h, ports);
	h = mix_word(h, proto);
	h ^= 16;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline void count(struct lb_config *cfg, __u32 stat, __u32 len)
{
	if (cfg->features & LB_F_STATS)
		nf_count(&lb_stats, stat, len);
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	struct ethhdr *eth = data;
	struct iphdr *iph, *outer;
	struct lb_config *cfg;
	struct lb_vip_key vkey = {};
	struct lb_vip_meta *vip;
	struct lb_backend *backend = NULL;
	struct nf_flow_key flow = {};
	__u32 zero = 0, bidx, *slot, *conn, sport, hash, csum;
	__u16 inner_len;
	__u8 tos;
	int use_conn;

	cfg = bpf_map_lookup_elem(&lb_config, &zero);
	if (!cfg)
		return XDP_ABORTED;

	if ((void *)(eth + 1) > data_end)
		goto malformed;
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		count(cfg, LB_STAT_NON_IP, len);
		return XDP_PASS;
	}
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		goto malformed;
	if (iph->version != 4 || iph->ihl < 5)
		goto malformed;
	if (iph->ihl != 5 || (iph->frag_off & bpf_htons(IP_MF | IP_OFFMASK))) {
		count(cfg, LB_STAT_OPT_FRAG, len);
		return XDP_PASS;
	}
	if (iph->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(iph + 1);

		if ((void *)(tcp + 1) > data_end)
			goto malformed;
		flow.sport = tcp->source;
		flow.dport = tcp->dest;
	} else if (iph->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(iph + 1);

		if ((void *)(udp + 1) > data_end)
			goto malformed;
		flow.sport = udp->source;
		flow.dport = udp->dest;
	} else {
		count(cfg, LB_STAT_NON_L4, len);
		return XDP_PASS;
	}
	flow.saddr = iph->saddr;
	flow.daddr = iph->daddr;
	flow.proto = iph->protocol;

	vkey.addr = flow.daddr;
	vkey.port = flow.dport;
	vkey.proto = flow.proto;
	vip = bpf_map_lookup_elem(&lb_vips, &vkey);
	if (!vip) {
		vkey.port = 0;
		vip = bpf_map_lookup_elem(&lb_vips, &vkey);
		if (!vip) {
			count(cfg, LB_STAT_NO_VIP, len);
			return XDP_PASS;
		}
	}
	if (cfg->features & LB_F_STATS)
		nf_count(&lb_vip_stats, vip->index, len);

	use_conn = (cfg->features & LB_F_CONNTRACK) && !(vip->flags & LB_VIP_LRU_BYPASS);
	if (use_conn) {
		conn = bpf_map_lookup_elem(&lb_conn, &flow);
		if (conn) {
			bidx = *conn;
			backend = bpf_map_lookup_elem(&lb_backends, &bidx);
			if (backend && !backend->addr)
				backend = NULL;
		}
	}
	if (backend) {
		count(cfg, LB_STAT_CONN_HIT, len);
	} else {
		sport = vip->flags & LB_VIP_NO_SPORT ? 0 : bpf_ntohs(flow.sport);
		hash = flow_hash(bpf_ntohl(flow.saddr), bpf_ntohl(flow.daddr),
				 sport << 16 | bpf_ntohs(flow.dport), flow.proto);
		bidx = vip->index * LB_RING_SIZE + hash % LB_RING_SIZE;
		slot = bpf_map_lookup_elem(&lb_ring, &bidx);
		if (!slot)
			goto no_backend;
		bidx = *slot;
		backend = bpf_map_lookup_elem(&lb_backends, &bidx);
		if (!backend || !backend->addr)
			goto no_backend;
		if (use_conn)
			bpf_map_update_elem(&lb_conn, &flow, &bidx, BPF_ANY);
		count(cfg, LB_STAT_CONN_MISS, len);
	}

	/* Everything needed from the inner header, read before the packet moves. */
	inner_len = bpf_ntohs(iph->tot_len);
	tos = iph->tos;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr))) {
		count(cfg, LB_STAT_ENCAP_FAIL, len);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > data_end) {
		count(cfg, LB_STAT_ENCAP_FAIL, len);
		return XDP_DROP;
	}
	/* The old Ethernet header now lies under the outer IP header: write over it. */
	__builtin_memcpy(eth->h_dest, cfg->gw_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->own_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + sizeof(struct iphdr));
	outer->id = 0;
	outer->frag_off = 0;
	outer->ttl = LB_OUTER_TTL;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = cfg->src_addr;
	outer->daddr = backend->addr;

	csum = 0;
#pragma unroll
	for (int i = 0; i < (int)sizeof(struct iphdr) / 2; i++)
		csum += ((__u16 *)outer)[i];
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	outer->check = ~csum & 0xffff;

	count(cfg, LB_STAT_TX, len);
	return XDP_TX;

no_backend:
	count(cfg, LB_STAT_NO_BACKEND, len);
	return XDP_DROP;
malformed:
	count(cfg, LB_STAT_MALFORMED, len);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
