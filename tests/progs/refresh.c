// SPDX-License-Identifier: GPL-2.0
/*
 * A station table the data plane writes through the value pointer, the switch's learning
 * in its smallest form: bytes 0..3 of the frame are the key, byte 4 the port it arrives on.
 * A static entry answers XDP_TX and is never touched; a known station on its port gets its
 * timestamp refreshed at most once a second, has its mark flipped when byte 5 of the frame
 * is 1, and answers by its mark (read after both writes); a station on another port, or a
 * new one, is (re)inserted whole.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define REFRESH_NS 1000000000ull

struct station {
	__u32 port;
	__u32 flags; /* 1: static, 2: marked (its frames are dropped) */
	__u64 last_seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct station);
} stations SEC(".maps");

SEC("xdp")
int xdp_refresh(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	struct station fresh = {};
	struct station *st;
	__u32 key, port;
	__u64 now;

	if (data + 14 > end)
		return XDP_ABORTED;
	key = *(__u32 *)data;
	port = data[4];
	st = bpf_map_lookup_elem(&stations, &key);
	if (st && (st->flags & 1))
		return XDP_TX;
	now = bpf_ktime_get_ns();
	if (st && st->port == port) {
		if (now - st->last_seen > REFRESH_NS)
			st->last_seen = now;
		if (data[5] == 1)
			st->flags ^= 2;
		return st->flags & 2 ? XDP_DROP : XDP_PASS;
	}
	fresh.port = port;
	fresh.last_seen = now;
	bpf_map_update_elem(&stations, &key, &fresh, BPF_ANY);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
