// SPDX-License-Identifier: GPL-2.0
/* __ksym externs: kfunc calls resolved against kernel BTF.
 *
 * bpf_dynptr_from_xdp() and bpf_dynptr_slice() are kfuncs: the object carries an undefined
 * extern symbol in .ksyms and a call instruction with src_reg BPF_PSEUDO_KFUNC_CALL whose
 * target BTF id is looked up in vmlinux BTF. A weak kfunc no kernel has is 0 (its address
 * test is false, and the guarded call is dead code).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

extern int bpf_dynptr_from_xdp(struct xdp_md *xdp, __u64 flags, struct bpf_dynptr *ptr) __ksym;
extern void *bpf_dynptr_slice(const struct bpf_dynptr *ptr, __u32 offset, void *buffer,
			      __u32 buffer__szk) __ksym;
extern int bpf_morpheus_no_such_kfunc(struct xdp_md *ctx) __ksym __weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ipv6_frames SEC(".maps");

SEC("xdp")
int xdp_dynptr_parse(struct xdp_md *ctx)
{
	struct bpf_dynptr ptr;
	struct ethhdr buf, *eth;
	__u64 *cnt;

	/* Works across fragmented (multi-buffer) frames, unlike data/data_end. */
	if (bpf_morpheus_no_such_kfunc)
		return bpf_morpheus_no_such_kfunc(ctx);
	if (bpf_dynptr_from_xdp(ctx, 0, &ptr))
		return XDP_PASS;
	eth = bpf_dynptr_slice(&ptr, 0, &buf, sizeof(buf));
	if (!eth || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return XDP_PASS;
	cnt = bpf_map_lookup_elem(&ipv6_frames, &(__u32){0});
	if (cnt)
		*cnt += 1;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
