// SPDX-License-Identifier: GPL-2.0
/* A CO-RE access to a field this kernel lacks, NOT guarded by bpf_core_field_exists: the
 * relocation is poisoned (as libbpf does) and the verifier refuses the program; the loader's
 * error must name the program, the instruction, the type and the field. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct xdp_md___future {
	__u32 morpheus_rx_hash;
} __attribute__((preserve_access_index));

SEC("xdp")
int xdp_unguarded(struct xdp_md *ctx)
{
	struct xdp_md___future *c = (void *)ctx;

	return c->morpheus_rx_hash & 1 ? XDP_DROP : XDP_PASS;
}

char _license[] SEC("license") = "GPL";
