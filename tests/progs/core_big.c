// SPDX-License-Identifier: GPL-2.0
/* A large CO-RE program (some 3,000 instructions, hundreds of relocations): the benchmark of
 * parse + relocation time (`morpheus parse-bench --btf-stats`), and a tag comparison of
 * relocation at scale. Every step re-reads sk_buff fields through CO-RE (the compiler
 * barrier keeps the loads apart) and folds them into a hash. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct sk_buff {
	unsigned int len;
	unsigned int data_len;
	__u16 mac_len;
	__u16 hdr_len;
	__u8 pkt_type:3;
	__u32 mark;
	__u32 priority;
	__u16 protocol;
	__u16 queue_mapping;
	__u32 hash;
} __attribute__((preserve_access_index));

struct sk_buff___future {
	__u32 morpheus_future_field;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

#define STEP(i)                                                                           \
	do {                                                                              \
		asm volatile("" ::: "memory");                                            \
		h = (h ^ (skb->len + (i))) * 0x9e3779b1u;                                  \
		h ^= skb->mark + skb->priority * (i);                                     \
		h += (skb->protocol ^ skb->queue_mapping) << ((i) & 7);                   \
		h ^= BPF_CORE_READ_BITFIELD(skb, pkt_type) + skb->hash;                   \
		if (bpf_core_field_exists(future->morpheus_future_field))                  \
			h += future->morpheus_future_field;                               \
		h += skb->mac_len ^ skb->hdr_len ^ skb->data_len;                          \
	} while (0)

#define STEP8(i) STEP(i); STEP(i + 1); STEP(i + 2); STEP(i + 3); \
		 STEP(i + 4); STEP(i + 5); STEP(i + 6); STEP(i + 7)

SEC("tc")
int tc_core_big(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	struct sk_buff___future *future = (void *)skb;
	__u32 h = 0;

	STEP8(0); STEP8(8); STEP8(16); STEP8(24); STEP8(32); STEP8(40); STEP8(48);
	ctx->mark = h;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
