// SPDX-License-Identifier: GPL-2.0
/* Legacy map definitions in SEC("maps"), as iproute2's tc loader still reads them: libbpf
 * 1.x refuses the object, our loader reads it when asked (--legacy-maps). One map uses
 * libbpf's old struct bpf_map_def, shaped like iproute2's struct bpf_elf_map (whose extra
 * fields are id, pinning, inner_id, inner_idx) so both layouts are exercised by size. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct bpf_elf_map {
	__u32 type;
	__u32 size_key;
	__u32 size_value;
	__u32 max_elem;
	__u32 flags;
	__u32 id;
	__u32 pinning;
	__u32 inner_id;
	__u32 inner_idx;
};

struct bpf_elf_map SEC("maps") legacy_counts = {
	.type = BPF_MAP_TYPE_PERCPU_ARRAY,
	.size_key = sizeof(__u32),
	.size_value = sizeof(__u64),
	.max_elem = 16,
};

struct bpf_elf_map SEC("maps") legacy_marks = {
	.type = BPF_MAP_TYPE_HASH,
	.size_key = sizeof(__u32),
	.size_value = sizeof(__u32),
	.max_elem = 1024,
	.flags = BPF_F_NO_PREALLOC,
};

SEC("classifier")
int tc_legacy(struct __sk_buff *skb)
{
	__u32 slot = skb->protocol & 15, mark = skb->mark;
	__u64 *cnt = bpf_map_lookup_elem(&legacy_counts, &slot);
	__u32 *remark;

	if (cnt)
		*cnt += 1;
	remark = bpf_map_lookup_elem(&legacy_marks, &mark);
	if (remark)
		skb->mark = *remark;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
