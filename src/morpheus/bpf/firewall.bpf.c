// SPDX-License-Identifier: GPL-2.0-only
/* firewall: an ACL classifier in the style of bpf-iptables, with connection tracking.
 *
 * The rule set is compiled by the control plane (src/morpheus/nf/firewall.py) into one
 * "Linear Bit-Vector Search" table per field: each field value maps to the bit vector of the
 * rules that field value satisfies, bit i standing for the rule of priority rank i (0 = first).
 * The data plane looks up the five bit vectors, ANDs them and takes the lowest set bit: that is
 * the first matching rule, whose action comes from fw_actions. No rule is compiled into code,
 * so rules change without reloading the program.
 *
 *   source / destination address   LPM trie: prefix -> rules whose prefix covers it
 *   source / destination port      hash: port -> rules; FW_PORT_DEFAULT holds the bit vector
 *                                  of every port the table does not list, FW_PORT_NONE the
 *                                  rules that match packets without ports (port wildcards)
 *   protocol                       array: IP protocol -> rules
 *
 * Verdicts: accepted -> XDP_PASS (into the stack), dropped -> XDP_DROP, not IPv4 -> XDP_PASS,
 * malformed Ethernet/802.1Q/IPv4/TCP/UDP headers -> XDP_DROP. One 802.1Q tag is skipped.
 * Non-first fragments carry no ports: they are classified as packets without ports, so only
 * rules whose port fields are wildcards can match them (iptables semantics), and they never
 * touch the connection table.
 *
 * Connection tracking (when fw_config.conntrack is set): packets of a flow found in fw_conntrack
 * are accepted without classification. An accepted UDP packet, or an accepted TCP packet with
 * SYN set and neither ACK nor RST, creates the entries of both directions. A TCP packet with RST
 * that hits an entry is accepted and deletes both directions. Nothing else changes the table.
 */
#include "nf_l4.h"

#define FW_MAX_RULES 512
#define FW_WORDS (FW_MAX_RULES / 64)
#define FW_PORT_DEFAULT 0x10000 /* bit vector of the ports the port table does not list */
#define FW_PORT_NONE 0x10001 /* bit vector for packets without ports */
#define FW_RULE_NONE 0xffffffff

enum fw_action_code {
	FW_DROP = 0,
	FW_ACCEPT = 1,
};

enum fw_stat {
	FW_STAT_NON_IP = 0,      /* passed: not IPv4 */
	FW_STAT_MALFORMED,       /* dropped: truncated or invalid headers */
	FW_STAT_CT_HIT,          /* passed: established flow */
	FW_STAT_RULE_ACCEPT,     /* passed by a rule */
	FW_STAT_RULE_DROP,       /* dropped by a rule */
	FW_STAT_DEFAULT_ACCEPT,  /* passed by the default policy */
	FW_STAT_DEFAULT_DROP,    /* dropped by the default policy */
	FW_STAT_CT_NEW,          /* accepted packets that created a connection */
	FW_STAT_MAX,
};

/* Run-time configuration: one entry, written by the control plane. */
struct fw_config {
	__u32 default_action; /* enum fw_action_code when no rule matches */
	__u32 conntrack;      /* non-zero: track connections */
	__u32 stats;          /* non-zero: update fw_stats and fw_rule_stats */
	__u32 rule_words;     /* 64-bit words of the bit vectors in use (ceil(rules / 64)) */
};

struct fw_lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

struct fw_bitvec {
	__u64 word[FW_WORDS];
};

struct fw_action {
	__u32 action;  /* enum fw_action_code */
	__u32 rule_id; /* the operator's id of the rule at this rank */
};

struct fw_ct_value {
	__u64 packets;
	__u32 rule;  /* rank of the rule that accepted the flow, FW_RULE_NONE for the default */
	__u32 reply; /* 1 for the entry of the reply direction */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_config);
} fw_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_lpm_key);
	__type(value, struct fw_bitvec);
} fw_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_lpm_key);
	__type(value, struct fw_bitvec);
} fw_dst SEC(".maps");

