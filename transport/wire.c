/* Encoding and validation of ferry's wire format (see wire.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "be.h"
#include "wire.h"







/*
 * Hello layout (64 bytes):
 *   0 u64 magic   8 u16 version   10 u16 conn   12 u32 options
 *   16 mig_id[16] 32 u64 ram_bytes 40 u16 stream_index 42 u16 stream_count
 *   44 u32 frame_max   48..63 zero (reserved; rejected when non-zero)
 */
void wire_hello_encode(const struct wire_hello *h, uint8_t out[WIRE_HELLO_BYTES])
{
	memset(out, 0, WIRE_HELLO_BYTES);
	be_put64(out, WIRE_MAGIC);
	be_put16(out + 8, h->version);
	be_put16(out + 10, h->conn);
	be_put32(out + 12, h->options);
	memcpy(out + 16, h->mig_id, WIRE_MIG_ID_BYTES);
	be_put64(out + 32, h->ram_bytes);
	be_put16(out + 40, h->stream_index);
	be_put16(out + 42, h->stream_count);
	be_put32(out + 44, h->frame_max);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

int wire_hello_decode(const uint8_t in[WIRE_HELLO_BYTES], struct wire_hello *h,
		      struct ferry_error *err)
{
	uint64_t magic = be_get64(in);

	if (magic != WIRE_MAGIC)
		return ferry_error_set(err, -EBADMSG,
			"not a ferry peer: bad hello magic 0x%016llx",
			(unsigned long long)magic);
	h->version = be_get16(in + 8);
	if (h->version != WIRE_VERSION)
		return ferry_error_set(err, -EPROTONOSUPPORT,
			"peer speaks ferry protocol version %u, this is version %u",
			h->version, WIRE_VERSION);
	h->conn = be_get16(in + 10);
	if (h->conn < WIRE_CONN_CONTROL || h->conn > WIRE_CONN_MAX)
		return ferry_error_set(err, -EPROTO,
			"hello names unknown connection kind %u", h->conn);
	h->options = be_get32(in + 12);
	if (h->options & ~WIRE_OPT_KNOWN)
		return ferry_error_set(err, -EPROTO,
			"hello has unknown option bits 0x%x",
			h->options & ~WIRE_OPT_KNOWN);
	memcpy(h->mig_id, in + 16, WIRE_MIG_ID_BYTES);
	if (all_zero(h->mig_id, WIRE_MIG_ID_BYTES))
		return ferry_error_set(err, -EPROTO, "hello has an empty migration id");
	h->ram_bytes = be_get64(in + 32);
	if (h->ram_bytes < WIRE_RAM_MIN_BYTES || h->ram_bytes > WIRE_RAM_MAX_BYTES)
		return ferry_error_set(err, -EPROTO,
			"hello declares guest RAM of %llu bytes, outside [%llu, %llu]",
			(unsigned long long)h->ram_bytes,
			(unsigned long long)WIRE_RAM_MIN_BYTES,
			(unsigned long long)WIRE_RAM_MAX_BYTES);
	h->stream_index = be_get16(in + 40);
	h->stream_count = be_get16(in + 42);
	if (h->stream_count < 1 || h->stream_count > WIRE_STREAMS_MAX ||
	    h->stream_index >= h->stream_count)
		return ferry_error_set(err, -EPROTO,
			"hello has stream %u of %u (at most %u streams)",
			h->stream_index, h->stream_count, WIRE_STREAMS_MAX);
	h->frame_max = be_get32(in + 44);
	if (h->frame_max < WIRE_FRAME_MAX_MIN ||
	    h->frame_max > WIRE_FRAME_PAYLOAD_MAX)
		return ferry_error_set(err, -EPROTO,
			"hello declares frames of %u bytes, outside [%u, %u]",
			h->frame_max, WIRE_FRAME_MAX_MIN, WIRE_FRAME_PAYLOAD_MAX);
	if (!all_zero(in + 48, WIRE_HELLO_BYTES - 48))
		return ferry_error_set(err, -EPROTO,
			"hello has non-zero reserved bytes");
	return 0;
}

void wire_ctrl_encode(const struct wire_ctrl_hdr *h,
		      uint8_t out[WIRE_CTRL_HDR_BYTES])
{
	be_put32(out, h->len);
	be_put16(out + 4, h->type);
	be_put16(out + 6, 0);
}

/*
 * Payload length range of each control message type, the one place where
 * they are written down; wire_ctrl_decode() refuses anything outside
 * before the payload is read (as QEMU's return path checks rp_cmd_args[]).
 */
static const struct {
	const char *name;
	uint32_t min, max;
} ctrl_types[WIRE_CTRL_MAX_TYPE + 1] = {
	[WIRE_CTRL_READY] = { "READY", 0, 0 },
	[WIRE_CTRL_ERROR] = { "ERROR", 0, WIRE_CTRL_PAYLOAD_MAX },
	[WIRE_CTRL_FINISH] = { "FINISH", 1, 1 },
	[WIRE_CTRL_FINISHED] = { "FINISHED", 1, 1 + WIRE_STATUS_MAX },
	[WIRE_CTRL_CANCEL] = { "CANCEL", 0, WIRE_CTRL_PAYLOAD_MAX },
	[WIRE_CTRL_POSTCOPY] = { "POSTCOPY", 1, 1 },
	[WIRE_CTRL_PROBED] = { "PROBED", WIRE_PROBED_BYTES, WIRE_PROBED_BYTES },
	[WIRE_CTRL_DISKS] = { "DISKS", 2, WIRE_CTRL_PAYLOAD_MAX },
	[WIRE_CTRL_MEMORY] = { "MEMORY", 0, 0 },
	[WIRE_CTRL_VM] = { "VM", 1, WIRE_VM_NAME_MAX },
	[WIRE_CTRL_CONFIG] = { "CONFIG", 0, WIRE_CTRL_PAYLOAD_MAX },
	[WIRE_CTRL_GUEST] = { "GUEST", 0, WIRE_CTRL_PAYLOAD_MAX },
	[WIRE_CTRL_HOST] = { "HOST", WIRE_HOST_BYTES, WIRE_HOST_BYTES },
};

int wire_ctrl_decode(const uint8_t in[WIRE_CTRL_HDR_BYTES],
		     struct wire_ctrl_hdr *h, struct ferry_error *err)
{
	h->len = be_get32(in);
	h->type = be_get16(in + 4);
	if (h->type < 1 || h->type > WIRE_CTRL_MAX_TYPE)
		return ferry_error_set(err, -EPROTO,
			"unknown control message type %u", h->type);
	if (h->len > WIRE_CTRL_PAYLOAD_MAX)
		return ferry_error_set(err, -EMSGSIZE,
			"control message %s of %u bytes exceeds the limit of %u",
			wire_ctrl_name(h->type), h->len, WIRE_CTRL_PAYLOAD_MAX);
	if (h->len < ctrl_types[h->type].min || h->len > ctrl_types[h->type].max)
		return ferry_error_set(err, -EPROTO,
			"control message %s of %u bytes (expected %u..%u)",
			wire_ctrl_name(h->type), h->len, ctrl_types[h->type].min,
			ctrl_types[h->type].max);
	if (be_get16(in + 6) != 0)
		return ferry_error_set(err, -EPROTO,
			"control message has non-zero reserved field");
	return 0;
}

const char *wire_ctrl_name(uint16_t type)
{
	if (type < 1 || type > WIRE_CTRL_MAX_TYPE)
		return "?";
	return ctrl_types[type].name;
}

uint32_t wire_flag_encode(bool flag, uint8_t out[1])
{
	out[0] = flag ? 1 : 0;
	return 1;
}

int wire_flag_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		     bool *flag, struct ferry_error *err)
{
	if (h->len != 1 || payload[0] > 1)
		return ferry_error_set(err, -EPROTO, "%s carries a flag of %u "
				       "bytes (value %u), expected one byte 0 or 1",
				       wire_ctrl_name(h->type), h->len,
				       h->len ? payload[0] : 0);
	*flag = payload[0] == 1;
	return 0;
}

