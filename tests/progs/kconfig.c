// SPDX-License-Identifier: GPL-2.0
/* Unsupported: __kconfig externs.
 *
 * LINUX_KERNEL_VERSION and CONFIG_* values live in a .kconfig section that the loader must
 * synthesise from the running kernel's configuration (/proc/config.gz or /boot/config-*).
 * Our loader does not, and must refuse the object by name.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern int LINUX_KERNEL_VERSION __kconfig;
extern bool CONFIG_XDP_SOCKETS __kconfig __weak;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int xdp_to_xsk(struct xdp_md *ctx)
{
	/* Fallback to XDP_PASS in bpf_redirect_map's flags needs 5.3. */
	if (!CONFIG_XDP_SOCKETS || LINUX_KERNEL_VERSION < KERNEL_VERSION(5, 3, 0))
		return XDP_PASS;
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
