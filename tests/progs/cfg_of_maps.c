// SPDX-License-Identifier: GPL-2.0
/* Configuration behind maps of maps, looked up at a constant key and at the CPU id.
 *
 * `policy_outer` is an array of maps read at key 0: its inner hash map (UDP destination
 * port, network order → action) is the active policy, which a control plane replaces by
 * storing another inner map in slot 0. `tuning_outer` holds one single-entry config array
 * per CPU (Katran-style per-CPU selection); the program reads the TTL floor from it. The
 * data plane never writes either outer map nor their inner maps: only `counters`.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_CPUS 64

struct policy {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32);
	__type(key, __u16);
	__type(value, __u32);
};

struct tuning {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct policy);
} policy_outer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);
	__array(values, struct tuning);
} tuning_outer SEC(".maps");

/* action → packets */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 action)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &action);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("xdp")
int xdp_policy(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *udp;
	__u32 zero = 0, cpu, *action, *floor;
	__u16 port;
	void *inner;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_UDP)
		return XDP_PASS;
	udp = (void *)(iph + 1);
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;

	cpu = bpf_get_smp_processor_id();
	inner = bpf_map_lookup_elem(&tuning_outer, &cpu);
	if (inner) {
		floor = bpf_map_lookup_elem(inner, &zero);
		if (floor && iph->ttl < *floor) {
			count(3);
			return XDP_DROP;
		}
	}

	inner = bpf_map_lookup_elem(&policy_outer, &zero);
	if (!inner) {
		count(2);
		return XDP_PASS;	/* no policy installed */
	}
	port = udp->dest;
	action = bpf_map_lookup_elem(inner, &port);
	if (!action) {
		count(0);
		return XDP_PASS;
	}
	count(1);
	if (*action == XDP_TX) {
		/* Reflect: swap the UDP ports (checksum unchanged: a permutation of 16-bit words). */
		port = udp->source;
		udp->source = udp->dest;
		udp->dest = port;
		return XDP_TX;
	}
	return *action == XDP_DROP ? XDP_DROP : XDP_PASS;
}

char _license[] SEC("license") = "GPL";