/* Keys are host-order port numbers, FW_PORT_DEFAULT and FW_PORT_NONE. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536 + 2);
	__type(key, __u32);
	__type(value, struct fw_bitvec);
} fw_sport SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536 + 2);
	__type(key, __u32);
	__type(value, struct fw_bitvec);
} fw_dport SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct fw_bitvec);
} fw_proto SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct fw_action);
} fw_actions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nf_flow_key);
	__type(value, struct fw_ct_value);
} fw_conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_STAT_MAX);
	__type(key, __u32);
	__type(value, struct nf_counter);
} fw_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct nf_counter);
} fw_rule_stats SEC(".maps");

/* Index of the lowest set bit of a non-zero word: the population count of the ones below it,
 * branch-free. A branchy binary search costs the verifier a path per outcome (and the CPU
 * mispredictions); __builtin_ctzll may be lowered to a table in .rodata, which we keep free
 * of anything the program depends on.
 */
static __always_inline __u32 lowest_bit(__u64 x)
{
	__u64 m = (x & -x) - 1;

	m = m - ((m >> 1) & 0x5555555555555555ULL);
	m = (m & 0x3333333333333333ULL) + ((m >> 2) & 0x3333333333333333ULL);
	m = (m + (m >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (m * 0x0101010101010101ULL) >> 56;
}

static __always_inline struct fw_bitvec *port_bits(void *map, __u32 port, int has_ports)
{
	__u32 key = has_ports ? port : FW_PORT_NONE;
	struct fw_bitvec *bits = bpf_map_lookup_elem(map, &key);

	if (!bits && has_ports) {
		key = FW_PORT_DEFAULT;
		bits = bpf_map_lookup_elem(map, &key);
	}
	return bits;
}

/* Rank of the first rule matching the packet, FW_RULE_NONE if none does. */
static __always_inline __u32 classify(struct fw_config *cfg, __be32 saddr, __be32 daddr,
				      __u32 proto, __u32 sport, __u32 dport, int has_ports)
{
	struct fw_lpm_key key = { .prefixlen = 32, .addr = saddr };
	struct fw_bitvec *src, *dst, *prot, *sp, *dp;
	__u32 nwords = cfg->rule_words;

	src = bpf_map_lookup_elem(&fw_src, &key);
	if (!src)
		return FW_RULE_NONE;
	key.addr = daddr;
	dst = bpf_map_lookup_elem(&fw_dst, &key);
	if (!dst)
		return FW_RULE_NONE;
	prot = bpf_map_lookup_elem(&fw_proto, &proto);
	if (!prot)
		return FW_RULE_NONE;
	sp = port_bits(&fw_sport, sport, has_ports);
	if (!sp)
		return FW_RULE_NONE;
	dp = port_bits(&fw_dport, dport, has_ports);
	if (!dp)
		return FW_RULE_NONE;

#pragma unroll
	for (__u32 w = 0; w < FW_WORDS; w++) {
		__u64 match;

		if (w >= nwords)
			break;
		match = src->word[w] & dst->word[w] & prot->word[w] & sp->word[w] & dp->word[w];
		if (match)
			return w * 64 + lowest_bit(match);
	}
	return FW_RULE_NONE;
}

SEC("xdp")
int xdp_firewall(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct fw_config *cfg;
	struct nf_flow_key flow = {};
	struct fw_action *act;
	void *l4;
	__u32 zero = 0, rule, proto, sport = 0, dport = 0, accept, stat;
	__u16 ethertype, frag;
	__u8 tcp_flags = 0;
	int has_ports;

	cfg = bpf_map_lookup_elem(&fw_config, &zero);
	if (!cfg)
		return XDP_ABORTED;

	if ((void *)(eth + 1) > data_end)
		goto malformed;
	ethertype = eth->h_proto;
	iph = (void *)(eth + 1);
	if (ethertype == bpf_htons(ETH_P_8021Q)) {
		struct nf_vlan_hdr *vlan = (void *)(eth + 1);

		if ((void *)(vlan + 1) > data_end)
			goto malformed;
		ethertype = vlan->encap_proto;
		iph = (void *)(vlan + 1);
	}
	if (ethertype != bpf_htons(ETH_P_IP)) {
		if (cfg->stats)
			nf_count(&fw_stats, FW_STAT_NON_IP, len);
		return XDP_PASS;
	}

	if ((void *)(iph + 1) > data_end)
		goto malformed;
	if (iph->version != 4 || iph->ihl < 5)
		goto malformed;
	l4 = (void *)iph + iph->ihl * 4;
	if (l4 > data_end)
		goto malformed;

	proto = iph->protocol;
	frag = bpf_ntohs(iph->frag_off);
	/* Only the first fragment (offset 0) carries the transport header. */
	has_ports = !(frag & IP_OFFMASK) && (proto == IPPROTO_TCP || proto == IPPROTO_UDP);
	if (has_ports) {
		if (proto == IPPROTO_TCP) {
			struct tcphdr *tcp = l4;

			if ((void *)(tcp + 1) > data_end)
				goto malformed;
			flow.sport = tcp->source;
			flow.dport = tcp->dest;
			tcp_flags = ((__u8 *)tcp)[13];
		} else {
			struct udphdr *udp = l4;

			if ((void *)(udp + 1) > data_end)
				goto malformed;
			flow.sport = udp->source;
			flow.dport = udp->dest;
		}
		sport = bpf_ntohs(flow.sport);
		dport = bpf_ntohs(flow.dport);
	}
	flow.saddr = iph->saddr;
	flow.daddr = iph->daddr;
	flow.proto = proto;

	if (cfg->conntrack && has_ports) {
		struct fw_ct_value *ct = bpf_map_lookup_elem(&fw_conntrack, &flow);

		if (ct) {
			__sync_fetch_and_add(&ct->packets, 1);
			if (proto == IPPROTO_TCP && (tcp_flags & TCP_FLAG_RST_BYTE)) {
				struct nf_flow_key rev = {
					.saddr = flow.daddr, .daddr = flow.saddr,
					.sport = flow.dport, .dport = flow.sport,
					.proto = flow.proto,
				};

				bpf_map_delete_elem(&fw_conntrack, &flow);
				bpf_map_delete_elem(&fw_conntrack, &rev);
			}
			if (cfg->stats)
				nf_count(&fw_stats, FW_STAT_CT_HIT, len);
			return XDP_PASS;
		}
	}

	rule = classify(cfg, flow.saddr, flow.daddr, proto, sport, dport, has_ports);
	act = rule == FW_RULE_NONE ? NULL : bpf_map_lookup_elem(&fw_actions, &rule);
	if (act) {
		accept = act->action == FW_ACCEPT;
		stat = accept ? FW_STAT_RULE_ACCEPT : FW_STAT_RULE_DROP;
		if (cfg->stats)
			nf_count(&fw_rule_stats, rule, len);
	} else {
		rule = FW_RULE_NONE;
		accept = cfg->default_action == FW_ACCEPT;
		stat = accept ? FW_STAT_DEFAULT_ACCEPT : FW_STAT_DEFAULT_DROP;
	}
	if (cfg->stats)
		nf_count(&fw_stats, stat, len);
	if (!accept)
		return XDP_DROP;

	if (cfg->conntrack && has_ports &&
	    (proto == IPPROTO_UDP ||
	     (tcp_flags & (TCP_FLAG_SYN_BYTE | TCP_FLAG_ACK_BYTE | TCP_FLAG_RST_BYTE)) ==
		     TCP_FLAG_SYN_BYTE)) {
		struct fw_ct_value value = { .packets = 1, .rule = rule, .reply = 0 };
		struct nf_flow_key rev = {
			.saddr = flow.daddr, .daddr = flow.saddr,
			.sport = flow.dport, .dport = flow.sport,
			.proto = flow.proto,
		};

		bpf_map_update_elem(&fw_conntrack, &flow, &value, BPF_ANY);
		value.packets = 0;
		value.reply = 1;
		bpf_map_update_elem(&fw_conntrack, &rev, &value, BPF_ANY);
		if (cfg->stats)
			nf_count(&fw_stats, FW_STAT_CT_NEW, len);
	}
	return XDP_PASS;

malformed:
	if (cfg->stats)
		nf_count(&fw_stats, FW_STAT_MALFORMED, len);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
