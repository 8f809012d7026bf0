// SPDX-License-Identifier: GPL-2.0
/* A map pinned by name (LIBBPF_PIN_BY_NAME): shared by every load of the object, reused when a
 * compatible map is pinned already. The name is unusual so tests cannot collide with other
 * tools' pins under /sys/fs/bpf. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} morpheus_pin_cnt SEC(".maps");

/* The kernel adds BPF_F_RDONLY_PROG to every devmap: reuse must not call that a mismatch. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} morpheus_pin_ports SEC(".maps");

SEC("xdp")
int xdp_pinned_count(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *cnt = bpf_map_lookup_elem(&morpheus_pin_cnt, &key);

	if (cnt)
		__sync_fetch_and_add(cnt, 1);
	return bpf_redirect_map(&morpheus_pin_ports, 0, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
