/*
 * The receiving service's internals, between service.c (listening,
 * handshakes, routing connections to migrations, limits, finding the
 * destination QEMU) and receiver.c (one migration, on a thread of its own).
 *
 * A connection goes through its handshake (enum rx_conn_state) on a thread
 * of its own, bounded by its own deadline: nothing a slow or silent peer
 * does costs another connection more than a slot, and slots are evicted
 * oldest first when they run out. Only a connection whose hello (and,
 * under TLS, whose certificate or PSK identity) was verified is routed:
 * a control connection starts a migration, any other joins the migration
 * it names by id, from the same TLS identity, through that migration's
 * inbox. The migration thread takes from its inbox what it waits for.
 */
#ifndef FERRY_RX_H
#define FERRY_RX_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "ferry.h"
#include "transport/net.h"
#include "transport/wire.h"

/* Connections queued for one migration before its thread takes them. */
#define RX_INBOX_MAX (2 * WIRE_STREAMS_MAX + 8)
/* Destination QEMUs remembered as burnt (see rx_target_burnt). */
#define RX_BURNT_MAX 256
/* A TLS peer's identity: "x509:" + SHA-256 of its certificate, or
 * "psk:" + the PSK identity. */
#define RX_IDENTITY_MAX (8 + 2 * TLS_PSK_IDENTITY_MAX)
/*
 * Handshake slots: max_handshakes in progress, and as many again for
 * evicted ones still closing, so that the acceptor never waits for an
 * eviction to finish. A handshake younger than RX_SLOT_MIN_AGE_MS is not
 * evicted (a real peer's takes milliseconds on loopback); when only such
 * remain, a new connection waits for a slot, at most RX_SLOT_WAIT_MS.
 */
#define RX_SLOT_MIN_AGE_MS 20
#define RX_SLOT_WAIT_MS 1000

enum rx_conn_state {
	RX_CONN_TLS,		/* TLS handshake (a TLS service only) */
	RX_CONN_HELLO,		/* the 64-byte hello */
	RX_CONN_VM,		/* a control hello with WIRE_OPT_VM: the name */
	RX_CONN_CONFIG,		/* ... then the source QEMU's command line */
	RX_CONN_GUEST,		/* every fresh control hello: the guest's
				   machine, CPU and devices */
	RX_CONN_DISKS,		/* a control hello with WIRE_OPT_BLOCK: the
				   disk manifest */
	RX_CONN_ROUTED,		/* handed to a migration: done */
	RX_CONN_FAILED,		/* refused and closed, with a log line */
};

/* A connection whose handshake is over. */
struct rx_conn {
	struct net_conn c;
	struct wire_hello hello;
	char peer[64];
	char identity[RX_IDENTITY_MAX];	/* empty on a plaintext service */
	char vm[WIRE_VM_NAME_MAX + 1];	/* control connections; may be empty */
	uint8_t *config;		/* CONFIG payload (control connections
					   that named their VM), owned */
	uint32_t config_len;
	struct wire_guest *guest;	/* GUEST, decoded, owned */
	struct wire_disk *disks;	/* DISKS, decoded (block migrations),
					   owned; WIRE_DISKS_MAX entries */
	uint32_t ndisks;
};

/* Frees what a connection owns besides its socket. */
void rx_conn_free_preamble(struct rx_conn *c);

/* Where a migration's destination QEMU is. */
struct rx_target {
	char vm[WIRE_VM_NAME_MAX + 1];	/* empty: an unnamed migration */
	char qmp_path[PATH_MAX];
	/* The QMP socket file, to tell a QEMU registered anew from a burnt
	 * one (inode numbers are reused; the change time is not). */
	dev_t dev;
	ino_t ino;
	struct timespec ctime;
	bool launched;			/* the migration starts it (--launch) */
};

/*
 * One migration. The first block is set before its thread starts and
 * constant after; the second is the service's, under the service lock.
 */
struct rx_mig {
	struct ferry_receiver *svc;
	struct rx_conn ctrl;
	struct rx_target target;
	char id[37];
	pthread_t thread;
	int wake_efd;			/* readable: the inbox has something */

	struct rx_conn inbox[RX_INBOX_MAX];
	uint32_t inbox_n;
	bool adopted;			/* a post-copy taken back from the journal
					   (its receiver had died or given up) */
	bool want_resume;		/* waits for a RESUME control connection */
	bool want_conns;		/* takes its other connections now */
	bool counted;			/* answered READY (counts for --once) */
	bool ended;			/* the thread is done: join it */
	int rc;
	struct ferry_report report;
	struct ferry_error err;
};

/* receiver.c: the migration's thread (arg: struct rx_mig). Its last act
 * is rx_mig_ended(). */
void *rx_mig_main(void *arg);
void rx_mig_ended(struct rx_mig *m);

/* service.c, for the migration's thread. */
const struct ferry_receiver_opts *rx_opts(const struct ferry_receiver *svc);
struct tls_ctx *rx_tls(const struct ferry_receiver *svc);
/* This host's memory, ratio and migrations (HOST); returns usable
 * memory, negative when the migrations in progress already exceed it. */
struct wire_host;
int64_t rx_host(struct ferry_receiver *svc, struct wire_host *h);
/* Readable once the service is stopping. */
int rx_stop_fd(const struct ferry_receiver *svc);

/*
 * The next connection routed to @m, by @deadline_ms: 0, -ETIMEDOUT,
 * -ECANCELED when the service stops, or -EPIPE when @watch_fd (the
 * control connection; -1: none) becomes readable first: the source said
 * something, or left.
 */
int rx_inbox_take(struct rx_mig *m, uint64_t deadline_ms, int watch_fd,
		  struct rx_conn *out);
/* From now on (until cleared), RESUME control connections for @m are
 * routed to its inbox. */
void rx_mig_want_resume(struct rx_mig *m, bool on);
/* From now on (until cleared), the data, return, disk and probe
 * connections of @m are; at other times they are refused, so that no
 * peer can park connections on a migration. */
void rx_mig_want_conns(struct rx_mig *m, bool on);
/* Every thread the service starts calls this first: SIGPIPE blocked (a
 * TLS alert written to a closed socket must not kill the host program). */
void rx_thread_init(void);
/* @m answered READY: it counts for --once. */
void rx_mig_counted(struct rx_mig *m);
/*
 * @m failed after its destination QEMU took the stream (migrate-incoming
 * or migrate-recover): that QEMU cannot take another (QEMU 7.2 exits, or
 * keeps its incoming state). It is not offered again until a new QEMU
 * is registered at the same path.
 */
void rx_target_burnt(struct rx_mig *m, const char *why);

#endif /* FERRY_RX_H */
