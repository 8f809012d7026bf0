// SPDX-License-Identifier: GPL-2.0
/* Subprograms inside the program's own section, iproute2 style.
 *
 * Older tc/XDP code marks every function with the program's section. clang then resolves a
 * call to a static function in the same section itself (pc-relative imm, no relocation), and
 * the callee sits in the section next to, here before, the programs that call it. libbpf 1.x
 * refuses such objects ("program 'ipv4_ok' is static and not supported"), cilium/ebpf accepts
 * them, and so must we: that is why this file is not among the libbpf-comparable sources.
 * A .text subprogram (csum_fold) is called as well, so one program links code from both.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define __section_xdp __attribute__((section("xdp")))

/* In .text, as usual. */
static __noinline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* In the "xdp" section, ahead of both programs that call it. */
static __noinline __section_xdp int ipv4_ok(struct iphdr *iph, void *data_end)
{
	__u16 *w = (__u16 *)iph;
	__u32 sum = 0;
	int i;

	if ((void *)(iph + 1) > data_end || iph->version != 4 || iph->ihl != 5)
		return 0;
	if (bpf_ntohs(iph->tot_len) < sizeof(*iph))
		return 0;
	for (i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += w[i];
	return csum_fold(sum) == 0;
}

SEC("xdp")
int xdp_ip_sanity(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	return ipv4_ok((void *)(eth + 1), data_end) ? XDP_PASS : XDP_DROP;
}

SEC("xdp")
int xdp_ttl_guard(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + sizeof(struct ethhdr);

	if (!ipv4_ok(iph, data_end))
		return XDP_PASS;
	/* Bounds were checked by ipv4_ok, but the verifier needs to see it here too. */
	if ((void *)(iph + 1) > data_end)
		return XDP_PASS;
	return iph->ttl < 2 ? XDP_DROP : XDP_PASS;
}

char _license[] SEC("license") = "GPL";
