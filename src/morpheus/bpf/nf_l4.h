/* SPDX-License-Identifier: GPL-2.0-only */
/* Definitions shared by the L4 network functions (firewall.bpf.c, lb.bpf.c).
 *
 * Everything here is mirrored byte for byte by src/morpheus/nf/firewall.py and lb.py:
 * change both sides together.
 */
#ifndef MORPHEUS_NF_L4_H
#define MORPHEUS_NF_L4_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IP_MF 0x2000
#define IP_OFFMASK 0x1fff

/* TCP flags as they appear in byte 13 of the TCP header (linux/tcp.h only has them as
 * big-endian 32-bit words).
 */
#define TCP_FLAG_FIN_BYTE 0x01
#define TCP_FLAG_SYN_BYTE 0x02
#define TCP_FLAG_RST_BYTE 0x04
#define TCP_FLAG_ACK_BYTE 0x10

/* The uapi headers do not define the 802.1Q tag as a struct. */
struct nf_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* One counter slot of a per-CPU statistics array. */
struct nf_counter {
	__u64 packets;
	__u64 bytes;
};

/* A 5-tuple exactly as it appears in the packet (addresses and ports in network order).
 * The explicit padding keeps the key 16 bytes with no uninitialised holes: hash maps compare
 * every byte of the key.
 */
struct nf_flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Bump one per-CPU counter; per-CPU values need no atomics. */
static __always_inline void nf_count(void *map, __u32 index, __u32 bytes)
{
	struct nf_counter *c = bpf_map_lookup_elem(map, &index);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

#endif /* MORPHEUS_NF_L4_H */
