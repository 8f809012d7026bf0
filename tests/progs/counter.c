// SPDX-License-Identifier: GPL-2.0
/* Per-protocol and per-source packet counters with a source blocklist.
 *
 * The smallest realistic XDP program: one entry point, no subprograms, a handful of plain
 * maps. Lookups use both a stack key and a key that points straight into the packet, since the
 * analysis has to recognise both kinds of key provenance.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct datarec {
	__u64 packets;
	__u64 bytes;
};

/* Indexed by IP protocol number; slot 0 also counts non-IPv4 frames. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct datarec);
} proto_stats SEC(".maps");

/* Keyed by IPv4 source address (network byte order). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct datarec);
} src_stats SEC(".maps");

/* Control plane: sources to drop. The value is unused, presence is what matters. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} blocklist SEC(".maps");

/* Control plane: slot 0 enables per-source accounting (it costs a hash update per new flow). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct ethhdr *eth = data;
	struct datarec *rec;
	struct iphdr *iph;
	__u32 key = 0;
	__u32 *enabled;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		goto account;

	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return XDP_DROP;
	key = iph->protocol;

	/* The key points into the packet: the verifier accepts packet memory as a map key. */
	if (bpf_map_lookup_elem(&blocklist, &iph->saddr))
		return XDP_DROP;

	enabled = bpf_map_lookup_elem(&settings, &(__u32){0});
	if (enabled && *enabled) {
		__u32 saddr = iph->saddr;

		rec = bpf_map_lookup_elem(&src_stats, &saddr);
		if (rec) {
			rec->packets++;
			rec->bytes += len;
		} else {
			struct datarec init = { .packets = 1, .bytes = len };

			bpf_map_update_elem(&src_stats, &saddr, &init, BPF_NOEXIST);
		}
	}

account:
	rec = bpf_map_lookup_elem(&proto_stats, &key);
	if (rec) {
		/* Per-CPU values: no atomics needed. */
		rec->packets++;
		rec->bytes += len;
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
