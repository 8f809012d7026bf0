// SPDX-License-Identifier: GPL-2.0
/*
 * In-kernel trace replay harness.
 *
 * Run by BPF_PROG_TEST_RUN in live-frames mode: every frame gets the bytes and length of the
 * next packet of a trace stored in the `trace` array, is handed to the program under test,
 * and is dropped. The program under test is linked in place of `prog_under_test` at the
 * bytecode level (morpheus.bench.harness), so it runs as a BPF-to-BPF subprogram with the
 * real xdp_md context. Verdicts are counted and recorded per packet; with `record_latency`
 * the time around the call is recorded too.
 *
 * Live frames reset data/data_end for each frame but not the bytes, so every byte of the
 * packet is rewritten, and a program that rewrites or encapsulates a packet never sees its
 * own output.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_PKT_LEN 1536
#define NUM_VERDICTS 8

struct trace_pkt {
	__u32 len;
	__u8 data[MAX_PKT_LEN];
};

struct record {
	__u32 verdict;
	__u32 ns;
};

struct harness_state {
	__u32 next;	/* index of the next packet to replay */
	__u32 count;	/* packets in the trace */
	__u64 frames;	/* frames seen */
	__u64 errors;	/* packets that could not be copied into the frame */
	__u64 total_ns;	/* sum of the recorded latencies */
	__u64 verdicts[NUM_VERDICTS];
};

/* max_entries is set by the runner to the trace length before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trace_pkt);
} trace SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct record);
} records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct harness_state);
} hstate SEC(".maps");

/* Set before loading: the frozen .rodata makes the verifier drop the unused branches.
 *   record_latency   time the call of the program under test with bpf_ktime_get_ns
 *   redirect_ifindex generator mode: fill the frame and transmit it on this device
 *                    (bpf_redirect) instead of calling the program under test
 *   sink             sink mode: frames come from the wire, do not fill them; call the
 *                    program under test and count
 */
const volatile __u32 record_latency = 0;
const volatile __u32 redirect_ifindex = 0;
const volatile __u32 sink = 0;

/* Replaced by the program under test; this body only runs when nothing was linked in. */
__attribute__((noinline)) int prog_under_test(struct xdp_md *ctx)
{
	return ctx->ingress_ifindex == 0xffffffff ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int replay(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct harness_state *st = bpf_map_lookup_elem(&hstate, &zero);
	if (!st || st->count == 0)
		return XDP_DROP;

	__u32 idx = st->next;
	if (idx >= st->count)
		idx = 0;
	st->next = idx + 1;
	st->frames++;

	if (sink)
		goto call;

	struct trace_pkt *pkt = bpf_map_lookup_elem(&trace, &idx);
	if (!pkt)
		return XDP_DROP;
	__u32 len = pkt->len;
	int frame_len = (int)(ctx->data_end - ctx->data);
	if (len < 14 || len > MAX_PKT_LEN || (int)len > frame_len) {
		st->errors++;
		return XDP_DROP;
	}
	/* Live frames start at their original length: shrink to this packet's length. */
	if ((int)len != frame_len && bpf_xdp_adjust_tail(ctx, (int)len - frame_len)) {
		st->errors++;
		return XDP_DROP;
	}
	if (bpf_xdp_store_bytes(ctx, 0, pkt->data, len)) {
		st->errors++;
		return XDP_DROP;
	}
	if (redirect_ifindex)
		return bpf_redirect(redirect_ifindex, 0);

call:;
	__u64 start = 0;
	if (record_latency)
		start = bpf_ktime_get_ns();
	int verdict = prog_under_test(ctx);
	__u32 ns = 0;
	if (record_latency) {
		ns = (__u32)(bpf_ktime_get_ns() - start);
		st->total_ns += ns;
	}

	__u32 v = (__u32)verdict < NUM_VERDICTS ? (__u32)verdict : NUM_VERDICTS - 1;
	st->verdicts[v & (NUM_VERDICTS - 1)]++;
	struct record *rec = bpf_map_lookup_elem(&records, &idx);
	if (rec) {
		rec->verdict = (__u32)verdict;
		rec->ns = ns;
	}
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
