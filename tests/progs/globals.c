// SPDX-License-Identifier: GPL-2.0
/* A UDP port filter configured through global variables instead of maps.
 *
 * libbpf-style objects keep their configuration in `const volatile` globals (.rodata, set by
 * the loader before load and then frozen), mutable state in .data and zeroed state in .bss.
 * Each section becomes a one-element array map; the code reaches the variables through
 * ld_imm64 with BPF_PSEUDO_MAP_VALUE and an offset into the section, so several variables
 * (and a struct) per section exercise the offsets.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct filter_cfg {
	__u16 port_lo;		/* host byte order, inclusive */
	__u16 port_hi;
	__u32 max_len;		/* frames longer than this are dropped */
	__u8 router_mac[ETH_ALEN];
};

/* .rodata: the defaults below are what the loader sees unless the user rewrites them. */
const volatile __u32 verdict_hit = XDP_DROP;
const volatile __u32 sample_every = 64;
const volatile __u64 trace_cookie = 0x5eed0f0ddeadbeefULL;
const volatile struct filter_cfg cfg = {
	.port_lo = 5000,
	.port_hi = 5999,
	.max_len = 1514,
	.router_mac = { 0x02, 0x00, 0x5e, 0x00, 0x53, 0x01 },
};

/* .data: non-zero initial state. */
__u32 sample_countdown = 64;
struct {
	__u64 last_len;
	__u32 last_port;
	__u32 generation;
} last_hit = { .generation = 1 };

/* .bss: zero-initialised counters. */
__u64 seen;
__u64 hits;
__u64 oversized;
__u32 last_saddr;

/* The result of sampling goes to a plain map so user space can read it without mmap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sampled SEC(".maps");

static __always_inline int port_matches(__u16 port)
{
	return port >= cfg.port_lo && port <= cfg.port_hi;
}

SEC("xdp")
int xdp_port_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *udp;
	__u64 *slot;
	__u16 dport;

	__sync_fetch_and_add(&seen, 1);
	if (data + cfg.max_len < data_end) {
		oversized++;
		return XDP_DROP;
	}
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->ihl != 5 || iph->protocol != IPPROTO_UDP)
		return XDP_PASS;
	udp = (void *)(iph + 1);
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;

	dport = bpf_ntohs(udp->dest);
	if (!port_matches(dport))
		return XDP_PASS;

	hits++;
	last_saddr = iph->saddr;
	last_hit.last_len = data_end - data;
	last_hit.last_port = dport;
	last_hit.generation++;

	if (--sample_countdown == 0) {
		sample_countdown = sample_every;
		slot = bpf_map_lookup_elem(&sampled, &(__u32){0});
		if (slot)
			*slot = trace_cookie ^ hits;
	}
	return verdict_hit;
}

/* A second program in the same object reading the same .rodata: the sections are shared. */
SEC("xdp")
int xdp_mac_guard(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	int i;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	/* Only frames addressed to the router get further. */
	for (i = 0; i < ETH_ALEN; i++)
		if (eth->h_dest[i] != cfg.router_mac[i])
			return XDP_DROP;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