void wire_host_encode(const struct wire_host *h, uint8_t out[WIRE_HOST_BYTES])
{
	be_put64(out, h->mem_total);
	be_put64(out + 8, h->mem_available);
	be_put64(out + 16, h->usable);
	be_put32(out + 24, h->ratio_milli);
	be_put32(out + 28, h->migrations);
	be_put32(out + 32, h->max_migrations);
	be_put32(out + 36, 0);
}

int wire_host_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		     struct wire_host *host, struct ferry_error *err)
{
	if (h->type != WIRE_CTRL_HOST || h->len != WIRE_HOST_BYTES)
		return ferry_error_set(err, -EPROTO, "expected HOST, got %s (%u "
				       "bytes)", wire_ctrl_name(h->type), h->len);
	host->mem_total = be_get64(payload);
	host->mem_available = be_get64(payload + 8);
	host->usable = be_get64(payload + 16);
	host->ratio_milli = be_get32(payload + 24);
	host->migrations = be_get32(payload + 28);
	host->max_migrations = be_get32(payload + 32);
	if (be_get32(payload + 36) || host->mem_available > host->mem_total)
		return ferry_error_set(err, -EPROTO, "malformed HOST message");
	return 0;
}

void wire_probed_encode(uint64_t bytes, uint64_t ns,
			uint8_t out[WIRE_PROBED_BYTES])
{
	be_put64(out, bytes);
	be_put64(out + 8, ns);
}

