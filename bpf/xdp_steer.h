/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Shared between the XDP steering program (xdp_steer.bpf.c) and user space.
 * Plain C: included by the BPF object and by C++ (through xdp_steer.skel.h users).
 */
#pragma once

/* Default number of entries of xsks_map (one per rx queue); resize before load. */
#define CHAINIO_XDP_MAX_QUEUES 64

/*
 * Per-CPU counters, index into the steer_stats PERCPU_ARRAY (__u64 values).
 * Each packet seen by the program bumps exactly one of the verdict counters
 * REDIRECTED..MATCHED; REDIRECTED_BYTES is extra and counts whole frames
 * (every buffer of a multi-buffer frame).
 */
enum chainio_xdp_counter {
	CHAINIO_XDP_REDIRECTED = 0,	/* ours, handed to the XSK of its rx queue */
	CHAINIO_XDP_PASSED,		/* not ours: non-IPv4 (VLAN, IPv6, ARP), non-UDP,
					 * other port/address, IPv4 fragments */
	CHAINIO_XDP_MALFORMED,		/* truncated/invalid Ethernet, IPv4 or UDP; passed */
	CHAINIO_XDP_NO_SOCKET,		/* ours but no XSK on this rx queue; passed */
	CHAINIO_XDP_MATCHED,		/* ours while count_only is set; passed */
	CHAINIO_XDP_REDIRECTED_BYTES,	/* bytes of the frames counted in REDIRECTED */
	CHAINIO_XDP_NR_COUNTERS,
};
