// SPDX-License-Identifier: GPL-2.0
/* A small edge gateway: VXLAN decapsulation with redirect, a connection tracker with new-flow
 * events, and a header sampler, as three XDP programs sharing one object.
 *
 * Besides multiple programs per object this covers the instruction shapes a rewriter most
 * easily gets wrong: ld_imm64 of constants wider than 32 bits, signed comparisons, byte
 * swaps, switch statements lowered to compare chains, bpf_xdp_adjust_head (which invalidates
 * every packet pointer), bpf_redirect_map on a devmap, and both ringbuf APIs.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define VXLAN_PORT		4789
#define VXLAN_F_VNI		0x08000000	/* "I" flag, host order */
#define NR_TX_PORTS		64
#define CT_TIMEOUT_NS		(30ULL * 1000 * 1000 * 1000)	/* does not fit in 32 bits */
#define GOLDEN64		0x9e3779b97f4a7c15ULL
#define SAMPLE_BYTES		64

struct vxlanhdr {
	__be32 flags;
	__be32 vni;		/* VNI in the upper 24 bits */
};

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 proto;
};

struct ct_entry {
	__u64 last_seen_ns;
	__u64 packets;
	__s32 credit;		/* token bucket, may go negative */
	__u32 flow_hash;
};

enum ct_event_kind {
	CT_NEW = 1,
	CT_EXPIRED = 2,
};

struct ct_event {
	struct ct_key key;
	__u64 ts_ns;
	__u32 kind;
	__u32 flow_hash;
};

/* Forwarded verbatim to a collector that expects network byte order. */
struct pkt_sample {
	__be64 ts_ns;
	__be32 len;
	__be32 ifindex;
	__u8 head[SAMPLE_BYTES];
};

/* VNI -> slot in tx_ports */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} vni_port SEC(".maps");

/* slot -> egress ifindex */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, NR_TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/* LRU: idle flows age out without a sweeper. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} ct_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} samples_rb SEC(".maps");

SEC("xdp")
int xdp_vxlan_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *udp;
	struct vxlanhdr *vx;
	__u32 vni, *port;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->ihl != 5 || iph->protocol != IPPROTO_UDP)
		return XDP_PASS;
	udp = (void *)(iph + 1);
	vx = (void *)(udp + 1);
	if ((void *)(vx + 1) > data_end || udp->dest != bpf_htons(VXLAN_PORT))
		return XDP_PASS;
	/* Open-coded byte swap rather than bpf_ntohl, as hand-written parsers do. */
	if (!(__builtin_bswap32(vx->flags) & VXLAN_F_VNI))
		return XDP_DROP;
	vni = __builtin_bswap32(vx->vni) >> 8;
	port = bpf_map_lookup_elem(&vni_port, &vni);
	if (!port)
		return XDP_DROP;	/* unknown segment */

	/* Strip outer Ethernet, IPv4, UDP and VXLAN headers; the inner frame starts after vx. */
	if (bpf_xdp_adjust_head(ctx, (int)((void *)(vx + 1) - data)))
		return XDP_ABORTED;
	/* Packet pointers are stale now: re-derive before any access. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(struct ethhdr) > data_end)
		return XDP_DROP;

	/* An empty devmap slot falls back to XDP_PASS. */
	return bpf_redirect_map(&tx_ports, *port, XDP_PASS);
}

static __always_inline __u32 hash_ct_key(const struct ct_key *k)
{
	__u64 h = ((__u64)k->saddr << 32 | k->daddr) * GOLDEN64;

	h ^= ((__u64)k->sport << 48 | (__u64)k->dport << 32 | k->proto) * GOLDEN64;
	return (__u32)(h >> 32) ^ (__u32)h;
}

static __always_inline void emit_ct_event(const struct ct_key *key, __u64 now, __u32 kind,
					  __u32 flow_hash)
{
	struct ct_event *ev = bpf_ringbuf_reserve(&ct_events, sizeof(*ev), 0);

	if (!ev)
		return;
	ev->key = *key;
	ev->ts_ns = now;
	ev->kind = kind;
	ev->flow_hash = flow_hash;
	bpf_ringbuf_submit(ev, 0);
}

SEC("xdp")
int xdp_conntrack(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ct_key key = {};
	struct ct_entry *ct;
	struct iphdr *iph;
	struct udphdr *l4;
	__u64 now;
	__s64 idle;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->ihl != 5)
		return XDP_PASS;

	key.saddr = iph->saddr;
	key.daddr = iph->daddr;
	key.proto = iph->protocol;
	switch (iph->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		l4 = (void *)(iph + 1);
		if ((void *)(l4 + 1) > data_end)
			return XDP_DROP;
		key.sport = l4->source;
		key.dport = l4->dest;
		break;
	case IPPROTO_ICMP:
		break;
	case IPPROTO_GRE:
	case IPPROTO_ESP:
		return XDP_PASS;	/* tunnels are tracked by whoever terminates them */
	default:
		return XDP_DROP;
	}

	now = bpf_ktime_get_ns();
	ct = bpf_map_lookup_elem(&conntrack, &key);
	if (!ct) {
		struct ct_entry fresh = {
			.last_seen_ns = now,
			.packets = 1,
			.credit = 64,
			.flow_hash = hash_ct_key(&key),
		};

		bpf_map_update_elem(&conntrack, &key, &fresh, BPF_NOEXIST);
		emit_ct_event(&key, now, CT_NEW, fresh.flow_hash);
		return XDP_PASS;
	}

	/* Signed: clocks on different CPUs may make this slightly negative. */
	idle = (__s64)(now - ct->last_seen_ns);
	if (idle < 0)
		idle = 0;
	if (idle > (__s64)CT_TIMEOUT_NS) {
		emit_ct_event(&key, now, CT_EXPIRED, ct->flow_hash);
		ct->credit = 64;
	}
	ct->last_seen_ns = now;
	ct->packets++;

	/* Refill one token per millisecond idle, spend one per packet; below -8 we drop. */
	ct->credit += idle >> 20 > 64 ? 64 : (__s32)(idle >> 20);
	if (ct->credit > 64)
		ct->credit = 64;
	ct->credit--;
	if (ct->credit < -8)
		return XDP_DROP;
	return XDP_PASS;
}

SEC("xdp")
int xdp_sampler(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt_sample s;

	/* One packet in 1024, chosen at random so periodic traffic cannot dodge sampling. */
	if (bpf_get_prandom_u32() & 1023)
		return XDP_PASS;
	if (data + SAMPLE_BYTES > data_end)
		return XDP_PASS;
	s.ts_ns = __builtin_bswap64(bpf_ktime_get_ns());
	s.len = bpf_htonl(data_end - data);
	s.ifindex = bpf_htonl(ctx->ingress_ifindex);
	__builtin_memcpy(s.head, data, SAMPLE_BYTES);
	/* The copying API, as opposed to reserve/submit in the tracker. */
	bpf_ringbuf_output(&samples_rb, &s, sizeof(s), 0);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