int wire_probed_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		       uint64_t *bytes, uint64_t *ns, struct ferry_error *err)
{
	if (h->type != WIRE_CTRL_PROBED || h->len != WIRE_PROBED_BYTES)
		return ferry_error_set(err, -EPROTO, "expected PROBED, got %s "
				       "(%u bytes)", wire_ctrl_name(h->type), h->len);
	*bytes = be_get64(payload);
	*ns = be_get64(payload + 8);
	return 0;
}

uint32_t wire_finished_encode(bool ok, const char *status, uint32_t blocktime_ms,
			      uint8_t out[1 + WIRE_STATUS_MAX])
{
	/* With the blocktime, the whole still fits what older sources take. */
	size_t room = blocktime_ms == WIRE_BLOCKTIME_UNKNOWN ? WIRE_STATUS_MAX :
		      WIRE_STATUS_MAX - 1 - 4;
	size_t n = strnlen(status, room);

	out[0] = ok ? 1 : 0;
	memcpy(out + 1, status, n);
	if (blocktime_ms == WIRE_BLOCKTIME_UNKNOWN)
		return (uint32_t)(1 + n);
	out[1 + n] = 0;
	be_put32(out + 2 + n, blocktime_ms);
	return (uint32_t)(1 + n + 1 + 4);
}

int wire_finished_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
			 bool *ok, const char **status, uint32_t *blocktime_ms,
			 struct ferry_error *err)
{
	size_t n;

	if (h->type != WIRE_CTRL_FINISHED || h->len < 1 || payload[0] > 1)
		return ferry_error_set(err, -EPROTO, "malformed FINISHED");
	n = strnlen((const char *)payload + 1, h->len - 1);
	if (h->len == 1 + n) {
		*blocktime_ms = WIRE_BLOCKTIME_UNKNOWN;
	} else if (h->len == 1 + n + 1 + 4) {
		*blocktime_ms = be_get32(payload + 2 + n);
	} else {
		return ferry_error_set(err, -EPROTO, "malformed FINISHED "
				       "(%u bytes after a %zu-byte state)",
				       h->len, n);
	}
	*ok = payload[0] == 1;
	*status = (const char *)payload + 1;
	return 0;
}

uint32_t wire_guest_cpuid_bits(const struct wire_guest *g, const char *key)
{
	for (uint32_t i = 0; i < g->ncpuid; i++)
		if (!strcmp(g->cpuid[i].key, key))
			return g->cpuid[i].bits;
	return 0;
}

bool wire_guest_word_valid(const char *word)
{
	size_t n = strnlen(word, WIRE_GUEST_WORD_MAX + 1);

	if (n < 1 || n > WIRE_GUEST_WORD_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = word[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ',' ||
		      c == ':' || c == '-'))
			return false;
	}
	return true;
}

int wire_guest_encode(const struct wire_guest *g, uint8_t *out, uint32_t cap,
		      struct ferry_error *err)
{
	size_t len = 0;
	int n;

