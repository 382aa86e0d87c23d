// SPDX-License-Identifier: GPL-2.0
/*
 * ChainIO XDP steering: UDP/IPv4 to our port -> the AF_XDP socket bound to the
 * frame's rx queue (xsks_map[rx_queue_index]); everything else XDP_PASS.
 *
 * chainio_xdp    - plain XDP (linear frames only).
 * chainio_xdp_mb - same logic, multi-buffer capable (BPF_F_XDP_HAS_FRAGS); headers
 *                  that straddle the linear part are copied with bpf_xdp_load_bytes.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xdp_steer.h"

/* Not in the UAPI headers (include/net/ip.h). */
#define CHAINIO_IP_MF 0x2000
#define CHAINIO_IP_OFFSET 0x1fff

/*
 * Load-time knobs (.rodata, frozen at load: the verifier prunes dead branches).
 * dst_port and dst_ip are in NETWORK byte order: user space stores htons()/htonl().
 */
const volatile __be16 dst_port = 0;	/* 0: nothing is ours */
const volatile __be32 dst_ip = 0;	/* 0: any destination address */
const volatile __u8 count_only = 0;	/* 1: count our packets as MATCHED, never redirect */

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, CHAINIO_XDP_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CHAINIO_XDP_NR_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

static __always_inline void bump(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&steer_stats, &idx);

	if (v)
		*v += n;
}

static __always_inline int verdict(__u32 idx, int action)
{
	bump(idx, 1);
	return action;
}

/*
 * Pointer to len bytes at off, or NULL when the frame is shorter. For multi-buffer
 * frames the bytes may lie past the linear part: then they are copied into buf.
 * off must be bounded (verifier: variable packet offsets need a known range).
 */
static __always_inline void *hdr_at(struct xdp_md *ctx, __u32 off, __u32 len, void *buf,
				    const bool frags)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *p = data + off;

	if (p + len <= data_end)
		return p;
	if (frags && bpf_xdp_load_bytes(ctx, off, buf, len) == 0)
		return buf;
	return NULL;
}

static __always_inline __u32 frame_len(struct xdp_md *ctx, const bool frags)
{
	if (frags)
		return bpf_xdp_get_buff_len(ctx);
	return ctx->data_end - ctx->data;
}

static __always_inline int steer(struct xdp_md *ctx, const bool frags)
{
	struct ethhdr eth_buf;
	struct iphdr ip_buf;
	struct udphdr udp_buf;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	__u32 ip_hlen, ip_tot, udp_len, len;
	int act;

	eth = hdr_at(ctx, 0, sizeof(*eth), &eth_buf, frags);
	if (!eth)
		return verdict(CHAINIO_XDP_MALFORMED, XDP_PASS);
	/* VLAN-tagged, IPv6, ARP...: never ours, the stack handles them. */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return verdict(CHAINIO_XDP_PASSED, XDP_PASS);

	ip = hdr_at(ctx, sizeof(*eth), sizeof(*ip), &ip_buf, frags);
	if (!ip)
		return verdict(CHAINIO_XDP_MALFORMED, XDP_PASS);
	ip_hlen = ip->ihl * 4;
	ip_tot = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || ip_hlen < sizeof(*ip) || ip_tot < ip_hlen)
		return verdict(CHAINIO_XDP_MALFORMED, XDP_PASS);
	if (ip->protocol != IPPROTO_UDP)
		return verdict(CHAINIO_XDP_PASSED, XDP_PASS);
	/* We never fragment: any fragment (MF set or offset != 0) belongs to the stack. */
	if (ip->frag_off & bpf_htons(CHAINIO_IP_MF | CHAINIO_IP_OFFSET))
		return verdict(CHAINIO_XDP_PASSED, XDP_PASS);
	if (dst_ip && ip->daddr != dst_ip)
		return verdict(CHAINIO_XDP_PASSED, XDP_PASS);

	/* ip_hlen <= 60 (4-bit ihl): bounded offset. Options are skipped, not read. */
	udp = hdr_at(ctx, sizeof(*eth) + ip_hlen, sizeof(*udp), &udp_buf, frags);
	if (!udp)
		return verdict(CHAINIO_XDP_MALFORMED, XDP_PASS);
	if (!dst_port || udp->dest != dst_port)
		return verdict(CHAINIO_XDP_PASSED, XDP_PASS);

	/* Ours: lengths must agree before user space trusts them. */
	len = frame_len(ctx, frags);
	udp_len = bpf_ntohs(udp->len);
	if (sizeof(*eth) + ip_tot > len || udp_len < sizeof(*udp) || udp_len > ip_tot - ip_hlen)
		return verdict(CHAINIO_XDP_MALFORMED, XDP_PASS);
	if (count_only)
		return verdict(CHAINIO_XDP_MATCHED, XDP_PASS);

	/* The XDP_PASS flag is the action when no XSK sits at this queue's index. */
	act = bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
	if (act != XDP_REDIRECT)
		return verdict(CHAINIO_XDP_NO_SOCKET, act);
	bump(CHAINIO_XDP_REDIRECTED, 1);
	bump(CHAINIO_XDP_REDIRECTED_BYTES, len);
	return act;
}

SEC("xdp")
int chainio_xdp(struct xdp_md *ctx)
{
	return steer(ctx, false);
}

SEC("xdp.frags")
int chainio_xdp_mb(struct xdp_md *ctx)
{
	return steer(ctx, true);
}

char LICENSE[] SEC("license") = "GPL";
