// SPDX-License-Identifier: GPL-2.0
/* A perf event array without max_entries (one slot per possible CPU, set by the loader) and a
 * per-CPU ring of samples: the usual way an XDP program reports events to user space. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} samples SEC(".maps");

struct sample {
	__u32 ifindex;
	__u32 len;
};

SEC("xdp")
int xdp_sample(struct xdp_md *ctx)
{
	struct sample s = {
		.ifindex = ctx->ingress_ifindex,
		.len = ctx->data_end - ctx->data,
	};

	/* The frame's first bytes ride along (flags' upper 32 bits). */
	bpf_perf_event_output(ctx, &samples, BPF_F_CURRENT_CPU | ((__u64)64 << 32), &s, sizeof(s));
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
