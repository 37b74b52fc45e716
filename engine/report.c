/* The final report as one JSON object (ferry migrate --json). */
#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

#include "abi.h"
#include "ferry.h"
#include "report.h"
#include "transport/tunnel.h"
#include "common/util.h"

json_t *report_json(const struct ferry_report *r)
{
	json_t *o;

	o = json_pack("{s:s,s:b,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b}",
		      "status", r->status,
		      "completed", r->completed,
		      "mode", r->direct ? "direct" : "ferry",
		      "migration_id", r->migration_id,
		      "total_ms", (json_int_t)r->total_ms,
		      "qemu_total_ms", (json_int_t)r->qemu_total_ms,
		      "downtime_ms", (json_int_t)r->downtime_ms,
		      "setup_ms", (json_int_t)r->setup_ms,
		      "ram_size_bytes", (json_int_t)r->ram_size_bytes,
		      "ram_bytes", (json_int_t)r->ram_bytes,
		      "wire_bytes", (json_int_t)r->wire_bytes,
		      "passes", (json_int_t)r->passes,
		      "throughput_bytes_per_s", (json_int_t)r->throughput_bytes_per_s,
		      "source_running", r->completed ? 0 : r->source_running);
	if (!o)
		return NULL;
	if (!r->completed)
		json_object_set_new(o, "source_untouched",
				    json_boolean(r->source_untouched));
	if (r->downtime_limit_ms) {
		json_object_set_new(o, "downtime_limit_ms",
				    json_integer(r->downtime_limit_ms));
		json_object_set_new(o, "downtime_exceeded",
				    json_boolean(r->downtime_exceeded));
	}
	{
		static const char *const at[] = { "25%", "50%", "75%" };
		json_t *off = json_object();

		for (int k = 0; off && k < 3; k++)
			json_object_set_new(off, at[k],
					    r->eta_off_ms[k] == FERRY_ETA_UNKNOWN ?
					    json_null() :
					    json_integer((json_int_t)r->eta_off_ms[k]));
		if (r->completed)
			json_object_set_new(o, "eta_off_ms", off);
		else
			json_decref(off);
	}
	if (r->has_postcopy_blocktime)
		json_object_set_new(o, "postcopy_blocktime_ms",
				    json_integer(r->postcopy_blocktime_ms));
	json_object_set_new(o, "codec", json_string(r->codec));
	json_object_set_new(o, "transport", json_string(r->transport));
	json_object_set_new(o, "probe_bytes_per_s",
			    json_integer((json_int_t)r->probe_bytes_per_s));
	json_object_set_new(o, "frames_raw", json_integer((json_int_t)r->frames_raw));
	json_object_set_new(o, "frames_lz4", json_integer((json_int_t)r->frames_lz4));
	json_object_set_new(o, "frames_zstd", json_integer((json_int_t)r->frames_zstd));
	json_object_set_new(o, "streams", json_integer(r->streams));
	{
		json_t *cpu = json_object();

		for (int i = 0; cpu && i < FERRY_TUNNEL_STAGES; i++)
			json_object_set_new(cpu, ferry_tunnel_stage_name(i),
					    json_integer((json_int_t)
						(r->tunnel_cpu_us[i] / 1000)));
		json_object_set_new(o, "tunnel_cpu_ms", cpu);
	}
	json_object_set_new(o, "tls", json_string(r->tls));
	json_object_set_new(o, "policy", json_string(r->policy));
	json_object_set_new(o, "postcopy", json_boolean(r->postcopy));
	json_object_set_new(o, "postcopy_ms", json_integer((json_int_t)r->postcopy_ms));
	json_object_set_new(o, "throttle_pct_max", json_integer(r->throttle_pct_max));
	json_object_set_new(o, "downtime_steps", json_integer(r->downtime_steps));
	json_object_set_new(o, "recoveries", json_integer(r->recoveries));
	json_object_set_new(o, "predicted_total_ms",
			    json_integer((json_int_t)r->predicted_total_ms));
	if (r->disks) {
		json_t *d = json_pack("{s:i,s:I,s:I,s:I,s:I,s:I,s:I}",
				      "count", (int)r->disks,
				      "size_bytes", (json_int_t)r->disk_size_bytes,
				      "data_bytes", (json_int_t)r->disk_data_bytes,
				      "zero_bytes", (json_int_t)r->disk_zero_bytes,
				      "wire_bytes", (json_int_t)r->disk_wire_bytes,
				      "mirror_ms", (json_int_t)r->disk_mirror_ms,
				      "switchover_ms",
				      (json_int_t)r->disk_switchover_ms);

		json_object_set_new(o, "disks", d);
	}
	json_object_set_new(o, "error", r->error[0] ? json_string(r->error) : json_null());
	/* The contract's envelope (docs/schema/report.schema.json). */
	json_object_set_new(o, "schema", json_integer(FERRY_JSON_SCHEMA));
	json_object_set_new(o, "timestamp", json_integer((json_int_t)r->end_unix_ms));
	json_object_set_new(o, "source", json_string(r->source));
	json_object_set_new(o, "destination", json_string(r->destination));
	return o;
}

int (ferry_report_write_json)(const struct ferry_report *r, int fd)
{
	return ferry_report_write_json_sized(r, ABI0_REPORT_SIZE, fd);
}

int ferry_report_write_json_sized(const struct ferry_report *in, size_t size,
				  int fd)
{
	struct ferry_report full, *r = &full;
	json_t *o;
	char *text;
	size_t len, off = 0;
	int rc = 0;

	/* Output-only: fields past what this library knows are not its. */
	memset(&full, 0, sizeof(full));
	memcpy(&full, in, size < sizeof(full) ? size : sizeof(full));
	o = report_json(r);
	if (!o)
		return -ENOMEM;
	text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (!text)
		return -ENOMEM;
	len = strlen(text);
	text[len++] = '\n';	/* the NUL becomes the newline */
	while (off < len) {
		ssize_t n = write(fd, text + off, len - off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		off += (size_t)n;
	}
	free(text);
	return rc;
}

const char *ferry_version(void)
{
	return FERRY_VERSION_STRING;
}

_Static_assert(FERRY_TUNNEL_STAGES == TUN_STAGES &&
	       FERRY_TUNNEL_STAGES == sizeof(((struct ferry_report *)0)->tunnel_cpu_us) /
				      sizeof(uint64_t),
	       "the report's tunnel stages are the tunnel's");

const char *ferry_tunnel_stage_name(int i)
{
	return i >= 0 && i < TUN_STAGES ? tun_stage_name((enum tun_stage)i) : NULL;
}

void report_tunnel_cpu(struct ferry_report *r, const struct tun_stats *st)
{
	for (int i = 0; i < TUN_STAGES; i++)
		r->tunnel_cpu_us[i] = st->stage_cpu_ns[i] / 1000;
}
