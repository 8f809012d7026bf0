// SPDX-License-Identifier: GPL-2.0
/* A load balancer with Katran's shape (our own code, written for the tests).
 *
 * - Connection tracking in per-CPU LRU maps held by an array of maps indexed by CPU id, with
 *   a shared fallback LRU for a CPU without one: the map pointer is one of several maps at
 *   the join after the lookup, and every write through it may be a write to each.
 * - A Maglev-style ring: MAX_VIPS rings of RING_SIZE slots (over 1M entries) in one array,
 *   mapping a flow hash to a real.
 * - A stats entry holding the time of the last packet (bpf_ktime_get_ns), and a fallback
 *   counter that must stay 0 when every CPU has its LRU map.
 * - A root program that tail-calls the balancer through a prog array the control plane
 *   fills (slot 0).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_VIPS 16
#define RING_SIZE 65537
#define MAX_REALS 4096
#define MAX_CPUS 64
#define LRU_SIZE 4096
#define FALLBACK_LRU_SIZE 1024

/* stats indices after the per-VIP entries */
#define STATS_LRU (MAX_VIPS + 0)	/* v1: packets to a VIP, v2: connection-table misses */
#define STATS_FALLBACK (MAX_VIPS + 1)	/* v1: packets that used the fallback LRU */
#define STATS_LAST_SEEN (MAX_VIPS + 2)	/* v1: bpf_ktime_get_ns() of the last packet */
#define STATS_MAX (MAX_VIPS + 3)

struct flow_key {
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct real_pos_lru {
	__u32 pos;
	__u32 pad;
	__u64 atime;
};

struct vip_definition {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct vip_meta {
	__u32 flags;
	__u32 vip_num;
};

struct real_definition {
	__be32 dst;
	__u8 mac[ETH_ALEN];
	__u8 pad[2];
};

struct lb_stats {
	__u64 v1;
	__u64 v2;
};

struct conn_lru {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LRU_SIZE);
	__type(key, struct flow_key);
	__type(value, struct real_pos_lru);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);
	__array(values, struct conn_lru);
} lru_mapping SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FALLBACK_LRU_SIZE);
	__type(key, struct flow_key);
	__type(value, struct real_pos_lru);
} fallback_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, struct vip_definition);
	__type(value, struct vip_meta);
} vip_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_VIPS * RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} ch_rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_REALS);
	__type(key, __u32);
	__type(value, struct real_definition);
} reals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATS_MAX);
	__type(key, __u32);
	__type(value, struct lb_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} root_array SEC(".maps");

static __always_inline __u32 flow_hash(const struct flow_key *f)
{
	__u32 h = f->src * 0x9e3779b1;

	h ^= f->dst + 0x85ebca6b + (h << 6) + (h >> 2);
	h ^= (((__u32)f->sport << 16) | f->dport) + 0xc2b2ae35 + (h << 6) + (h >> 2);
	h ^= f->proto;
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	return h;
}

static __always_inline void stats_add(__u32 index, __u64 v1, __u64 v2)
{
	struct lb_stats *s = bpf_map_lookup_elem(&stats, &index);

	if (s) {
		s->v1 += v1;
		s->v2 += v2;
	}
}

SEC("xdp")
int balancer_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct vip_definition vd = {};
	struct flow_key flow = {};
	struct real_pos_lru *dst_lru;
	struct real_definition *real;
	struct vip_meta *meta;
	struct iphdr *iph;
	__u32 cpu, key, pos, last = STATS_LAST_SEEN;
	struct lb_stats *seen;
	void *lru_map;
	__u64 now;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->ihl != 5)
		return XDP_PASS;
	if (iph->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(iph + 1);

		if ((void *)(udp + 1) > data_end)
			return XDP_DROP;
		flow.sport = udp->source;
		flow.dport = udp->dest;
	} else if (iph->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(iph + 1);

		if ((void *)(tcp + 1) > data_end)
			return XDP_DROP;
		flow.sport = tcp->source;
		flow.dport = tcp->dest;
	} else {
		return XDP_PASS;
	}
	flow.src = iph->saddr;
	flow.dst = iph->daddr;
	flow.proto = iph->protocol;

	vd.vip = iph->daddr;
	vd.port = flow.dport;
	vd.proto = flow.proto;
	meta = bpf_map_lookup_elem(&vip_map, &vd);
	if (!meta)
		return XDP_PASS;
	stats_add(STATS_LRU, 1, 0);

	cpu = bpf_get_smp_processor_id();
	lru_map = bpf_map_lookup_elem(&lru_mapping, &cpu);
	if (!lru_map) {
		/* Should never happen in production: every CPU gets its own LRU map. */
		lru_map = &fallback_cache;
		stats_add(STATS_FALLBACK, 1, 0);
	}

	now = bpf_ktime_get_ns();
	dst_lru = bpf_map_lookup_elem(lru_map, &flow);
	if (dst_lru) {
		pos = dst_lru->pos;
		if (flow.proto == IPPROTO_UDP)
			dst_lru->atime = now;
	} else {
		struct real_pos_lru fresh = {};
		__u32 *slot;

		if (meta->vip_num >= MAX_VIPS)
			return XDP_DROP;
		key = meta->vip_num * RING_SIZE + flow_hash(&flow) % RING_SIZE;
		slot = bpf_map_lookup_elem(&ch_rings, &key);
		if (!slot)
			return XDP_DROP;
		pos = *slot;
		fresh.pos = pos;
		fresh.atime = now;
		bpf_map_update_elem(lru_map, &flow, &fresh, BPF_ANY);
		stats_add(STATS_LRU, 0, 1);
	}

	real = bpf_map_lookup_elem(&reals, &pos);
	if (!real || !real->dst)
		return XDP_DROP;
	stats_add(meta->vip_num < MAX_VIPS ? meta->vip_num : 0, 1, data_end - data);
	seen = bpf_map_lookup_elem(&stats, &last);
	if (seen)
		seen->v1 = now;

	/* Forward to the real: new destination address (incremental checksum, RFC 1624) and
	 * MAC, back out of the same port. */
	__u32 csum = (__u16)~iph->check;
	csum += (__u16)~(iph->daddr & 0xffff) + (__u16)~(iph->daddr >> 16);
	csum += (real->dst & 0xffff) + (real->dst >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	iph->check = ~csum;
	iph->daddr = real->dst;
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, real->mac, ETH_ALEN);
	return XDP_TX;
}

SEC("xdp")
int xdp_root(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &root_array, 0);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
