// SPDX-License-Identifier: GPL-2.0
/*
 * One large XDP program (about 3,000 instructions, 16 maps) for timing the optimizer's
 * analysis and specialization on a program of production size: a chain of classification
 * stages, each reading packet fields, looking them up in its own table and folding the
 * result into a verdict, as policy pipelines do.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct stage_value {
	__u32 action;
	__u32 weight;
	__u64 mask;
};

#define STAGE_MAP(n)                                          \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_HASH);              \
		__uint(max_entries, 4096);                    \
		__type(key, __u64);                           \
		__type(value, struct stage_value);            \
	} stage##n SEC(".maps");

STAGE_MAP(0) STAGE_MAP(1) STAGE_MAP(2) STAGE_MAP(3) STAGE_MAP(4) STAGE_MAP(5) STAGE_MAP(6)
STAGE_MAP(7) STAGE_MAP(8) STAGE_MAP(9) STAGE_MAP(10) STAGE_MAP(11) STAGE_MAP(12)
STAGE_MAP(13) STAGE_MAP(14)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} knobs SEC(".maps");

#define STAGE(n)                                                                  \
	do {                                                                      \
		__u64 key = 0;                                                    \
		__u32 idx = (n);                                                  \
		__u64 *knob = bpf_map_lookup_elem(&knobs, &idx);                  \
		if (knob && (*knob & 1))                                          \
			break;                                                    \
		if (data + 64 > end)                                              \
			return XDP_PASS;                                          \
		__builtin_memcpy(&key, data + ((n) * 3) % 56, 8);                 \
		key ^= acc;                                                       \
		key = (key << ((n) % 13)) | (key >> (64 - ((n) % 13 + 1)));       \
		struct stage_value *v = bpf_map_lookup_elem(&stage##n, &key);     \
		if (v) {                                                          \
			if (v->action == 1)                                       \
				return XDP_DROP;                                  \
			if (v->action == 2)                                       \
				verdict = XDP_TX;                                 \
			acc = (acc + v->weight) & v->mask;                        \
			score += v->weight * ((n) + 1);                           \
		} else {                                                          \
			acc = acc * 31 + (n);                                     \
		}                                                                 \
		if (score > 1000000 + (n) * 17)                                   \
			return XDP_ABORTED;                                       \
	} while (0)

SEC("xdp")
int xdp_pipeline(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 acc = 0x9e3779b97f4a7c15ULL, score = 0;
	int verdict = XDP_PASS;

	STAGE(0); STAGE(1); STAGE(2); STAGE(3); STAGE(4); STAGE(5); STAGE(6); STAGE(7);
	STAGE(8); STAGE(9); STAGE(10); STAGE(11); STAGE(12); STAGE(13); STAGE(14);
	STAGE(0); STAGE(1); STAGE(2); STAGE(3); STAGE(4); STAGE(5); STAGE(6); STAGE(7);
	STAGE(8); STAGE(9); STAGE(10); STAGE(11); STAGE(12); STAGE(13); STAGE(14);
	STAGE(0); STAGE(1); STAGE(2); STAGE(3); STAGE(4); STAGE(5); STAGE(6); STAGE(7);
	STAGE(8); STAGE(9); STAGE(10); STAGE(11); STAGE(12); STAGE(13); STAGE(14);
	return verdict;
}

char _license[] SEC("license") = "GPL";
