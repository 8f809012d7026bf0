// SPDX-License-Identifier: GPL-2.0
/* A multi-stage firewall, large on purpose: the parse+link benchmark object.
 *
 * About 3,000 instructions over several XDP programs, more than twenty BTF-defined maps, global
 * and static subprograms shared between programs, and one relocation per map reference. The
 * stages are stamped out with macros, but each is a plausible check (ACL by field, rate limit,
 * statistics, NAT, marking) so the verifier and the analyses see realistic shapes.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define HASH_MAP(name, ktype, vtype, n)				\
	struct {						\
		__uint(type, BPF_MAP_TYPE_HASH);		\
		__uint(max_entries, n);				\
		__type(key, ktype);				\
		__type(value, vtype);				\
	} name SEC(".maps")

#define ARRAY_MAP(name, kind, vtype, n)				\
	struct {						\
		__uint(type, kind);				\
		__uint(max_entries, n);				\
		__type(key, __u32);				\
		__type(value, vtype);				\
	} name SEC(".maps")

struct rule {
	__u32 action;		/* XDP_DROP / XDP_PASS / XDP_TX */
	__u32 mark;
	__u64 hits;
};

struct bucket {
	__u64 stamp_ns;
	__s64 tokens;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct nat_entry {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct lpm_key {
	__u32 prefixlen;
	__u32 addr;
};

struct fw_event {
	__u32 saddr;
	__u32 daddr;
	__u32 mark;
	__u32 reason;
};

/* Everything the stages look at, parsed once per packet. */
struct meta {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tos;
	__u8 ttl;
	__u8 frag;
	__u32 len;
	__u32 ifindex;
	__u32 mark;
	__u32 reason;
};

/* ACLs, one per header field */
HASH_MAP(acl_saddr, __u32, struct rule, 65536);
HASH_MAP(acl_daddr, __u32, struct rule, 65536);
HASH_MAP(acl_sport, __u16, struct rule, 1024);
HASH_MAP(acl_dport, __u16, struct rule, 1024);
HASH_MAP(acl_ifindex, __u32, struct rule, 256);
ARRAY_MAP(acl_proto, BPF_MAP_TYPE_ARRAY, struct rule, 256);
ARRAY_MAP(acl_tos, BPF_MAP_TYPE_ARRAY, struct rule, 256);
ARRAY_MAP(acl_ttl, BPF_MAP_TYPE_ARRAY, struct rule, 256);

/* rate limits */
HASH_MAP(rl_saddr, __u32, struct bucket, 16384);
HASH_MAP(rl_daddr, __u32, struct bucket, 16384);
ARRAY_MAP(rl_proto, BPF_MAP_TYPE_ARRAY, struct bucket, 256);

/* statistics */
ARRAY_MAP(st_proto, BPF_MAP_TYPE_PERCPU_ARRAY, struct counter, 256);
ARRAY_MAP(st_ifindex, BPF_MAP_TYPE_PERCPU_ARRAY, struct counter, 256);
ARRAY_MAP(st_len, BPF_MAP_TYPE_PERCPU_ARRAY, struct counter, 16);
ARRAY_MAP(st_reason, BPF_MAP_TYPE_PERCPU_ARRAY, struct counter, 32);
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u16);
	__type(value, struct counter);
} st_dport SEC(".maps");

/* rewriting and state */
HASH_MAP(nat_dst, __u32, struct nat_entry, 4096);
HASH_MAP(nat_src, __u32, struct nat_entry, 4096);
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} flow_seen SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct rule);
} acl_prefix SEC(".maps");
ARRAY_MAP(fw_config, BPF_MAP_TYPE_ARRAY, __u64, 16);
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} fw_events SEC(".maps");

enum reason {
	R_NONE,
	R_SADDR,
	R_DADDR,
	R_SPORT,
	R_DPORT,
	R_IFINDEX,
	R_PROTO,
	R_TOS,
	R_TTL,
	R_PREFIX,
	R_RATE_SRC,
	R_RATE_DST,
	R_RATE_PROTO,
	R_FRAG,
	R_MAX = 32,
};

enum config {
	CFG_RATE_PPS,		/* tokens per second for each bucket */
	CFG_BURST,
	CFG_LOG_DROPS,
	CFG_ENFORCE,		/* 0: only count what would be dropped */
};

static __always_inline __u64 cfg(__u32 idx, __u64 dflt)
{
	__u64 *v = bpf_map_lookup_elem(&fw_config, &idx);

	return v && *v ? *v : dflt;
}