	if (!wire_guest_word_valid(g->machine) || !wire_guest_word_valid(g->cpu))
		return ferry_error_set(err, -EINVAL, "the source QEMU's machine "
				       "type or CPU model is not a word ferry "
				       "can send ('%.80s', '%.80s')", g->machine,
				       g->cpu);
	if (g->ndevices > WIRE_GUEST_DEVICES_MAX)
		return ferry_error_set(err, -E2BIG, "the source QEMU has more than "
				       "%u devices", WIRE_GUEST_DEVICES_MAX);
	n = snprintf((char *)out, cap, "machine %s\ncpu %s\n", g->machine, g->cpu);
	if (n < 0 || (size_t)n >= cap)
		return ferry_error_set(err, -E2BIG, "GUEST does not fit");
	len = (size_t)n;
	for (uint32_t i = 0; i < g->ndevices; i++) {
		const struct wire_guest_device *d = &g->devices[i];

		if (!wire_guest_word_valid(d->type) ||
		    (d->id[0] && !wire_guest_word_valid(d->id)))
			return ferry_error_set(err, -EINVAL, "device '%.80s' (id "
					       "'%.80s') is not words ferry can "
					       "send", d->type, d->id);
		n = snprintf((char *)out + len, cap - len, "device %s%s%s\n",
			     d->type, d->id[0] ? " " : "", d->id);
		if (n < 0 || (size_t)n >= cap - len)
			return ferry_error_set(err, -E2BIG, "the source QEMU's "
					       "devices do not fit in GUEST (%u "
					       "bytes)", cap);
		len += (size_t)n;
	}
	if (g->ncpuid > WIRE_GUEST_CPUID_MAX)
		return ferry_error_set(err, -E2BIG, "more than %u CPUID words",
				       WIRE_GUEST_CPUID_MAX);
	for (uint32_t i = 0; i < g->ncpuid; i++) {
		if (!wire_guest_word_valid(g->cpuid[i].key))
			return ferry_error_set(err, -EINVAL, "CPUID word '%.80s' "
					       "is not a word ferry can send",
					       g->cpuid[i].key);
		n = snprintf((char *)out + len, cap - len, "cpuid %s 0x%x\n",
			     g->cpuid[i].key, g->cpuid[i].bits);
		if (n < 0 || (size_t)n >= cap - len)
			return ferry_error_set(err, -E2BIG, "the source QEMU's "
					       "devices and CPU do not fit in GUEST "
					       "(%u bytes)", cap);
		len += (size_t)n;
	}
	return (int)len;
}

/* The next word of @line (up to a space or its end) into @out. */
static const char *guest_word(const char *line, char out[WIRE_GUEST_WORD_MAX + 1])
{
	size_t n = strcspn(line, " ");

	if (n < 1 || n > WIRE_GUEST_WORD_MAX)
		return NULL;
	memcpy(out, line, n);
	out[n] = '\0';
	if (!wire_guest_word_valid(out))
		return NULL;
	return line[n] == ' ' ? line + n + 1 : line + n;
}

int wire_guest_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		      struct wire_guest *g, struct ferry_error *err)
{
	char text[WIRE_CTRL_PAYLOAD_MAX + 1], *line, *save = NULL;
	char key[WIRE_GUEST_WORD_MAX + 1];

	memset(g, 0, sizeof(*g));
	if (h->type != WIRE_CTRL_GUEST || h->len > WIRE_CTRL_PAYLOAD_MAX)
		return ferry_error_set(err, -EPROTO, "malformed GUEST message");
	memcpy(text, payload, h->len);
	text[h->len] = '\0';
	if (strlen(text) != h->len || (h->len && text[h->len - 1] != '\n'))
		return ferry_error_set(err, -EPROTO, "GUEST: not lines of text");
	for (line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		const char *rest = guest_word(line, key);
		struct wire_guest_device *d;

		if (!rest)
			goto bad;
		if (!strcmp(key, "machine") && !g->machine[0]) {
			rest = guest_word(rest, g->machine);
		} else if (!strcmp(key, "cpu") && !g->cpu[0]) {
			rest = guest_word(rest, g->cpu);
		} else if (!strcmp(key, "cpuid")) {
			char hex[WIRE_GUEST_WORD_MAX + 1], *end;
			unsigned long v;

			if (g->ncpuid == WIRE_GUEST_CPUID_MAX)
				return ferry_error_set(err, -E2BIG, "GUEST: more "
						       "than %u CPUID words",
						       WIRE_GUEST_CPUID_MAX);
			rest = guest_word(rest, g->cpuid[g->ncpuid].key);
			if (rest)
				rest = guest_word(rest, hex);
			if (!rest || strncmp(hex, "0x", 2))
				goto bad;
			errno = 0;
			v = strtoul(hex + 2, &end, 16);
			if (errno || *end || end == hex + 2 || v > UINT32_MAX)
				goto bad;
			g->cpuid[g->ncpuid++].bits = (uint32_t)v;
		} else if (!strcmp(key, "device")) {
			if (g->ndevices == WIRE_GUEST_DEVICES_MAX)
				return ferry_error_set(err, -E2BIG, "GUEST: more "
						       "than %u devices",
						       WIRE_GUEST_DEVICES_MAX);
			d = &g->devices[g->ndevices++];
			rest = guest_word(rest, d->type);
			if (rest && *rest)
				rest = guest_word(rest, d->id);
		} else {
			goto bad;
		}
		if (!rest || *rest)
			goto bad;
	}
	if (!g->machine[0] || !g->cpu[0])
		return ferry_error_set(err, -EPROTO, "GUEST: no machine or cpu line");
	return 0;
bad:
	return ferry_error_set(err, -EPROTO, "GUEST: a line that is not "
			       "'machine TYPE', 'cpu TYPE', 'device TYPE [ID]' "
			       "or 'cpuid KEY 0xBITS' "
			       "(words of A-Z a-z 0-9 _ . , : -, at most %u)",
			       WIRE_GUEST_WORD_MAX);
}

