// SPDX-License-Identifier: GPL-2.0
/* kfuncs and a typed ksym that live in kernel modules, not in vmlinux.
 *
 * The modules (mph_a, mph_b, mph_c) do not exist: the tests write their split BTF on top of
 * the kernel's and read this object against it (it is never loaded). libbpf looks a ksym up
 * in vmlinux first, then in each module's own BTF; a module kfunc call carries the module
 * BTF's index in the program's fd_array in `off` (index 0 is reserved: vmlinux), a typed
 * module ksym's ld_imm64 carries the module BTF's fd in its second immediate.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* in vmlinux: off 0 */
extern int bpf_dynptr_from_xdp(struct xdp_md *xdp, __u64 flags, struct bpf_dynptr *ptr) __ksym;
/* in module mph_a and mph_b (weak: its address load is a module BTF_ID load too) */
extern int bpf_mph_mod_a_kfunc(struct xdp_md *ctx, __u32 mark) __ksym;
extern int bpf_mph_mod_b_kfunc(struct xdp_md *ctx) __ksym __weak;
/* a flavour of mph_b's kfunc with another prototype: weak, so unset (libbpf's rule) */
extern int bpf_mph_mod_b_kfunc___old(struct xdp_md *ctx, __u64 flags, __u32 mark) __ksym __weak;
/* a variable of module mph_c, which has no kfunc this object calls */
extern const int mph_mod_counter __ksym;

SEC("xdp")
int xdp_module_kfuncs(struct xdp_md *ctx)
{
	struct bpf_dynptr ptr;

	if (bpf_dynptr_from_xdp(ctx, 0, &ptr))
		return XDP_PASS;
	if (bpf_mph_mod_b_kfunc___old)
		return bpf_mph_mod_b_kfunc___old(ctx, 0, 1);
	if (bpf_mph_mod_a_kfunc(ctx, *&mph_mod_counter))
		return XDP_DROP;
	if (bpf_mph_mod_b_kfunc)
		return bpf_mph_mod_b_kfunc(ctx);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
