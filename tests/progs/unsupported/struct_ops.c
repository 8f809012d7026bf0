// SPDX-License-Identifier: GPL-2.0
/* Unsupported: struct_ops programs (kernel callbacks implemented in BPF).
 *
 * A struct_ops program is registered through a STRUCT_OPS map of a kernel type (here a TCP
 * congestion control's callbacks); our loader does not create those maps and must refuse the
 * object, naming the feature, the program and its section.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("struct_ops/morpheus_cong_init")
int morpheus_cong_init(void *sk)
{
	return 0;
}

SEC("xdp")
int xdp_plain(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
