/* SPDX-License-Identifier: GPL-2.0-only */
/* Definitions shared by the L2/L3 network functions (switch.bpf.c, router.bpf.c).
 *
 * Everything here is mirrored byte for byte by src/morpheus/nf/switch.py and router.py:
 * change both sides together. Names carry an `nfc_` prefix so that this header can be included
 * next to nf_l4.h without clashes.
 */
#ifndef MORPHEUS_NF_COMMON_H
#define MORPHEUS_NF_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef VLAN_HLEN
#define VLAN_HLEN 4
#endif
#define NFC_VLAN_VID_MASK 0x0fff

/* The 802.1Q tag that follows the MAC addresses (the uapi headers have no struct for it). */
struct nfc_vlan_tag {
	__be16 tci;
	__be16 encap_proto;
};

/* One slot of a per-CPU statistics array: a packet count and a byte count. */
struct nfc_stat {
	__u64 packets;
	__u64 bytes;
};

/* Bump one per-CPU counter; per-CPU values need no atomics. */
static __always_inline void nfc_stat_add(void *map, __u32 index, __u64 bytes)
{
	struct nfc_stat *s = bpf_map_lookup_elem(map, &index);

	if (s) {
		s->packets += 1;
		s->bytes += bytes;
	}
}

/* Group bit of the first octet: broadcast and multicast destinations. */
static __always_inline int nfc_mac_is_group(const __u8 *mac)
{
	return mac[0] & 1;
}

static __always_inline int nfc_mac_is_zero(const __u8 *mac)
{
	return (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) == 0;
}

static __always_inline int nfc_mac_equal(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) |
		(a[5] ^ b[5])) == 0;
}

#endif /* MORPHEUS_NF_COMMON_H */
