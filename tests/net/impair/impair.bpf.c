/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Test-only link impairment for tests/net: a tc egress program that drops, corrupts or
 * duplicates packets at given rates. It stands in for `tc qdisc ... netem`, whose kernel module
 * (sch_netem) this machine's kernel does not have. Reordering is not emulated.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define IMPAIR_MARK 0xC4A1u

const volatile __u32 loss_ppm = 0;
const volatile __u32 corrupt_ppm = 0;
const volatile __u32 dup_ppm = 0;
const volatile __u32 self_ifindex = 0;
const volatile __u8 udp_only = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} impair_stats SEC(".maps");	/* 0 dropped, 1 corrupted, 2 duplicated, 3 seen */

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&impair_stats, &i);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int chance(__u32 ppm)
{
	return ppm && bpf_get_prandom_u32() % 1000000 < ppm;
}

SEC("tc")
int chainio_impair(struct __sk_buff *skb)
{
	if (skb->mark == IMPAIR_MARK)
		return TC_ACT_OK;	/* a duplicate we made: let it go as it is */
	if (udp_only) {
		__u8 proto = 0;
		if (skb->protocol != bpf_htons(ETH_P_IP) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) || proto != IPPROTO_UDP)
			return TC_ACT_OK;
	}
	count(3);
	if (chance(loss_ppm)) {
		count(0);
		return TC_ACT_SHOT;
	}
	if (chance(corrupt_ppm) && skb->len > ETH_HLEN + 1) {
		/* Flip one bit anywhere past the Ethernet header, like netem's corrupt. */
		__u32 off = ETH_HLEN + bpf_get_prandom_u32() % (skb->len - ETH_HLEN);
		__u8 b;
		if (off < 0xffff && !bpf_skb_load_bytes(skb, off, &b, 1)) {
			b ^= (__u8)(1u << (bpf_get_prandom_u32() & 7));
			bpf_skb_store_bytes(skb, off, &b, 1, 0);
			count(1);
		}
	}
	if (chance(dup_ppm)) {
		skb->mark = IMPAIR_MARK;
		if (!bpf_clone_redirect(skb, self_ifindex, 0))
			count(2);
		skb->mark = 0;
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
