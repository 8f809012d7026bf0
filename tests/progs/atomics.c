// SPDX-License-Identifier: GPL-2.0
/* Shared (not per-CPU) flow state updated with atomic instructions from every CPU.
 *
 * Covers each BPF_ATOMIC form clang emits: add without fetch (the old XADD), fetch-add whose
 * result is used, and/or/xor with and without fetch, xchg and cmpxchg, on 64 and 32 bits.
 * clang only emits the 32-bit forms other than plain add with -mcpu=v3 (they need ALU32), so
 * they sit behind __BPF_CPU_VERSION__. clang >= 17 predefines it; clang-16 does not, and
 * tests/progs/build.py passes -D__BPF_CPU_VERSION__=N for it (without that, the v3 object is
 * simply built like the v2 one).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __BPF_CPU_VERSION__
#define __BPF_CPU_VERSION__ 0
#endif

#define FLOW_SEEN_SYN	(1u << 0)
#define FLOW_SEEN_FIN	(1u << 1)
#define FLOW_SEEN_RST	(1u << 2)
#define FLOW_SAMPLED	(1u << 3)

struct flow_state {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns;	/* set once, by cmpxchg from 0 */
	__u64 last_seen_ns;	/* replaced by xchg */
	__u64 flags64;		/* FLOW_* bits, 64-bit or/and */
	__u64 digest;		/* xor of header words, order-independent */
	__u64 parity;		/* bit 0 flips on every packet: fetch-xor */
	__u32 flags;		/* FLOW_* bits, 32-bit or/and (v3) */
	__u32 seq;		/* per-flow packet sequence (v3: 32-bit fetch-add) */
	__u32 drops;
	__u32 digest32;
	__u32 owner_cpu;	/* 32-bit cmpxchg from 0 (v3) */
	__u32 last_len;		/* 32-bit xchg (v3) */
};

struct totals {
	__u64 packets;
	__u64 next_sample_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);		/* IPv4 source address */
	__type(value, struct flow_state);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct totals);
} totals SEC(".maps");

/* sample id -> flow key, a ring of the last 1024 sampled flows */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} samples SEC(".maps");

static __always_inline __u32 tcp_flag_bits(const struct tcphdr *tcp)
{
	return (tcp->syn ? FLOW_SEEN_SYN : 0) | (tcp->fin ? FLOW_SEEN_FIN : 0) |
	       (tcp->rst ? FLOW_SEEN_RST : 0);
}

SEC("xdp")
int xdp_flow_track(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	struct ethhdr *eth = data;
	struct flow_state *st;
	struct totals *tot;
	struct tcphdr *tcp;
	struct iphdr *iph;
	__u64 now, prev;
	__u32 saddr, bits;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_TCP || iph->ihl != 5)
		return XDP_PASS;
	tcp = (void *)(iph + 1);
	if ((void *)(tcp + 1) > data_end)
		return XDP_PASS;

	saddr = iph->saddr;
	st = bpf_map_lookup_elem(&flows, &saddr);
	if (!st) {
		struct flow_state init = {};

		bpf_map_update_elem(&flows, &saddr, &init, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&flows, &saddr);
		if (!st)
			return XDP_PASS;
	}

	/* Results unused: plain atomic add / or / xor. */
	__sync_fetch_and_add(&st->packets, 1);
	__sync_fetch_and_add(&st->bytes, len);
	bits = tcp_flag_bits(tcp);
	__sync_fetch_and_or(&st->flags64, bits);
	__sync_fetch_and_xor(&st->digest, *(__u64 *)tcp);
	if (bits & FLOW_SEEN_SYN)	/* a new connection on the same address */
		__sync_fetch_and_and(&st->flags64, ~(__u64)FLOW_SEEN_FIN);

	now = bpf_ktime_get_ns();
	__sync_val_compare_and_swap(&st->first_seen_ns, 0, now);
	prev = __sync_lock_test_and_set(&st->last_seen_ns, now);

	/* An RST after a long silence resets the flag history; the old flags say whether the
	 * flow had ever been sampled. */
	if ((bits & FLOW_SEEN_RST) && now - prev > 10000000000ULL) {
		/* drops: a 32-bit add without fetch, which v2 has too. */
		if (__sync_fetch_and_and(&st->flags64, ~(__u64)FLOW_SEEN_RST) & FLOW_SAMPLED)
			__sync_fetch_and_add(&st->drops, 1);
	}
	/* Toggle-and-test: only every other packet of a flow is considered for sampling. */
	if (__sync_fetch_and_xor(&st->parity, 1) & 1)
		goto out;

	tot = bpf_map_lookup_elem(&totals, &(__u32){0});
	if (tot) {
		__u64 id;

		__sync_fetch_and_add(&tot->packets, 1);
		/* Result used: a fetch-add hands out unique sample ids. */
		id = __sync_fetch_and_add(&tot->next_sample_id, 1);
		/* The old flags tell whether this flow was sampled before. */
		if ((id & 63) == 0 &&
		    !(__sync_fetch_and_or(&st->flags64, (__u64)FLOW_SAMPLED) & FLOW_SAMPLED)) {
			__u32 slot = (id >> 6) & 1023;

			bpf_map_update_elem(&samples, &slot, &saddr, BPF_ANY);
		}
	}

out:
#if __BPF_CPU_VERSION__ >= 3
	{
		/* 32-bit atomics other than add-without-fetch: ALU32 only. */
		__u32 seq = __sync_fetch_and_add(&st->seq, 1);
		__u32 old_flags = __sync_fetch_and_or(&st->flags, bits);

		__sync_fetch_and_xor(&st->digest32, seq ^ len);	/* result unused */
		__sync_val_compare_and_swap(&st->owner_cpu, 0, bpf_get_smp_processor_id() + 1);
		if (__sync_lock_test_and_set(&st->last_len, len) > len &&
		    !(old_flags & FLOW_SEEN_SYN))
			__sync_fetch_and_add(&st->drops, 1);
		if (bits & FLOW_SEEN_RST) {
			if (__sync_fetch_and_and(&st->flags, ~FLOW_SEEN_FIN) & FLOW_SAMPLED)
				__sync_fetch_and_or(&st->flags, FLOW_SEEN_RST);
			else
				__sync_fetch_and_and(&st->flags, ~FLOW_SEEN_SYN);
		}
		/* Old digest equal to this word: the new one is zero, the words cancelled out. */
		if (__sync_fetch_and_xor(&st->digest32, tcp->seq) == tcp->seq)
			__sync_fetch_and_add(&st->drops, 1);
	}
#endif
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
