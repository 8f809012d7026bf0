// SPDX-License-Identifier: GPL-2.0
/* Statically initialised prog arrays and maps of maps.
 *
 * `.values = { [i] = &x }` puts relocations in the .maps section itself (against programs or
 * other maps), which the loader turns into updates once everything is created.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct inner_counts {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
};

struct inner_counts counts_a SEC(".maps");
struct inner_counts counts_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct inner_counts);
} generations SEC(".maps") = {
	.values = { [0] = &counts_a, [1] = &counts_b },
};

SEC("xdp")
int xdp_stage_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

SEC("xdp")
int xdp_stage_pass(struct xdp_md *ctx)
{
	__u32 gen = 0, slot = 1;
	__u64 *cnt;
	void *inner;

	inner = bpf_map_lookup_elem(&generations, &gen);
	if (!inner)
		return XDP_PASS;
	cnt = bpf_map_lookup_elem(inner, &slot);
	if (cnt)
		__sync_fetch_and_add(cnt, 1);
	return XDP_PASS;
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, int (void *));
} stage_progs SEC(".maps") = {
	.values = { [0] = (void *)&xdp_stage_drop, [1] = (void *)&xdp_stage_pass },
};

SEC("xdp")
int xdp_stage_entry(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &stage_progs, ctx->rx_queue_index & 1);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
