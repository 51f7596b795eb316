// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * Moat's eBPF redirector: attached to one run's cgroup v2, it sends every
 * TCP connection of the sandbox to Moat's proxy listener and every DNS query
 * to Moat's DNS socket, refuses other UDP and all IPv6, and remembers where
 * each redirected connection was going so the proxy can ask.
 *
 * Built by userspace/build.rs (clang -target bpf -O2 -g), loaded and
 * attached by userspace/src/sandbox/bpf.rs (aya). Nothing here is specific
 * to a run: the proxy and DNS addresses come from the `config` map, written
 * by userspace before the programs are attached.
 *
 * Programs (sock_addr programs: return 1 = go on, 0 = refuse with EPERM):
 *   cgroup/connect4      TCP -> proxy (DNS port 53 -> DNS socket), UDP
 *                        connect() only to port 53 (rewritten), rest refused
 *   cgroup/sendmsg4      UDP only to port 53 (rewritten to the DNS socket)
 *   cgroup/recvmsg4      DNS answers appear to come from the resolver asked
 *   cgroup/getpeername4  a redirected socket's peer is its original target
 *   cgroup/connect6      refused (IPv6 fails fast, clients fall back to v4)
 *   cgroup/sendmsg6      refused
 *   sockops (record_orig) publishes a redirected connection's original
 *                        target under its local address:port (see orig_dst)
 *
 * Loopback (127.0.0.0/8) TCP stays untouched, as with the nft redirector:
 * the sandbox may talk to its own local servers, and the proxy itself lives
 * there.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SOCK_STREAM 1
#define SOCK_DGRAM 2

#define ALLOW 1
#define REFUSE 0

/* Written by userspace at load time (one entry, index 0). Addresses and
 * ports in network byte order, as in struct sockaddr_in. A zero proxy port
 * means "not configured": everything but loopback TCP is refused (fail
 * closed). Layout mirrors `encode_config` in sandbox/bpf.rs. */
