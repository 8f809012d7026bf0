// SPDX-License-Identifier: GPL-2.0
/* __kconfig externs.
 *
 * LINUX_KERNEL_VERSION and CONFIG_* values live in a .kconfig map that the loader synthesises
 * from the running kernel's configuration (/proc/config.gz or /boot/config-*). A weak extern
 * the configuration lacks is 0; CONFIG_HZ is a number, the tristate an enum.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern int LINUX_KERNEL_VERSION __kconfig;
extern bool CONFIG_XDP_SOCKETS __kconfig __weak;
extern int CONFIG_HZ __kconfig;
extern enum libbpf_tristate CONFIG_NET_CLS_BPF __kconfig __weak;
extern int CONFIG_MORPHEUS_NEVER_SET __kconfig __weak;

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
	if (CONFIG_MORPHEUS_NEVER_SET || CONFIG_HZ < 100 || CONFIG_NET_CLS_BPF == TRI_NO)
		return XDP_DROP;
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
