// SPDX-License-Identifier: GPL-2.0
/* Multi-tenant ACLs and per-VIP backend pools, both as maps of maps.
 *
 * The outer maps are declared with `__array(values, struct inner)`: BTF then describes the
 * inner map's type, which the loader needs to create a template inner map before it can create
 * the outer one. The inner maps are created at run time by the control plane; `spare_acl` is a
 * top-level map of the same inner type that the control plane can swap in.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_TENANTS 16
#define POOL_SIZE 16

/* dport (network order) -> verdict */
struct port_acl {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);
	__type(value, __u32);
};

/* slot -> backend IPv4 address */
struct backend_pool {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, POOL_SIZE);
	__type(key, __u32);
	__type(value, __u32);
};

/* ingress ifindex -> tenant id */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} if_tenant SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_TENANTS);
	__type(key, __u32);
	__array(values, struct port_acl);
} tenant_acls SEC(".maps");

/* VIP (network order) -> pool of backends */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 128);
	__type(key, __u32);
	__array(values, struct backend_pool);
} vip_pools SEC(".maps");

struct port_acl spare_acl SEC(".maps");

SEC("xdp")
int xdp_tenant_acl(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *udp;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *tenant, *verdict;
	void *acl;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_UDP)
		return XDP_PASS;
	udp = (void *)iph + iph->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;

	tenant = bpf_map_lookup_elem(&if_tenant, &ifindex);
	if (!tenant)
		return XDP_PASS;
	acl = bpf_map_lookup_elem(&tenant_acls, tenant);
	if (!acl)
		return XDP_PASS;	/* tenant without an ACL: allow everything */
	verdict = bpf_map_lookup_elem(acl, &udp->dest);
	if (!verdict)
		return XDP_DROP;	/* default deny once an ACL exists */
	return *verdict == XDP_DROP ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int xdp_vip_nat(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	__u32 vip, slot, *backend;
	void *pool;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return XDP_PASS;

	vip = iph->daddr;
	pool = bpf_map_lookup_elem(&vip_pools, &vip);
	if (!pool)
		return XDP_PASS;
	slot = (iph->saddr ^ (iph->saddr >> 16)) % POOL_SIZE;
	backend = bpf_map_lookup_elem(pool, &slot);
	if (!backend || !*backend)
		return XDP_DROP;

	/* Rewrite the destination and patch the checksum incrementally (RFC 1624). */
	__u32 csum = (__u16)~iph->check;
	csum += (__u16)~(vip & 0xffff) + (__u16)~(vip >> 16);
	csum += (*backend & 0xffff) + (*backend >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	iph->check = ~csum;
	iph->daddr = *backend;

	/* Hairpin back out of the same port towards the next hop. */
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
