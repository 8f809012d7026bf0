// SPDX-License-Identifier: GPL-2.0
/* CO-RE relocations (.BTF.ext core_relo records) on a context type.
 *
 * A local copy of struct xdp_md marked preserve_access_index: every field access and
 * bpf_core_field_exists() becomes a CO-RE relocation resolved against the target kernel's
 * BTF (the running one, or one given with --btf: the CLI tests move and remove the field).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* The "___local" flavour suffix makes libbpf match it against the kernel's struct xdp_md. */
struct xdp_md___local {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} rxq_packets SEC(".maps");

SEC("xdp")
int xdp_rxq_count(struct xdp_md *ctx)
{
	struct xdp_md___local *c = (void *)ctx;
	__u32 queue;
	__u64 *cnt;

	/* rx_queue_index appeared in 4.16; count everything on queue 0 before that. */
	if (bpf_core_field_exists(c->rx_queue_index))
		queue = c->rx_queue_index & 63;
	else
		queue = 0;
	cnt = bpf_map_lookup_elem(&rxq_packets, &queue);
	if (cnt)
		*cnt += 1;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