struct config {
	__u32 proxy_ip4;
	__u16 proxy_port;
	__u16 dns_port; /* the DNS socket listens on proxy_ip4:dns_port */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

/* Where a socket was going before we rewrote it (network byte order). */
struct orig {
	__u32 ip4;
	__u16 port;
	__u8 to_proxy; /* 1: rewritten to the proxy (publish it in orig_dst) */
	__u8 pad;
};

/* Per-socket memory of the original target. Socket storage rather than a
 * map keyed by socket cookie: it lives exactly as long as the socket, so
 * nothing leaks when a connect() fails between the connect4 hook and the
 * sockops callback, and getpeername4/recvmsg4 find it again later. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct orig);
} sk_orig SEC(".maps");

/* What the proxy reads: the client's local address and port (the peer of
 * the stream the proxy accepted) -> original target.
 *
 * Keyed by local address:port, not by socket cookie, because the proxy only
 * has the *accepted* socket, whose cookie differs from the client's; its peer
 * address is the client's local one. Each run has its own network namespace
 * and its own copy of this map, so (address, port) is unique among the
 * connections to the proxy. The entry is written at TCP_CONNECT_CB, before
 * the SYN leaves, so it exists before the proxy can accept; the proxy
 * deletes it after reading, and LRU eviction bounds what a client that
 * never gets accepted can leave. */
struct peer_key {
	__u32 ip4;  /* network byte order (bpf_sock_ops.local_ip4) */
	__u32 port; /* host byte order (bpf_sock_ops.local_port) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct orig);
} orig_dst SEC(".maps");

static __always_inline struct config *get_config(void)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || cfg->proxy_port == 0)
		return 0;
	return cfg;
}

static __always_inline int is_loopback(__u32 ip4_be)
{
	return (bpf_ntohl(ip4_be) >> 24) == 127;
}

/* The destination of a sock_addr call, read once at the top of each program:
 * the verifier only accepts ctx field accesses at constant offsets from the
 * unmodified ctx pointer, which re-reading inside helpers can defeat. */
struct dst {
	__u32 ip4;  /* network byte order */
	__u16 port; /* network byte order */
};

static __always_inline struct dst read_dst(struct bpf_sock_addr *ctx)
{
	struct dst d = {
		.ip4 = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	return d;
}

/* Rewrites ctx's destination to proxy_ip4:port, remembering the original
 * (d) in the socket's storage. */
static __always_inline int rewrite(struct bpf_sock_addr *ctx, struct dst d,
				   struct config *cfg, __u16 port, __u8 to_proxy)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig *o;

	if (!sk)
		return REFUSE;
	o = bpf_sk_storage_get(&sk_orig, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return REFUSE; /* fail closed: never let it through unredirected */
	o->ip4 = d.ip4;
	o->port = d.port;
	o->to_proxy = to_proxy;
	ctx->user_ip4 = cfg->proxy_ip4;
	ctx->user_port = port;
	return ALLOW;
}

static __always_inline int is_dns_socket(struct dst d, struct config *cfg)
{
	return d.ip4 == cfg->proxy_ip4 && d.port == cfg->dns_port;
}

/* UDP datagrams (and UDP connect()): only DNS, rewritten to our socket. */
static __always_inline int udp_dst(struct bpf_sock_addr *ctx, struct dst d,
				   struct config *cfg)
{
	if (is_dns_socket(d, cfg))
		return ALLOW;
	if (d.port == bpf_htons(53))
		return rewrite(ctx, d, cfg, cfg->dns_port, 0);
	return REFUSE;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct dst d = read_dst(ctx);
	__u32 type = ctx->type;
	__u32 protocol = ctx->protocol;
	struct config *cfg = get_config();

	if (type == SOCK_STREAM && protocol == IPPROTO_TCP) {
		if (is_loopback(d.ip4))
			return ALLOW; /* includes the proxy and DNS sockets */
		if (!cfg)
			return REFUSE;
		if (d.port == bpf_htons(53))
			return rewrite(ctx, d, cfg, cfg->dns_port, 0);
		return rewrite(ctx, d, cfg, cfg->proxy_port, 1);
	}
	if (!cfg)
		return REFUSE;
	if (type == SOCK_DGRAM && protocol == IPPROTO_UDP)
		return udp_dst(ctx, d, cfg);
	/* ICMP "ping" sockets and anything else. */
	return REFUSE;
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	struct dst d = read_dst(ctx);
	struct config *cfg = get_config();

	if (!cfg)
		return REFUSE;
	return udp_dst(ctx, d, cfg);
}

/* Answers from the DNS socket come back as if from the resolver asked, so
 * clients that check the source of the reply (as they should) accept it. */
SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	struct dst d = read_dst(ctx);
	struct bpf_sock *sk = ctx->sk;
	struct config *cfg = get_config();
	struct orig *o;

	if (!cfg || !sk || !is_dns_socket(d, cfg))
		return ALLOW;
	o = bpf_sk_storage_get(&sk_orig, sk, 0, 0);
	if (o) {
		ctx->user_ip4 = o->ip4;
		ctx->user_port = o->port;
	}
	return ALLOW; /* recvmsg4 may not refuse */
}

/* getpeername() on a redirected socket names the original target. */
SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig *o;

	if (!sk)
		return ALLOW;
	o = bpf_sk_storage_get(&sk_orig, sk, 0, 0);
	if (o) {
		ctx->user_ip4 = o->ip4;
		ctx->user_port = o->port;
	}
	return ALLOW; /* getpeername4 may not refuse */
}

/* No IPv6 at all (v4-mapped addresses included, so a dual-stack socket
 * cannot sidestep connect4): an immediate EPERM, so clients fall back to
 * IPv4 instead of waiting for a timeout. */
SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return REFUSE;
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return REFUSE;
}

/* At TCP_CONNECT_CB the local port is chosen and the SYN not yet sent:
 * publish the original target under the client's local address:port. */
SEC("sockops")
int record_orig(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk;
	struct orig *o;
	struct peer_key key = {};

	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	o = bpf_sk_storage_get(&sk_orig, sk, 0, 0);
	if (!o || !o->to_proxy)
		return 1;
	key.ip4 = skops->local_ip4;
	key.port = skops->local_port;
	bpf_map_update_elem(&orig_dst, &key, o, BPF_ANY);
	return 1;
}

/* GPL-compatible, as the kernel asks of programs using GPL-only helpers; the
 * source is dual-licensed (see the SPDX line). */
char LICENSE[] SEC("license") = "GPL";
