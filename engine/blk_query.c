/* Which disks a QEMU has, from query-block (both sides of --block). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "blk.h"
#include "mig.h"

/*
 * The device id: QEMU reports a device with an id as that id ("cd0"), and
 * a device whose block backend sits on a child object as its path
 * ("/machine/peripheral/vdisk0/virtio-backend"). Devices without an id
 * are known by their drive id (-drive id=..., the BlockBackend name).
 */
static void device_id(json_t *blk, char *out, size_t len)
{
	const char *qdev = json_string_value(json_object_get(blk, "qdev"));
	const char *dev = json_string_value(json_object_get(blk, "device"));
	static const char peripheral[] = "/machine/peripheral/";

	out[0] = 0;
	if (qdev && !strncmp(qdev, peripheral, sizeof(peripheral) - 1)) {
		const char *id = qdev + sizeof(peripheral) - 1;
		size_t n = strcspn(id, "/");

		if (n < len) {
			memcpy(out, id, n);
			out[n] = 0;
		}
	} else if (qdev && qdev[0] && qdev[0] != '/') {
		snprintf(out, len, "%s", qdev);
	}
	if (!out[0] && dev)
		snprintf(out, len, "%s", dev);
}

static bool listed(const char *only, const char *id)
{
	size_t n = strlen(id);

	for (const char *p = only; p && *p;) {
		size_t l = strcspn(p, ",");

		if (l == n && !strncmp(p, id, n))
			return true;
		p += l + (p[l] == ',');
	}
	return false;
}

static int fill_disk(json_t *blk, json_t *ins, struct blk_disk_info *d,
		     struct ferry_error *err)
{
	json_t *image = json_object_get(ins, "image");
	const char *dev = json_string_value(json_object_get(blk, "device"));
	const char *node = json_string_value(json_object_get(ins, "node-name"));
	const char *fmt = json_string_value(json_object_get(ins, "drv"));
	const char *file = json_string_value(json_object_get(ins, "file"));
	json_t *vsize = json_object_get(image, "virtual-size");
	json_t *asize = json_object_get(image, "actual-size");

	if (!node || !fmt || !json_is_integer(vsize) ||
	    json_integer_value(vsize) <= 0)
		return ferry_error_set(err, -EPROTO, "query-block: disk '%s' "
				       "lacks node-name, drv or virtual-size",
				       d->w.id);
	snprintf(d->node, sizeof(d->node), "%s", dev && dev[0] ? dev : node);
	snprintf(d->node_name, sizeof(d->node_name), "%s", node);
	snprintf(d->format, sizeof(d->format), "%s", fmt);
	snprintf(d->filename, sizeof(d->filename), "%s", file ? file : "");
	d->read_only = json_is_true(json_object_get(ins, "ro"));
	d->w.flags = d->read_only ? WIRE_DISK_READ_ONLY : 0;
	d->w.size = (uint64_t)json_integer_value(vsize);
	/* Without actual-size (a network image), assume all of it. */
	d->w.allocated = json_is_integer(asize) && json_integer_value(asize) >= 0 ?
			 (uint64_t)json_integer_value(asize) : d->w.size;
	return 0;
}

int blk_query_disks(struct qmp *q, const char *only, struct blk_disk_info *d,
		    uint32_t *n, struct ferry_error *err)
{
	json_t *ret = NULL, *blk;
	size_t i;
	int rc = 0;

	*n = 0;
	rc = qemu_query_block(q, &ret, err);
	if (rc < 0)
		return rc;
	json_array_foreach(ret, i, blk) {
		json_t *ins = json_object_get(blk, "inserted");
		char id[WIRE_DISK_ID_MAX + 2];

		device_id(blk, id, sizeof(id));
		if (!ins || (only && !listed(only, id)))
			continue;
		/* A disk ferry cannot name would silently stay behind. */
		if (!id[0]) {
			rc = ferry_error_set(err, -EINVAL, "a disk (node %s) has "
				"neither a device id nor a drive id; give its "
				"device an id, or name the disks with --disks",
				json_string_value(json_object_get(ins, "node-name")));
			goto out;
		}
		if (!wire_disk_id_valid(id)) {
			rc = ferry_error_set(err, -EINVAL, "disk id '%s' is not "
				"1-%d characters of [A-Za-z0-9_.-]", id,
				WIRE_DISK_ID_MAX);
			goto out;
		}
		if (*n == WIRE_DISKS_MAX) {
			rc = ferry_error_set(err, -E2BIG, "more than %d disks; "
				"name the ones to migrate with --disks",
				WIRE_DISKS_MAX);
			goto out;
		}
		memset(&d[*n], 0, sizeof(d[*n]));
		snprintf(d[*n].w.id, sizeof(d[*n].w.id), "%s", id);
		rc = fill_disk(blk, ins, &d[*n], err);
		if (rc < 0)
			goto out;
		(*n)++;
	}
	/* Every id the user named must be there. */
	for (const char *p = only; p && *p;) {
		size_t l = strcspn(p, ",");
		bool found = false;

		for (uint32_t k = 0; k < *n; k++)
			found |= strlen(d[k].w.id) == l && !strncmp(d[k].w.id, p, l);
		if (!found && l) {
			rc = ferry_error_set(err, -ENOENT, "no disk with a medium "
				"has the id '%.*s' (query-block)", (int)l, p);
			goto out;
		}
		p += l + (p[l] == ',');
	}
out:
	json_decref(ret);
	return rc;
}

int blk_shared_marker(char *out, size_t len, const struct blk_disk_info *i,
		      const char *mig_id)
{
	const char *base = strrchr(i->filename, '/');
	int n;

	if (!base)
		return -EINVAL;
	n = snprintf(out, len, "%.*s/" BLK_SHARED_MARKER "%s.%s",
		     (int)(base - i->filename), i->filename, mig_id, i->w.id);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}
