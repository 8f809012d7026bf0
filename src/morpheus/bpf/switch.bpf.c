// SPDX-License-Identifier: GPL-2.0-only
/* switch: an 802.1Q learning bridge in XDP.
 *
 * Per packet: read the global feature flags, look up the ingress port, classify the frame
 * into a VLAN, learn the source MAC, look up the destination MAC and either redirect the frame
 * to the egress port (pushing or popping the 802.1Q tag as that port wants), drop it, or pass
 * it up to the stack, which floods broadcast, multicast and unknown unicast.
 *
 * All configuration lives in maps written by the control plane at run time
 * (src/morpheus/nf/switch.py mirrors every struct and decision of this file):
 *   sw_config    ARRAY[1]        u32 0 -> struct sw_config          global feature flags
 *   sw_ports     HASH            u32 ifindex -> struct sw_port       per-port configuration
 *   sw_vlans     HASH            struct sw_vlan_key -> u32           tagged VLANs of trunks
 *   sw_fdb       HASH            struct sw_fdb_key -> struct sw_fdb_entry   MAC table
 *   sw_tx_ports  DEVMAP_HASH     u32 ifindex -> u32 ifindex          redirect targets
 *   sw_stats     PERCPU_ARRAY    u32 reason -> struct nfc_stat       counters
 *
 * The MAC table is written by the data plane (learning) as well as by the control plane
 * (static entries, ageing).
 */
#include "nf_common.h"

/* sw_config.flags */
#define SW_FEAT_VLAN (1u << 0)  /* 802.1Q filtering; off: one flat VLAN 0, tags untouched */
#define SW_FEAT_LEARN (1u << 1) /* learn source MACs (ports must also allow it) */
#define SW_FEAT_STATS (1u << 2) /* count every decision in sw_stats */

/* sw_port.flags */
#define SW_PORT_ENABLED (1u << 0) /* forwarding state; a disabled port drops in both ways */
#define SW_PORT_TRUNK (1u << 1)   /* carries the tagged VLANs listed in sw_vlans */
#define SW_PORT_LEARN (1u << 2)   /* learning allowed on this port */

/* sw_fdb_entry.flags */
#define SW_FDB_STATIC (1u << 0) /* written by the control plane; learning never overwrites it */

/* sw_vlans value */
#define SW_VLAN_MEMBER (1u << 0)

/* A dynamic entry's timestamp is rewritten at most this often, so that a busy station costs
 * one store per second instead of one per packet (ageing needs only coarse times).
 */
#define SW_REFRESH_NS 1000000000ull

#define SW_MAX_PORTS 256
#define SW_FDB_SIZE 16384

/* Every packet is counted in exactly one of the reasons before SW_STAT_LEARNED; the last two
 * count learning events (a packet can also cause one of them).
 */
enum sw_stat {
	SW_STAT_FORWARD = 0,   /* redirected to the port of a known destination */
	SW_STAT_FLOOD = 1,     /* broadcast / multicast destination: passed to the stack */
	SW_STAT_UNKNOWN = 2,   /* unknown unicast destination: passed to the stack */
	SW_STAT_NOT_PORT = 3,  /* ingress interface is not a bridge port: passed */
	SW_STAT_HAIRPIN = 4,   /* destination sits on the ingress port: dropped */
	SW_STAT_VLAN = 5,      /* VLAN not allowed on the ingress or egress port: dropped */
	SW_STAT_PORT_DOWN = 6, /* ingress or egress port disabled (or unknown egress): dropped */
	SW_STAT_INVALID = 7,   /* runt, bad 802.1Q tag, multicast or zero source MAC: dropped */
	SW_STAT_ERROR = 8,     /* the tag could not be pushed or popped: dropped */
	SW_STAT_LEARNED = 9,   /* event: a new source MAC was learned */
	SW_STAT_MOVED = 10,    /* event: a learned MAC moved to another port */
	SW_STAT_MAX = 11,
};

struct sw_config {
	__u32 flags;
};

struct sw_port {
	__u32 flags;
	__u16 pvid; /* VLAN of untagged frames (access VLAN / native VLAN); 0: none */
	__u16 pad;
};

struct sw_vlan_key {
	__u32 ifindex;
	__u32 vid;
};

struct sw_fdb_key {
	__u16 vid; /* host order; 0 when VLAN filtering is off */
	__u8 mac[ETH_ALEN];
};

