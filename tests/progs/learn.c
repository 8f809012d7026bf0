// SPDX-License-Identifier: GPL-2.0
/*
 * A table the data plane writes, in the smallest form: byte 0 of the frame says "learn"
 * (write key -> value) or "look up"; the key is bytes 2..5, the value byte 6.
 * Look-ups answer XDP_TX for value 1, XDP_DROP for value 2, XDP_PASS when absent.
 * Twice: over a hash map, and over an LRU hash map (a connection table's kind).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} lru_table SEC(".maps");

static __always_inline int learn_or_look_up(struct xdp_md *ctx, void *map)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	if (data + 14 > end)
		return XDP_ABORTED;
	__u32 key = *(__u32 *)(data + 2);
	if (data[0] == 1) {
		__u32 value = data[6];
		bpf_map_update_elem(map, &key, &value, BPF_ANY);
		return XDP_PASS;
	}
	__u32 *value = bpf_map_lookup_elem(map, &key);
	if (!value)
		return XDP_PASS;
	return *value == 1 ? XDP_TX : XDP_DROP;
}

SEC("xdp")
int xdp_learn(struct xdp_md *ctx)
{
	return learn_or_look_up(ctx, &table);
}

SEC("xdp")
int xdp_learn_lru(struct xdp_md *ctx)
{
	return learn_or_look_up(ctx, &lru_table);
}

char _license[] SEC("license") = "GPL";
