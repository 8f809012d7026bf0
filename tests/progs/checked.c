// SPDX-License-Identifier: GPL-2.0
/* A program made to exercise the equivalence checker: it stores bpf_ktime_get_ns() and
 * bpf_get_prandom_u32() in maps, writes every kind of map the checker must compare (hash,
 * LRU, LPM-routed redirects, per-CPU counters, a Katran-like stats entry, per-CPU LRU maps
 * inside an array of maps selected by CPU id), redirects by ifindex and through a devmap,
 * and is reached from a root program by a tail call.
 *
 * Frames: Ethernet + IPv4 + UDP. The destination address is routed through `routes` to a
 * port: bit 8 of the port selects bpf_redirect_map(&ports, port & 0xff), otherwise
 * bpf_redirect(port). Every routed packet's TTL is decremented.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
};

struct flow_state {
	__u64 last_ns;
	__u32 rnd;
	__u32 packets;
	__u32 port;
	__u32 sampled;
};

struct route_key {
	__u32 prefixlen;
	__u32 addr;
};

struct stamp {
	__u64 last_ns;
	__u64 packets;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 64);
	__type(key, struct route_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);  /* sampling mask over the random number */
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, struct flow_key);
	__type(value, struct flow_state);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u64);
} sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stamp);
} stats SEC(".maps");

struct cpu_conns {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 8);
	__type(key, __u32);
	__array(values, struct cpu_conns);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} jump SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
}

SEC("xdp")
int xdp_checked(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)ip + sizeof(*ip);
	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ihl != 5 || ip->protocol != IPPROTO_UDP) {
		count(0);
		return XDP_PASS;
	}
	__u64 now = bpf_ktime_get_ns();
	__u32 zero = 0;
	struct stamp *st = bpf_map_lookup_elem(&stats, &zero);
	if (st) {
		st->last_ns = now;
		__sync_fetch_and_add(&st->packets, 1);
	}
	struct route_key rk = {32, ip->daddr};
	__u32 *port = bpf_map_lookup_elem(&routes, &rk);
	if (!port) {
		count(1);
		return XDP_DROP;
	}
	struct flow_key fk = {ip->saddr, ip->daddr, udp->source, udp->dest};
	struct flow_state *f = bpf_map_lookup_elem(&flows, &fk);
	if (!f) {
		struct flow_state fresh = {now, bpf_get_prandom_u32(), 1, *port, 0};
		__u32 *mask = bpf_map_lookup_elem(&config, &zero);
		if (mask && !(fresh.rnd & *mask))
			fresh.sampled = 1;
		bpf_map_update_elem(&flows, &fk, &fresh, BPF_NOEXIST);
	} else {
		f->last_ns = now;
		f->packets += 1;
	}
	__u64 seen = bpf_ktime_get_ns();
	bpf_map_update_elem(&sources, &ip->saddr, &seen, BPF_ANY);
	__u32 cpu = bpf_get_smp_processor_id();
	void *inner = bpf_map_lookup_elem(&conns, &cpu);
	if (inner)
		bpf_map_update_elem(inner, &ip->saddr, &now, BPF_ANY);
	count(2);
	if (ip->ttl <= 1)
		return XDP_DROP;
	ip->ttl -= 1;
	ip->check += bpf_htons(0x0100);
	__u32 p = *port;
	if (p & 0x100)
		return bpf_redirect_map(&ports, p & 0xff, XDP_DROP);
	return bpf_redirect(p, 0);
}

SEC("xdp")
int xdp_root(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &jump, 0);
	count(3);
	return XDP_ABORTED;
}

char _license[] SEC("license") = "GPL";