struct sw_fdb_entry {
	__u32 ifindex;
	__u32 flags;
	__u64 last_seen; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last refresh */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_config);
} sw_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_MAX_PORTS);
	__type(key, __u32);
	__type(value, struct sw_port);
} sw_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct sw_vlan_key);
	__type(value, __u32);
} sw_vlans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SW_FDB_SIZE);
	__type(key, struct sw_fdb_key);
	__type(value, struct sw_fdb_entry);
} sw_fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, SW_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} sw_tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_STAT_MAX);
	__type(key, __u32);
	__type(value, struct nfc_stat);
} sw_stats SEC(".maps");

static __always_inline int sw_done(__u32 features, __u32 reason, __u64 bytes, int verdict)
{
	if (features & SW_FEAT_STATS)
		nfc_stat_add(&sw_stats, reason, bytes);
	return verdict;
}

/* Whether `port` (interface `ifindex`) carries VLAN `vid`: its untagged VLAN always, and on a
 * trunk also every VLAN listed for it in sw_vlans.
 */
static __always_inline int sw_port_has_vlan(const struct sw_port *port, __u32 ifindex, __u16 vid)
{
	struct sw_vlan_key key = { .ifindex = ifindex, .vid = vid };
	__u32 *member;

	if (vid == port->pvid)
		return 1;
	if (!(port->flags & SW_PORT_TRUNK))
		return 0;
	member = bpf_map_lookup_elem(&sw_vlans, &key);
	return member && (*member & SW_VLAN_MEMBER);
}

/* Record that `mac` lives behind `ifindex` in VLAN `vid`. Static entries are never touched; a
 * dynamic entry on another port is moved; a new MAC is inserted unless the table is full.
 */
static __always_inline void sw_learn(__u32 features, __u16 vid, const __u8 *mac,
				     __u32 ifindex, __u64 bytes)
{
	struct sw_fdb_key key = { .vid = vid };
	struct sw_fdb_entry fresh = { .ifindex = ifindex, .flags = 0 };
	struct sw_fdb_entry *entry;
	__u64 now;

	__builtin_memcpy(key.mac, mac, ETH_ALEN);
	entry = bpf_map_lookup_elem(&sw_fdb, &key);
	if (entry && (entry->flags & SW_FDB_STATIC))
		return;
	now = bpf_ktime_get_ns();
	if (entry && entry->ifindex == ifindex) {
		if (now - entry->last_seen > SW_REFRESH_NS)
			entry->last_seen = now;
		return;
	}
	fresh.last_seen = now;
	/* A moved entry is replaced whole (not patched in place) so that a concurrent reader on
	 * another CPU never sees the new port with the old flags.
	 */
	if (bpf_map_update_elem(&sw_fdb, &key, &fresh, entry ? BPF_EXIST : BPF_NOEXIST) == 0)
		sw_done(features, entry ? SW_STAT_MOVED : SW_STAT_LEARNED, bytes, 0);
}

/* Remove the 802.1Q tag: move the MAC addresses 4 bytes up, then shrink the head. */
static __always_inline int sw_vlan_pop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 macs[2 * ETH_ALEN];

	if (data + ETH_HLEN + VLAN_HLEN > data_end)
		return -1;
	__builtin_memcpy(macs, data, sizeof(macs));
	if (bpf_xdp_adjust_head(ctx, VLAN_HLEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ETH_HLEN > data_end)
		return -1;
	__builtin_memcpy(data, macs, sizeof(macs));
	return 0;
}

