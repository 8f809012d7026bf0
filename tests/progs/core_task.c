// SPDX-License-Identifier: GPL-2.0
/* CO-RE reads of the current task (tracing style: bpf_probe_read_kernel at relocated offsets)
 * from an XDP program: fields, bitfields (byte offset, size, shifts), an optional field behind
 * bpf_core_field_exists, enum values, the type's size. Any layout verifies, so the pure tests
 * relocate it against BTF they write (fields moved, bitfields shifted, a field missing, names
 * with flavours) and compare with libbpf given the same BTF (btf_custom_path).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct task_struct___v1 {
	int prio;
	unsigned int in_execve:1;
	unsigned int in_iowait:1;
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

enum pid_type___v1 {
	PIDTYPE_TGID___v1 = 9,
	PIDTYPE_SID___v1 = 10,
};

SEC("xdp")
int xdp_core_task(struct xdp_md *ctx)
{
	struct task_struct___v1 *t = (void *)bpf_get_current_task();
	__u64 score = 0;

	score += BPF_CORE_READ(t, pid);
	if (bpf_core_field_exists(t->tgid))
		score += BPF_CORE_READ(t, tgid);
	score += BPF_CORE_READ_BITFIELD_PROBED(t, in_execve);
	score += BPF_CORE_READ_BITFIELD_PROBED(t, in_iowait) << 1;
	score += bpf_core_field_offset(t->prio);
	score += bpf_core_type_size(struct task_struct___v1);
	if (bpf_core_enum_value_exists(enum pid_type___v1, PIDTYPE_TGID___v1))
		score += bpf_core_enum_value(enum pid_type___v1, PIDTYPE_TGID___v1);
	score += bpf_core_enum_value(enum pid_type___v1, PIDTYPE_SID___v1);
	return (score & 1) + 1;
}

char _license[] SEC("license") = "GPL";
