// SPDX-License-Identifier: GPL-2.0
/* Flow hashing onto backend buckets, split into BPF-to-BPF calls.
 *
 * Static __noinline functions are verified in their caller's context (they may take packet
 * pointers); global __noinline functions are verified once, on their own, from their BTF
 * signature (scalars and ctx only). Both live in .text, get linked into each program that calls
 * them, and carry func_info that must survive relocation. The call graph has depth two
 * (xdp_lb -> pick_backend -> mix32) and one global function is shared by two programs.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NR_BUCKETS 64

struct flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct bucket_stats {
	__u64 packets;
	__u64 bytes;
};

/* bucket -> backend ifindex, filled by the control plane */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NR_BUCKETS);
	__type(key, __u32);
	__type(value, __u32);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_BUCKETS);
	__type(key, __u32);
	__type(value, struct bucket_stats);
} bucket_stats SEC(".maps");

/* Returns 0 and fills `key` for a UDP/TCP IPv4 frame, -1 otherwise. Takes packet pointers,
 * which only a static function may. */
static __noinline int parse_flow(void *data, void *data_end, struct flow_key *key)
{
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *l4;	/* the ports sit at the same offsets in TCP */

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->ihl != 5)
		return -1;
	if (iph->protocol != IPPROTO_UDP && iph->protocol != IPPROTO_TCP)
		return -1;
	l4 = (void *)(iph + 1);
	if ((void *)(l4 + 1) > data_end)
		return -1;

	key->saddr = iph->saddr;
	key->daddr = iph->daddr;
	key->sport = l4->source;
	key->dport = l4->dest;
	key->proto = iph->protocol;
	return 0;
}

/* Murmur3's finaliser: cheap and good enough to spread flows. */
static __noinline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __noinline __u32 pick_backend(const struct flow_key *key)
{
	__u32 h = mix32(key->saddr ^ key->daddr);

	h = mix32(h ^ (((__u32)key->sport << 16) | key->dport) ^ key->proto);
	return h % NR_BUCKETS;
}

/* Global: verified independently, so its arguments are plain scalars. */
__noinline int account_bucket(__u32 bucket, __u32 len)
{
	struct bucket_stats *st = bpf_map_lookup_elem(&bucket_stats, &bucket);

	if (!st)
		return -1;
	st->packets++;
	st->bytes += len;
	return 0;
}

/* Global and taking the context: the verifier checks it once against struct xdp_md. */
__noinline int frame_len(struct xdp_md *ctx)
{
	return ctx->data_end - ctx->data;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct flow_key key = {};
	__u32 bucket, *ifindex;

	if (parse_flow(data, data_end, &key) < 0)
		return XDP_PASS;
	bucket = pick_backend(&key);
	account_bucket(bucket, frame_len(ctx));

	ifindex = bpf_map_lookup_elem(&backends, &bucket);
	if (!ifindex || !*ifindex)
		return XDP_PASS;
	return bpf_redirect(*ifindex, 0);
}

/* Accounting only: shares account_bucket and frame_len with xdp_lb, so both programs get their
 * own copy of those subprograms. */
SEC("xdp")
int xdp_lb_dryrun(struct xdp_md *ctx)
{
	int len = frame_len(ctx);

	account_bucket(len > 1024 ? NR_BUCKETS - 1 : 0, len);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