/* Insert an 802.1Q tag with VLAN `vid` (priority 0) after the MAC addresses. */
static __always_inline int sw_vlan_push(struct xdp_md *ctx, __u16 vid)
{
	void *data, *data_end;
	struct nfc_vlan_tag *tag;
	struct ethhdr *eth;
	__u8 macs[2 * ETH_ALEN];

	if (bpf_xdp_adjust_head(ctx, -VLAN_HLEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ETH_HLEN + VLAN_HLEN > data_end)
		return -1;
	__builtin_memcpy(macs, data + VLAN_HLEN, sizeof(macs));
	__builtin_memcpy(data, macs, sizeof(macs));
	eth = data;
	tag = (void *)(eth + 1);
	/* The original EtherType is already in place, right after the new tag. */
	eth->h_proto = bpf_htons(ETH_P_8021Q);
	tag->tci = bpf_htons(vid);
	return 0;
}

SEC("xdp")
int xdp_switch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 ingress = ctx->ingress_ifindex;
	struct ethhdr *eth = data;
	struct sw_fdb_key dst_key = {};
	struct sw_fdb_entry *dst;
	struct sw_port *in, *out;
	struct sw_config *config;
	__u32 zero = 0, features, egress;
	__u16 vid = 0;
	int tagged = 0;

	config = bpf_map_lookup_elem(&sw_config, &zero);
	if (!config)
		return XDP_PASS;
	features = config->flags;

	if ((void *)(eth + 1) > data_end)
		return sw_done(features, SW_STAT_INVALID, bytes, XDP_DROP);

	in = bpf_map_lookup_elem(&sw_ports, &ingress);
	if (!in)
		return sw_done(features, SW_STAT_NOT_PORT, bytes, XDP_PASS);
	if (!(in->flags & SW_PORT_ENABLED))
		return sw_done(features, SW_STAT_PORT_DOWN, bytes, XDP_DROP);

	/* Ingress VLAN classification. Priority tags (VID 0) and the reserved VID 4095 are not
	 * supported and count as invalid.
	 */
	if (features & SW_FEAT_VLAN) {
		if (eth->h_proto == bpf_htons(ETH_P_8021Q)) {
			struct nfc_vlan_tag *tag = (void *)(eth + 1);

			if ((void *)(tag + 1) > data_end)
				return sw_done(features, SW_STAT_INVALID, bytes, XDP_DROP);
			vid = bpf_ntohs(tag->tci) & NFC_VLAN_VID_MASK;
			if (vid == 0 || vid == NFC_VLAN_VID_MASK)
				return sw_done(features, SW_STAT_INVALID, bytes, XDP_DROP);
			if (!sw_port_has_vlan(in, ingress, vid))
				return sw_done(features, SW_STAT_VLAN, bytes, XDP_DROP);
			tagged = 1;
		} else {
			vid = in->pvid;
			if (vid == 0)
				return sw_done(features, SW_STAT_VLAN, bytes, XDP_DROP);
		}
	}

	if (nfc_mac_is_group(eth->h_source) || nfc_mac_is_zero(eth->h_source))
		return sw_done(features, SW_STAT_INVALID, bytes, XDP_DROP);

	if ((features & SW_FEAT_LEARN) && (in->flags & SW_PORT_LEARN))
		sw_learn(features, vid, eth->h_source, ingress, bytes);

	if (nfc_mac_is_group(eth->h_dest))
		return sw_done(features, SW_STAT_FLOOD, bytes, XDP_PASS);

	dst_key.vid = vid;
	__builtin_memcpy(dst_key.mac, eth->h_dest, ETH_ALEN);
	dst = bpf_map_lookup_elem(&sw_fdb, &dst_key);
	if (!dst)
		return sw_done(features, SW_STAT_UNKNOWN, bytes, XDP_PASS);
	egress = dst->ifindex;
	if (egress == ingress)
		return sw_done(features, SW_STAT_HAIRPIN, bytes, XDP_DROP);

	out = bpf_map_lookup_elem(&sw_ports, &egress);
	if (!out || !(out->flags & SW_PORT_ENABLED))
		return sw_done(features, SW_STAT_PORT_DOWN, bytes, XDP_DROP);

	if (features & SW_FEAT_VLAN) {
		int want_tag;

		if (!sw_port_has_vlan(out, egress, vid))
			return sw_done(features, SW_STAT_VLAN, bytes, XDP_DROP);
		/* The egress port sends its own untagged VLAN untagged, every other VLAN tagged. */
		want_tag = vid != out->pvid;
		if (tagged && !want_tag) {
			if (sw_vlan_pop(ctx))
				return sw_done(features, SW_STAT_ERROR, bytes, XDP_DROP);
		} else if (!tagged && want_tag) {
			if (sw_vlan_push(ctx, vid))
				return sw_done(features, SW_STAT_ERROR, bytes, XDP_DROP);
		}
	}

	/* Every configured port is in sw_tx_ports; should one be missing, drop. */
	sw_done(features, SW_STAT_FORWARD, bytes, 0);
	return bpf_redirect_map(&sw_tx_ports, egress, XDP_DROP);
}

char LICENSE[] SEC("license") = "GPL";
