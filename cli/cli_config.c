/*
 * The receiving service's configuration file (ferry serve --config FILE,
 * docs/receiving-service.md): each line `key = value`, a key being one of
 * the service's long options, `#` comments and blank lines ignored. The
 * file's options come first, the command line's after them, so the
 * command line wins. Every line is checked; an error names the file and
 * the line.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_config.h"

#define CONFIG_FILE_MAX (64 << 10)
#define CONFIG_LINE_MAX 4096
#define CONFIG_ARGS_MAX 256

/* The keys a service's file may set; flags take true or false. */
static const struct {
	const char *key;
	bool flag;
} keys[] = {
	{ "listen", false }, { "qmp", false }, { "qmp-dir", false },
	{ "launch", false }, { "state-dir", false }, { "allow-dir", false },
	{ "max-migrations", false }, { "ram-allocation-ratio", false },
	{ "tls-creds", false }, { "tls-psk", false }, { "insecure", true },
};

static char *trim(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' ||
			   end[-1] == '\n'))
		*--end = '\0';
	return s;
}

static int add(char **args, int *n, const char *s)
{
	if (*n == CONFIG_ARGS_MAX)
		return -E2BIG;
	args[*n] = strdup(s);
	return args[(*n)++] ? 0 : -ENOMEM;
}

/* One `key = value` line into @args. */
static int config_line(const char *path, int lineno, char *line, char **args,
		       int *n)
{
	char *eq = strchr(line, '='), *key, *value, opt[64];
	size_t i;

	if (!eq) {
		fprintf(stderr, "ferry: %s:%d: expected 'key = value'\n", path,
			lineno);
		return -EINVAL;
	}
	*eq = '\0';
	key = trim(line);
	value = trim(eq + 1);
	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (!strcmp(keys[i].key, key))
			break;
	if (i == sizeof(keys) / sizeof(keys[0])) {
		fprintf(stderr, "ferry: %s:%d: unknown key '%.64s' (see "
			"docs/receiving-service.md)\n", path, lineno, key);
		return -EINVAL;
	}
	if (!*value) {
		fprintf(stderr, "ferry: %s:%d: '%s' has no value\n", path, lineno,
			key);
		return -EINVAL;
	}
	snprintf(opt, sizeof(opt), "--%s", key);
	if (keys[i].flag) {
		if (strcmp(value, "true") && strcmp(value, "false")) {
			fprintf(stderr, "ferry: %s:%d: '%s' is true or false\n",
				path, lineno, key);
			return -EINVAL;
		}
		return strcmp(value, "true") ? 0 : add(args, n, opt);
	}
	return add(args, n, opt) < 0 || add(args, n, value) < 0 ? -E2BIG : 0;
}

int config_load(const char *path, char ***out, int *nout)
{
	char line[CONFIG_LINE_MAX], **args;
	long size = 0;
	int n = 0, lineno = 0, rc = 0;
	FILE *f = fopen(path, "re");

	*out = NULL;
	*nout = 0;
	if (!f) {
		fprintf(stderr, "ferry: --config %s: %s\n", path, strerror(errno));
		return -errno;
	}
	args = calloc(CONFIG_ARGS_MAX, sizeof(*args));
	while (args && rc == 0 && fgets(line, sizeof(line), f)) {
		char *s;

		lineno++;
		size += (long)strlen(line);
		if (size > CONFIG_FILE_MAX ||
		    (!strchr(line, '\n') && !feof(f))) {
			fprintf(stderr, "ferry: %s:%d: the file or the line is too "
				"long\n", path, lineno);
			rc = -E2BIG;
			break;
		}
		s = trim(line);
		if (!*s || *s == '#')
			continue;
		rc = config_line(path, lineno, s, args, &n);
		if (rc == -E2BIG)
			fprintf(stderr, "ferry: %s:%d: too many settings\n", path,
				lineno);
	}
	fclose(f);
	if (!args)
		return -ENOMEM;
	if (rc < 0) {
		config_free(args, n);
		return rc;
	}
	*out = args;
	*nout = n;
	return 0;
}

void config_free(char **args, int n)
{
	for (int i = 0; i < n; i++)
		free(args[i]);
	free(args);
}

void config_keys_print(void)
{
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		printf("%s\n", keys[i].key);
}
