// SPDX-License-Identifier: GPL-2.0
/* TCP MSS clamping and a first-match ACL scanned three ways.
 *
 * Bounded loops reach the bytecode as real back edges only when clang does not unroll them, so
 * the plain loops carry an unroll-disable pragma. bpf_loop() takes its callback as an ld_imm64
 * with src_reg BPF_PSEUDO_FUNC, relocated against .text: a subprogram referenced as data, not
 * called.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_TCP_OPTS	10
#define MAX_RULES	32
#define TCPOPT_EOL	0
#define TCPOPT_NOP	1
#define TCPOPT_MSS	2

struct acl_rule {
	__u32 addr;		/* network order */
	__u32 mask;		/* network order; 0 marks the end of the list */
	__u16 port;		/* network order, 0 = any */
	__u8 proto;		/* 0 = any */
	__u8 action;		/* XDP_DROP or XDP_PASS */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RULES);
	__type(key, __u32);
	__type(value, struct acl_rule);
} acl_rules SEC(".maps");

/* slot 0: MSS to clamp to (host order), slot 1: number of valid rules */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} loop_cfg SEC(".maps");

/* Per-rule hit counters, shared by the three ACL programs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_RULES);
	__type(key, __u32);
	__type(value, __u64);
} rule_hits SEC(".maps");

struct acl_ctx {
	__u32 saddr;
	__u16 dport;
	__u8 proto;
	__u8 action;
	__u32 matched;	/* rule index + 1, 0 when nothing matched */
};

static __always_inline struct iphdr *ipv4_header(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);

	if ((void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || iph->ihl != 5)
		return NULL;
	return iph;
}

static __always_inline int rule_matches(const struct acl_rule *r, const struct acl_ctx *a)
{
	return (a->saddr & r->mask) == r->addr && (!r->port || r->port == a->dport) &&
	       (!r->proto || r->proto == a->proto);
}

static __always_inline int acl_ctx_init(struct xdp_md *ctx, struct acl_ctx *a)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = ipv4_header((void *)(long)ctx->data, data_end);
	struct tcphdr *tcp;

	if (!iph)
		return -1;
	tcp = (void *)(iph + 1);	/* UDP ports sit at the same offsets */
	if ((void *)(tcp + 1) > data_end)
		return -1;
	a->saddr = iph->saddr;
	a->dport = tcp->dest;
	a->proto = iph->protocol;
	a->action = XDP_PASS;
	a->matched = 0;
	return 0;
}

static __always_inline int acl_verdict(struct acl_ctx *a)
{
	__u32 idx = a->matched - 1;
	__u64 one = 1, *hits;

	if (!a->matched)
		return XDP_PASS;
	hits = bpf_map_lookup_elem(&rule_hits, &idx);
	if (hits)
		__sync_fetch_and_add(hits, 1);
	else
		bpf_map_update_elem(&rule_hits, &idx, &one, BPF_NOEXIST);
	return a->action;
}

SEC("xdp")
int xdp_mss_clamp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = ipv4_header(data, data_end);
	__u32 *max_mss;
	struct tcphdr *tcp;
	__u8 *opt, *opt_end;
	int i;

	if (!iph || iph->protocol != IPPROTO_TCP)
		return XDP_PASS;
	tcp = (void *)(iph + 1);
	if ((void *)(tcp + 1) > data_end || !tcp->syn)
		return XDP_PASS;
	max_mss = bpf_map_lookup_elem(&loop_cfg, &(__u32){0});
	if (!max_mss || !*max_mss)
		return XDP_PASS;

	opt = (__u8 *)(tcp + 1);
	opt_end = (__u8 *)tcp + tcp->doff * 4;
#pragma clang loop unroll(disable)
	for (i = 0; i < MAX_TCP_OPTS; i++) {
		if ((void *)(opt + 1) > data_end || opt >= opt_end || opt[0] == TCPOPT_EOL)
			break;
		if (opt[0] == TCPOPT_NOP) {
			opt++;
			continue;
		}
		if ((void *)(opt + 2) > data_end || opt[1] < 2)
			break;
		if (opt[0] == TCPOPT_MSS && opt[1] == 4) {
			__u16 *mss = (__u16 *)(opt + 2);

			if ((void *)(mss + 1) > data_end)
				break;
			if (bpf_ntohs(*mss) > *max_mss) {
				/* RFC 1624 incremental update of the TCP checksum. */
				__u32 csum = (__u16)~tcp->check + (__u16)~*mss;
				__u16 new_mss = bpf_htons(*max_mss);

				csum += new_mss;
				csum = (csum & 0xffff) + (csum >> 16);
				csum = (csum & 0xffff) + (csum >> 16);
				tcp->check = ~csum;
				*mss = new_mss;
			}
			break;
		}
		opt += opt[1];
	}
	return XDP_PASS;
}

/* First match with a plain bounded loop that stays a loop in the bytecode. */
SEC("xdp")
int xdp_acl_for(struct xdp_md *ctx)
{
	struct acl_ctx a;
	int i;

	if (acl_ctx_init(ctx, &a) < 0)
		return XDP_PASS;
#pragma unroll 1
	for (i = 0; i < MAX_RULES; i++) {
		/* A separate key: a counter whose address escapes to the stack loses its bounds. */
		__u32 key = i;
		struct acl_rule *r = bpf_map_lookup_elem(&acl_rules, &key);

		if (!r || !r->mask)
			break;
		if (rule_matches(r, &a)) {
			a.action = r->action;
			a.matched = i + 1;
			break;
		}
	}
	return acl_verdict(&a);
}

/* The same scan with an open-coded while loop whose bound comes from a map. */
SEC("xdp")
int xdp_acl_while(struct xdp_md *ctx)
{
	struct acl_ctx a;
	__u32 i = 0, *nr;

	if (acl_ctx_init(ctx, &a) < 0)
		return XDP_PASS;
	nr = bpf_map_lookup_elem(&loop_cfg, &(__u32){1});
	if (!nr)
		return XDP_PASS;
#pragma clang loop unroll(disable)
	while (i < *nr && i < MAX_RULES) {
		__u32 key = i;
		struct acl_rule *r = bpf_map_lookup_elem(&acl_rules, &key);

		if (r && rule_matches(r, &a)) {
			a.action = r->action;
			a.matched = i + 1;
			break;
		}
		i++;
	}
	return acl_verdict(&a);
}

static long acl_step(__u32 index, void *data)
{
	struct acl_ctx *a = data;
	struct acl_rule *r = bpf_map_lookup_elem(&acl_rules, &index);

	if (!r || !r->mask)
		return 1;	/* end of list: stop */
	if (rule_matches(r, a)) {
		a->action = r->action;
		a->matched = index + 1;
		return 1;
	}
	return 0;
}

/* And with bpf_loop(): the verifier checks the callback once instead of per iteration. */
SEC("xdp")
int xdp_acl_bpf_loop(struct xdp_md *ctx)
{
	struct acl_ctx a;

	if (acl_ctx_init(ctx, &a) < 0)
		return XDP_PASS;
	bpf_loop(MAX_RULES, acl_step, &a, 0);
	return acl_verdict(&a);
}

char _license[] SEC("license") = "GPL";