bool wire_vm_name_valid(const char *name)
{
	size_t n = strnlen(name, WIRE_VM_NAME_MAX + 1);

	if (n < 1 || n > WIRE_VM_NAME_MAX || name[0] == '.' || name[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

int wire_vm_encode(const char *name, uint8_t out[WIRE_VM_NAME_MAX],
		   struct ferry_error *err)
{
	size_t n;

	if (!wire_vm_name_valid(name))
		return ferry_error_set(err, -EINVAL, "'%.80s' is not a valid VM "
				       "name (1..%u characters of A-Z a-z 0-9 _ . -, "
				       "not starting with . or -)", name,
				       WIRE_VM_NAME_MAX);
	n = strlen(name);
	memcpy(out, name, n);
	return (int)n;
}

int wire_vm_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		   char name[WIRE_VM_NAME_MAX + 1], struct ferry_error *err)
{
	if (h->type != WIRE_CTRL_VM || h->len < 1 || h->len > WIRE_VM_NAME_MAX)
		return ferry_error_set(err, -EPROTO, "malformed VM message");
	memcpy(name, payload, h->len);
	name[h->len] = '\0';
	if (strlen(name) != h->len || !wire_vm_name_valid(name))
		return ferry_error_set(err, -EINVAL, "the source names an invalid "
				       "VM (1..%u characters of A-Z a-z 0-9 _ . -, "
				       "not starting with . or -)", WIRE_VM_NAME_MAX);
	return 0;
}

void wire_frame_encode(const struct wire_frame_hdr *h,
		       uint8_t out[WIRE_FRAME_HDR_BYTES])
{
	be_put32(out, h->len);
	be_put16(out + 4, h->type);
	be_put16(out + 6, h->flags);
	be_put32(out + 8, h->raw_len);
	be_put32(out + 12, 0);
	be_put64(out + 16, h->seq);
}

int wire_frame_decode(const uint8_t in[WIRE_FRAME_HDR_BYTES],
		      uint32_t frame_max, struct wire_frame_hdr *h,
		      struct ferry_error *err)
{
	unsigned long long seq;

	h->len = be_get32(in);
	h->type = be_get16(in + 4);
	h->flags = be_get16(in + 6);
	h->raw_len = be_get32(in + 8);
	h->seq = be_get64(in + 16);
	seq = (unsigned long long)h->seq;
	if (h->type < 1 || h->type > WIRE_FRAME_MAX_TYPE)
		return ferry_error_set(err, -EPROTO,
			"frame %llu has unknown type %u", seq, h->type);
	if (h->len > frame_max || h->raw_len > frame_max)
		return ferry_error_set(err, -EMSGSIZE,
			"frame %llu declares %u bytes (%u decoded), limit %u",
			seq, h->len, h->raw_len, frame_max);
	if ((h->flags & ~WIRE_FLAGS_CODEC_MASK) ||
	    (h->flags & WIRE_FLAGS_CODEC_MASK) > WIRE_CODEC_MAX ||
	    be_get32(in + 12) != 0)
		return ferry_error_set(err, -EPROTO,
			"frame %llu has flags 0x%x unknown to protocol version %u",
			seq, h->flags, WIRE_VERSION);
	if (wire_frame_codec(h) == WIRE_CODEC_RAW && h->raw_len != h->len)
		return ferry_error_set(err, -EPROTO,
			"frame %llu: raw length %u differs from length %u without a codec",
			seq, h->raw_len, h->len);
	if (wire_frame_codec(h) != WIRE_CODEC_RAW && (!h->len || !h->raw_len))
		return ferry_error_set(err, -EPROTO,
			"compressed frame %llu is empty", seq);
	if (h->type == WIRE_FRAME_END && (h->len != 0 || h->flags != 0))
		return ferry_error_set(err, -EPROTO,
			"END frame %llu carries %u bytes", seq, h->len);
	return 0;
}

bool wire_disk_id_valid(const char *id)
{
	size_t n = strnlen(id, WIRE_DISK_ID_MAX + 1);

	if (n == 0 || n > WIRE_DISK_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

/* Per disk after the id: id_len, flags, size, allocated. */
#define WIRE_DISK_ENTRY_FIXED (1 + 1 + 8 + 8)

int wire_disks_encode(const struct wire_disk *d, uint32_t n, uint8_t *out,
		      uint32_t cap, struct ferry_error *err)
{
	uint32_t at = 2;

	if (n == 0 || n > WIRE_DISKS_MAX)
		return ferry_error_set(err, -EMSGSIZE, "%u disks; ferry migrates "
				       "1 to %d", n, WIRE_DISKS_MAX);
	if (cap < 2)
		return ferry_error_set(err, -EMSGSIZE, "no room for the manifest");
	be_put16(out, (uint16_t)n);
	for (uint32_t i = 0; i < n; i++) {
		size_t idl = strlen(d[i].id);

		if (!wire_disk_id_valid(d[i].id))
			return ferry_error_set(err, -EINVAL, "disk id '%s' is not "
				"1-%d of [A-Za-z0-9_.-]", d[i].id, WIRE_DISK_ID_MAX);
		if (at + idl + WIRE_DISK_ENTRY_FIXED > cap)
			return ferry_error_set(err, -EMSGSIZE, "disk manifest over "
					       "%u bytes", cap);
		out[at++] = (uint8_t)idl;
		memcpy(out + at, d[i].id, idl);
		at += (uint32_t)idl;
		out[at++] = d[i].flags;
		be_put64(out + at, d[i].size);
		be_put64(out + at + 8, d[i].allocated);
		at += 16;
	}
	return (int)at;
}

int wire_disks_decode(const uint8_t *in, uint32_t len, struct wire_disk *d,
		      uint32_t *n, struct ferry_error *err)
{
	uint32_t at = 2, count;

	if (len < 2)
		return ferry_error_set(err, -EPROTO, "disk manifest of %u bytes", len);
	count = be_get16(in);
	if (count == 0 || count > WIRE_DISKS_MAX)
		return ferry_error_set(err, -EPROTO, "disk manifest lists %u "
				       "disks (1-%d allowed)", count, WIRE_DISKS_MAX);
	for (uint32_t i = 0; i < count; i++) {
		uint32_t idl;

		if (at + 1 > len)
			goto short_manifest;
		idl = in[at++];
		if (idl == 0 || idl > WIRE_DISK_ID_MAX ||
		    at + idl + WIRE_DISK_ENTRY_FIXED - 1 > len)
			goto short_manifest;
		memcpy(d[i].id, in + at, idl);
		d[i].id[idl] = 0;
		at += idl;
		/* A NUL inside would cut the id short (found by fuzz_disks). */
		if (strlen(d[i].id) != idl || !wire_disk_id_valid(d[i].id))
			return ferry_error_set(err, -EPROTO, "disk manifest: "
					       "invalid disk id");
		d[i].flags = in[at++];
		if (d[i].flags & ~WIRE_DISK_READ_ONLY)
			return ferry_error_set(err, -EPROTO, "disk manifest: "
				"unknown flags 0x%x for '%s'", d[i].flags, d[i].id);
		d[i].size = be_get64(in + at);
		d[i].allocated = be_get64(in + at + 8);
		at += 16;
		if (d[i].size == 0 || d[i].size > WIRE_DISK_SIZE_MAX)
			return ferry_error_set(err, -EPROTO, "disk manifest: '%s' "
				"has size %llu", d[i].id,
				(unsigned long long)d[i].size);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(d[j].id, d[i].id))
				return ferry_error_set(err, -EPROTO, "disk manifest "
					"names '%s' twice", d[i].id);
	}
	if (at != len)
		return ferry_error_set(err, -EPROTO, "disk manifest has %u "
				       "trailing bytes", len - at);
	*n = count;
	return 0;
short_manifest:
	return ferry_error_set(err, -EPROTO, "disk manifest cut short at byte %u "
			       "of %u", at, len);
}

void wire_disk_rec_encode(const struct wire_disk_rec *r,
			  uint8_t out[WIRE_DISK_HDR_BYTES])
{
	be_put32(out, WIRE_DISK_MAGIC);
	out[4] = r->op;
	out[5] = r->disk;
	be_put16(out + 6, r->flags);
	be_put64(out + 8, r->offset);
	be_put32(out + 16, r->len);
	be_put32(out + 20, 0);
}

int wire_disk_rec_decode(const uint8_t in[WIRE_DISK_HDR_BYTES],
			 struct wire_disk_rec *r, struct ferry_error *err)
{
	uint32_t magic = be_get32(in);

	if (magic != WIRE_DISK_MAGIC)
		return ferry_error_set(err, -EBADMSG, "disk record with bad magic "
				       "0x%08x", magic);
	r->op = in[4];
	r->disk = in[5];
	r->flags = be_get16(in + 6);
	r->offset = be_get64(in + 8);
	r->len = be_get32(in + 16);
	if (be_get32(in + 20) != 0)
		return ferry_error_set(err, -EPROTO, "disk record with non-zero "
				       "reserved field");
	if (r->op == 0 || r->op > WIRE_DISK_MAX_OP)
		return ferry_error_set(err, -EPROTO, "unknown disk record op %u",
				       r->op);
	if ((r->flags & ~WIRE_DISK_MAY_TRIM) ||
	    (r->flags && r->op != WIRE_DISK_ZERO))
		return ferry_error_set(err, -EPROTO, "disk record op %u with "
				       "flags 0x%x", r->op, r->flags);
	switch (r->op) {
	case WIRE_DISK_DATA:
		if (r->len == 0 || r->len > WIRE_DISK_DATA_MAX)
			return ferry_error_set(err, -EMSGSIZE, "disk DATA record "
				"of %u bytes (1-%u allowed)", r->len,
				WIRE_DISK_DATA_MAX);
		break;
	case WIRE_DISK_ZERO:
		if (r->len == 0)
			return ferry_error_set(err, -EPROTO, "empty disk ZERO record");
		break;
	case WIRE_DISK_ERROR:
		if (r->len > WIRE_DISK_ERROR_MAX)
			return ferry_error_set(err, -EMSGSIZE, "disk ERROR record "
				"of %u bytes (at most %u)", r->len,
				WIRE_DISK_ERROR_MAX);
		break;
	default:
		if (r->len != 0)
			return ferry_error_set(err, -EPROTO, "disk record op %u "
					       "with a payload", r->op);
	}
	return 0;
}

int wire_disk_rec_check(const struct wire_disk_rec *r, const struct wire_disk *d,
			uint32_t n, struct ferry_error *err)
{
	if (r->op == WIRE_DISK_FLUSHED || r->op == WIRE_DISK_ERROR)
		return ferry_error_set(err, -EPROTO, "disk record op %u from "
				       "the source", r->op);
	if (r->op == WIRE_DISK_FLUSH || r->op == WIRE_DISK_END)
		return 0;
	if (r->disk >= n)
		return ferry_error_set(err, -EPROTO, "disk record for disk %u; "
				       "the manifest has %u", r->disk, n);
	if (r->len > d[r->disk].size || r->offset > d[r->disk].size - r->len)
		return ferry_error_set(err, -ERANGE, "disk %s: record of %u bytes "
			"at %llu is beyond its %llu bytes", d[r->disk].id, r->len,
			(unsigned long long)r->offset,
			(unsigned long long)d[r->disk].size);
	return 0;
}

void wire_mig_id_format(const uint8_t id[WIRE_MIG_ID_BYTES], char out[37])
{
	snprintf(out, 37,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7], id[8],
		 id[9], id[10], id[11], id[12], id[13], id[14], id[15]);
}

int wire_mig_id_parse(const char *text, uint8_t id[WIRE_MIG_ID_BYTES])
{
	static const uint8_t dash_at[] = { 8, 13, 18, 23 };
	uint32_t n = 0, d = 0;

	if (strlen(text) != 36)
		return -EINVAL;
	for (uint32_t i = 0; i < 36; i++) {
		int v;

		if (d < sizeof(dash_at) && i == dash_at[d]) {
			if (text[i] != '-')
				return -EINVAL;
			d++;
			continue;
		}
		v = text[i] >= '0' && text[i] <= '9' ? text[i] - '0' :
		    text[i] >= 'a' && text[i] <= 'f' ? text[i] - 'a' + 10 : -1;
		if (v < 0)
			return -EINVAL;
		if (n % 2 == 0)
			id[n / 2] = (uint8_t)(v << 4);
		else
			id[n / 2] |= (uint8_t)v;
		n++;
	}
	return 0;
}

int wire_mig_id_random(uint8_t id[WIRE_MIG_ID_BYTES])
{
	ssize_t n = getrandom(id, WIRE_MIG_ID_BYTES, 0);

	if (n != WIRE_MIG_ID_BYTES)
		return n < 0 ? -errno : -EIO;
	id[6] = (uint8_t)((id[6] & 0x0f) | 0x40);	/* UUID version 4 */
	id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
	return 0;
}

int wire_config_encode(char *const *argv, uint32_t argc, uint8_t *out,
		       uint32_t cap, struct ferry_error *err)
{
	uint32_t len = 0;

	if (argc > WIRE_CONFIG_ARGS_MAX)
		return ferry_error_set(err, -E2BIG, "the QEMU command line has "
				       "%u arguments (at most %u)", argc,
				       WIRE_CONFIG_ARGS_MAX);
	for (uint32_t i = 0; i < argc; i++) {
		size_t n = strlen(argv[i]) + 1;

		/* What wire_config_decode() refuses is never sent. */
		for (const char *c = argv[i]; *c; c++)
			if (*c < 0x20 || *c > 0x7e)
				return ferry_error_set(err, -EINVAL, "QEMU argument "
					"%u has a byte 0x%02x (printable ASCII "
					"only)", i, (uint8_t)*c);

		if (n > cap - len)
			return ferry_error_set(err, -E2BIG, "the QEMU command line "
					       "is longer than %u bytes", cap);
		memcpy(out + len, argv[i], n);
		len += (uint32_t)n;
	}
	return (int)len;
}

int wire_config_decode(const struct wire_ctrl_hdr *h, const uint8_t *payload,
		       const char *argv[WIRE_CONFIG_ARGS_MAX], uint32_t *argc,
		       struct ferry_error *err)
{
	uint32_t start = 0;

	*argc = 0;
	if (h->type != WIRE_CTRL_CONFIG)
		return ferry_error_set(err, -EPROTO, "malformed CONFIG");
	if (h->len && payload[h->len - 1] != '\0')
		return ferry_error_set(err, -EPROTO, "CONFIG does not end with "
				       "a NUL");
	for (uint32_t i = 0; i < h->len; i++) {
		uint8_t c = payload[i];

		if (c == '\0') {
			if (*argc == WIRE_CONFIG_ARGS_MAX) {
				*argc = 0;
				return ferry_error_set(err, -E2BIG, "CONFIG has "
					"more than %u arguments", WIRE_CONFIG_ARGS_MAX);
			}
			argv[(*argc)++] = (const char *)payload + start;
			start = i + 1;
		} else if (c < 0x20 || c > 0x7e) {
			uint32_t bad = *argc;

			*argc = 0;
			return ferry_error_set(err, -EPROTO, "CONFIG argument %u "
					       "has a byte 0x%02x (printable ASCII "
					       "only)", bad, c);
		}
	}
	return 0;
}
