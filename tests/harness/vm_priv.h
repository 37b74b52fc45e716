/*
 * Internals of the VM harness, shared by its files:
 *   vm.c      QEMU's life (start, stop, kill), QMP, file compare
 *   serial.c  the thread that reads and timestamps the guest's serial lines
 *   reaper.c  the registry of live VMs, exit/signal cleanup, the janitor
 */
#ifndef FERRY_TESTS_VM_PRIV_H
#define FERRY_TESTS_VM_PRIV_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "tests/harness/vm.h"

/* Longest temp dir path, e.g. "/tmp/ferry-vm.AbCdEf" with a long TMPDIR. */
#define VM_DIR_MAX 64
#define VM_PATH_MAX (VM_DIR_MAX + 32)

/* What a VM's temp dir may hold; removal unlinks exactly these names. */
#define VM_QMP_SOCK "qmp.sock"
#define VM_HARNESS_SOCK "harness.sock"
#define VM_QEMU_LOG "qemu.log"

struct vm_serial {
	int fd;			/* QEMU's stdout: the guest's COM1 */
	int wake[2];		/* written by vm_serial_stop() */
	pthread_t thread;
	bool started;
	bool echo;		/* FERRY_VM_ECHO */
	pid_t pid;		/* for echo prefixes only */

	/* Only the reader thread touches these. */
	char line[VM_LINE_MAX];
	size_t line_len;
	bool line_truncated;

	/* Shared, under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready;
	bool eof;
	bool has_err;
	uint32_t fill_ms;
	uint32_t fill_base;	/* from the INFO line: where the fill starts */
	uint32_t ws_pages;	/* and how many pages the working set has */
	uint64_t hb_count;
	uint64_t last_hb_us;
	struct vm_beat *hb_ring;	/* hb_ring[i % VM_HB_RING]: HB i */
	char err_line[VM_LINE_MAX];
	char last_line[VM_LINE_MAX];
};

struct vm {
	pthread_mutex_t lock;	/* pid state: reaped, and waitpid calls */
	pid_t pid;
	bool reaped;
	int slot;		/* in the registry, -1 when none */
	uint32_t mem_mib;
	struct qmp *qmp;
	char dir[VM_DIR_MAX];
	char qmp_path[VM_PATH_MAX];
	char harness_path[VM_PATH_MAX];
	char log_path[VM_PATH_MAX];
	struct vm_serial serial;
};

/* serial.c */
int vm_serial_init(struct vm_serial *s, pid_t pid, struct ferry_error *err);
/* Takes ownership of @fd and starts the reader thread. */
int vm_serial_start(struct vm_serial *s, int fd, struct ferry_error *err);
/* Stops the thread (if started) and frees everything; safe after a failed
 * init or start. */
void vm_serial_fini(struct vm_serial *s);

/* reaper.c */
/* Record a live VM's temp dir (before QEMU exists: pid 0). Returns the slot
 * or -ENOSPC / -errno (janitor or handlers could not be set up). */
int vm_reg_add(const char *dir, struct ferry_error *err);
void vm_reg_set_pid(int slot, pid_t pid);
/* QEMU is about to be reaped: its pid must no longer be killed. */
void vm_reg_clear_pid(int slot);
/* The VM's dir is gone: forget the slot. */
void vm_reg_del(int slot);
/* Scratch trees the janitor removes if the process dies (tmpdir.c). */
int vm_reg_tree(const char *dir, struct ferry_error *err);
void vm_unreg_tree(const char *dir);
/* Remove the names a VM dir may hold, then the dir; async-signal-safe. */
void vm_remove_dir(const char *dir);

#endif /* FERRY_TESTS_VM_PRIV_H */
