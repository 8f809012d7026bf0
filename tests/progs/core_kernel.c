// SPDX-License-Identifier: GPL-2.0
/* CO-RE on kernel types that packet and tracing programs use: struct sk_buff (reached from a
 * TC context through the bpf_cast_to_kern_ctx kfunc), struct task_struct, a bitfield inside
 * an anonymous struct group, an enum of the kernel, type existence, size, matching and ids, a
 * renamed type found through its ___flavour, and a field this kernel does not have, guarded
 * by bpf_core_field_exists (its access is poisoned and must be dead code).
 *
 * The local definitions list only the members used, at made-up offsets: relocation moves
 * them to the kernel's.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct sk_buff {
	unsigned int len;
	unsigned int data_len;
	__u16 mac_len;
	__u8 pkt_type:3;
	__u8 cloned:1;
	__u32 mark;
	__u32 priority;
	__u16 protocol;
} __attribute__((preserve_access_index));

/* A member no kernel has: every access to it must be guarded. */
struct sk_buff___future {
	__u32 morpheus_future_field;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	unsigned int flags;
} __attribute__((preserve_access_index));

/* The same kernel type under another local name (a "flavour"). */
struct task_struct___morpheus {
	int pid;
} __attribute__((preserve_access_index));

/* A type no kernel has. */
struct morpheus_no_such_type {
	int x;
} __attribute__((preserve_access_index));

enum skb_drop_reason {
	SKB_DROP_REASON_NO_SOCKET___morpheus = 77,
	SKB_DROP_REASON_MORPHEUS_NEVER = 78,
};

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

SEC("tc")
int tc_core_kernel(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	struct sk_buff___future *future = (void *)skb;
	struct task_struct *task = (void *)bpf_get_current_task();
	__u32 score = 0;

	score += skb->len + skb->mark;
	score += BPF_CORE_READ_BITFIELD(skb, pkt_type);
	score += BPF_CORE_READ_BITFIELD(skb, cloned) << 4;
	if (bpf_core_field_exists(future->morpheus_future_field))
		score += future->morpheus_future_field;
	score += bpf_core_field_size(skb->mark) + bpf_core_field_offset(skb->protocol);
	score += __builtin_preserve_field_info(task->pid, BPF_FIELD_SIGNED);
	if (bpf_core_type_exists(struct task_struct))
		score += BPF_CORE_READ(task, tgid) & 1;
	score += bpf_core_type_size(struct task_struct___morpheus) & 0xff;
	if (bpf_core_type_matches(struct task_struct___morpheus))
		score += 3;
	if (!bpf_core_type_exists(struct morpheus_no_such_type))
		score += 5;
	if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NO_SOCKET___morpheus))
		score += bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NO_SOCKET___morpheus);
	if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_MORPHEUS_NEVER))
		score += bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_MORPHEUS_NEVER);
	score += (bpf_core_type_id_kernel(struct sk_buff) != 0) + (bpf_core_type_id_local(struct sk_buff) != 0);
	ctx->mark = score;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
