// SPDX-License-Identifier: GPL-2.0
/* __ksym variables (kernel per-CPU variables resolved through vmlinux BTF).
 *
 * A typed ksym is loaded with an ld_imm64 of src_reg BPF_PSEUDO_BTF_ID carrying the variable's
 * BTF id in vmlinux; the extern sits undefined in .ksyms. The kfunc flavour is in ksym.c.
 *
 * The kernel resolves the address through kallsyms, so loading needs CONFIG_KALLSYMS_ALL;
 * without it even libbpf fails ("ldimm64 failed to find the address for kernel symbol").
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NET_RX_SOFTIRQ 3

/* Bit mask of softirqs raised on this CPU but not yet run. */
extern const __u16 __softirq_pending __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} rx_backlog SEC(".maps");

SEC("xdp")
int xdp_backlog_probe(struct xdp_md *ctx)
{
	const __u16 *pending = bpf_this_cpu_ptr(&__softirq_pending);
	/* Slot 1 counts frames that arrive while another NET_RX round is already queued. */
	__u32 slot = (*pending >> NET_RX_SOFTIRQ) & 1;
	__u64 *cnt;

	cnt = bpf_map_lookup_elem(&rx_backlog, &slot);
	if (cnt)
		*cnt += 1;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
