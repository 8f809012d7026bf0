// SPDX-License-Identifier: GPL-2.0
/* Section names no loader knows (older tutorials and iproute2-era code use them): loaded with
 * a user-given type, `morpheus ... --type xdp` as `bpftool prog loadall ... type xdp`. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp_prog")
int xdp_nonstd_pass(struct xdp_md *ctx) { return XDP_PASS; }

SEC("prog/drop_small")
int xdp_nonstd_drop(struct xdp_md *ctx)
{
	return ctx->data_end - ctx->data < 60 ? XDP_DROP : XDP_PASS;
}

char _license[] SEC("license") = "GPL";
