// SPDX-License-Identifier: GPL-2.0
/*
 * Byte-wise packet copies of unknown alignment, the shapes clang emits for a switch: a MAC
 * address copied into a map key, the twelve address bytes kept on the stack across
 * bpf_xdp_adjust_head and written back at the new start (a tag pop's move), and a u32 of
 * the frame gathered into a map value.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct mac_key {
	__u16 tag;
	__u8 mac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct mac_key);
	__type(value, __u32);
} macs_seen SEC(".maps");

SEC("xdp")
int xdp_bytecopy(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	struct mac_key key = {};
	__u8 macs[12];
	__u32 word;

	if (data + 20 > end)
		return XDP_PASS;
	key.tag = data[12];
	__builtin_memcpy(key.mac, data + 6, 6);
	__builtin_memcpy(&word, data + 14, 4);
	bpf_map_update_elem(&macs_seen, &key, &word, BPF_ANY);
	__builtin_memcpy(macs, data, sizeof(macs));
	if (data[13] & 1)
		return XDP_DROP;
	if (bpf_xdp_adjust_head(ctx, 4))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + 14 > end)
		return XDP_ABORTED;
	__builtin_memcpy(data, macs, sizeof(macs));
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