static __always_inline int parse(struct xdp_md *ctx, struct meta *m)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	struct udphdr *l4 = (void *)(iph + 1);

	if ((void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	__builtin_memset(m, 0, sizeof(*m));
	m->saddr = iph->saddr;
	m->daddr = iph->daddr;
	m->proto = iph->protocol;
	m->tos = iph->tos;
	m->ttl = iph->ttl;
	m->frag = !!(iph->frag_off & bpf_htons(0x3fff));
	m->len = data_end - data;
	m->ifindex = ctx->ingress_ifindex;
	if (iph->ihl == 5 && (void *)(l4 + 1) <= data_end &&
	    (iph->protocol == IPPROTO_UDP || iph->protocol == IPPROTO_TCP)) {
		m->sport = bpf_ntohs(l4->source);
		m->dport = bpf_ntohs(l4->dest);
	}
	return 0;
}

/* Returns 1 when the rule says drop. */
static __always_inline int apply_rule(struct rule *r, struct meta *m, __u32 why)
{
	if (!r)
		return 0;
	__sync_fetch_and_add(&r->hits, 1);
	m->mark |= r->mark;
	if (r->action != XDP_DROP)
		return 0;
	m->reason = why;
	return 1;
}

#define ACL(map, keyexpr, why)						\
	({								\
		typeof(keyexpr) __k = (keyexpr);			\
		apply_rule(bpf_map_lookup_elem(&map, &__k), m, why);	\
	})

/* Token bucket; returns 1 when over the limit. Signed tokens may dip below zero. */
static __always_inline int rate_limit(struct bucket *b, __u64 now, __u64 pps, __u64 burst)
{
	__s64 refill;

	if (!b)
		return 0;
	refill = (__s64)((now - b->stamp_ns) * pps / 1000000000ULL);
	if (refill > 0) {
		b->tokens += refill;
		b->stamp_ns = now;
	}
	if (b->tokens > (__s64)burst)
		b->tokens = burst;
	return --b->tokens < 0;
}

#define RATE(map, keyexpr, why)							\
	({									\
		typeof(keyexpr) __k = (keyexpr);				\
		struct bucket *__b = bpf_map_lookup_elem(&map, &__k);		\
		int __over = rate_limit(__b, now, pps, burst);			\
		if (__over)							\
			m->reason = why;					\
		__over;								\
	})

#define COUNT(map, keyexpr)							\
	do {									\
		typeof(keyexpr) __k = (keyexpr);				\
		struct counter *__c = bpf_map_lookup_elem(&map, &__k);		\
		if (__c) {							\
			__c->packets++;						\
			__c->bytes += m->len;					\
		}								\
	} while (0)

static __always_inline __u32 len_bucket(__u32 len)
{
	__u32 b = 0;

	if (len > 64) b++;
	if (len > 128) b++;
	if (len > 256) b++;
	if (len > 512) b++;
	if (len > 1024) b++;
	if (len > 1514) b++;
	if (len > 4096) b++;
	if (len > 9000) b++;
	return b;
}

/* Global: verified once, called from several programs. */
__noinline int log_drop(__u32 saddr, __u32 daddr, __u32 mark, __u32 reason)
{
	struct fw_event *ev;

	if (!cfg(CFG_LOG_DROPS, 0))
		return 0;
	ev = bpf_ringbuf_reserve(&fw_events, sizeof(*ev), 0);
	if (!ev)
		return -1;
	ev->saddr = saddr;
	ev->daddr = daddr;
	ev->mark = mark;
	ev->reason = reason;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

__noinline int count_reason(__u32 reason, __u32 len)
{
	struct counter *c = bpf_map_lookup_elem(&st_reason, &reason);

	if (!c)
		return 0;
	c->packets++;
	c->bytes += len;
	return 1;
}

static __noinline int verdict(struct meta *m, int drop)
{
	count_reason(m->reason, m->len);
	if (!drop)
		return XDP_PASS;
	log_drop(m->saddr, m->daddr, m->mark, m->reason);
	return cfg(CFG_ENFORCE, 1) ? XDP_DROP : XDP_PASS;
}

static __always_inline int acl_stages(struct meta *m)
{
	struct lpm_key pk = { .prefixlen = 32, .addr = m->saddr };

	if (ACL(acl_ifindex, m->ifindex, R_IFINDEX) ||
	    ACL(acl_saddr, m->saddr, R_SADDR) ||
	    ACL(acl_daddr, m->daddr, R_DADDR) ||
	    apply_rule(bpf_map_lookup_elem(&acl_prefix, &pk), m, R_PREFIX) ||
	    ACL(acl_proto, (__u32)m->proto, R_PROTO) ||
	    ACL(acl_tos, (__u32)m->tos, R_TOS) ||
	    ACL(acl_ttl, (__u32)m->ttl, R_TTL))
		return 1;
	if (m->proto != IPPROTO_UDP && m->proto != IPPROTO_TCP)
		return 0;
	return ACL(acl_sport, m->sport, R_SPORT) || ACL(acl_dport, m->dport, R_DPORT);
}

static __always_inline int rate_stages(struct meta *m)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 pps = cfg(CFG_RATE_PPS, 100000);
	__u64 burst = cfg(CFG_BURST, 1000);

	return RATE(rl_saddr, m->saddr, R_RATE_SRC) || RATE(rl_daddr, m->daddr, R_RATE_DST) ||
	       RATE(rl_proto, (__u32)m->proto, R_RATE_PROTO);
}

static __always_inline void stat_stages(struct meta *m)
{
	COUNT(st_proto, (__u32)m->proto);
	COUNT(st_ifindex, m->ifindex & 255);
	COUNT(st_len, len_bucket(m->len));
	if (m->dport) {
		struct counter *c = bpf_map_lookup_elem(&st_dport, &m->dport);

		if (c) {
			c->packets++;
			c->bytes += m->len;
		} else {
			struct counter init = { 1, m->len };

			bpf_map_update_elem(&st_dport, &m->dport, &init, BPF_NOEXIST);
		}
	}
}

static __always_inline void note_flow(struct meta *m)
{
	__u64 key = (__u64)m->saddr << 32 | m->daddr;
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&flow_seen, &key, &now, BPF_ANY);
}

/* Rewrites the address and port in place, with an incremental checksum update. */
static __always_inline int nat_rewrite(struct xdp_md *ctx, struct nat_entry *n, int dst)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + sizeof(struct ethhdr);
	struct udphdr *udp = (void *)(iph + 1);
	__u32 old, csum;

	if ((void *)(udp + 1) > data_end || iph->ihl != 5)
		return XDP_PASS;
	if (iph->ttl <= 1 || (iph->frag_off & bpf_htons(0x3fff)))
		return XDP_PASS;	/* the stack sends time-exceeded and reassembles */
	old = dst ? iph->daddr : iph->saddr;
	csum = (__u16)~iph->check;
	csum += (__u16)~(old & 0xffff) + (__u16)~(old >> 16);
	csum += (n->addr & 0xffff) + (n->addr >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	iph->check = ~csum;
	if (dst) {
		iph->daddr = n->addr;
		if (n->port)
			udp->dest = bpf_htons(n->port);
	} else {
		iph->saddr = n->addr;
		if (n->port)
			udp->source = bpf_htons(n->port);
	}
	udp->check = 0;		/* UDP over IPv4 may omit it; TCP is not NATed here */
	return XDP_PASS;
}

/* Deployment profiles: which stages a port runs is fixed when its program is chosen, so each
 * profile is its own program and the stages it does not need are compiled out. */
#define P_STATS		(1u << 0)
#define P_FRAG		(1u << 1)	/* drop IPv4 fragments */
#define P_ACL		(1u << 2)
#define P_RATE		(1u << 3)
#define P_FLOW		(1u << 4)	/* remember flows in the LRU */
#define P_DNAT		(1u << 5)
#define P_SNAT		(1u << 6)
#define P_MONITOR	(1u << 7)	/* count would-be drops, never drop */

static __always_inline int pipeline(struct xdp_md *ctx, const __u32 profile)
{
	struct meta mm, *m = &mm;
	struct nat_entry *n;
	int drop = 0;

	if (parse(ctx, m) < 0)
		return XDP_PASS;
	if (profile & P_STATS)
		stat_stages(m);
	if ((profile & P_FRAG) && m->frag) {
		m->reason = R_FRAG;
		return verdict(m, 1);
	}
	if (profile & P_ACL)
		drop = acl_stages(m);
	if (!drop && (profile & P_RATE))
		drop = rate_stages(m);
	if (profile & P_MONITOR) {
		if (drop)
			count_reason(m->reason, m->len);
		drop = 0;
	} else if (drop) {
		return verdict(m, 1);
	}
	if (profile & P_FLOW)
		note_flow(m);
	if ((profile & P_DNAT) && m->proto == IPPROTO_UDP) {
		n = bpf_map_lookup_elem(&nat_dst, &m->daddr);
		if (n)
			return nat_rewrite(ctx, n, 1);
	}
	if ((profile & P_SNAT) && m->proto == IPPROTO_UDP) {
		n = bpf_map_lookup_elem(&nat_src, &m->saddr);
		if (n)
			return nat_rewrite(ctx, n, 0);
	}
	return (profile & (P_ACL | P_RATE | P_FRAG)) ? verdict(m, 0) : XDP_PASS;
}

#define PROFILE(name, profile)				\
	SEC("xdp")					\
	int name(struct xdp_md *ctx)			\
	{						\
		return pipeline(ctx, profile);		\
	}

PROFILE(xdp_fw_full, P_STATS | P_FRAG | P_ACL | P_RATE | P_FLOW | P_DNAT)
PROFILE(xdp_fw_edge, P_STATS | P_ACL | P_RATE)
PROFILE(xdp_fw_strict, P_FRAG | P_ACL | P_RATE)
PROFILE(xdp_fw_acl, P_ACL)
PROFILE(xdp_fw_dnat, P_FRAG | P_ACL | P_DNAT)
PROFILE(xdp_fw_gateway, P_FRAG | P_ACL | P_FLOW | P_DNAT | P_SNAT)
PROFILE(xdp_fw_nat, P_STATS | P_FLOW | P_DNAT | P_SNAT)
PROFILE(xdp_fw_monitor, P_STATS | P_ACL | P_RATE | P_FLOW | P_MONITOR)

char _license[] SEC("license") = "GPL";
