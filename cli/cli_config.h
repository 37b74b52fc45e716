/* ferry serve --config FILE (cli_config.c). */
#ifndef FERRY_CLI_CONFIG_H
#define FERRY_CLI_CONFIG_H

#include <stdbool.h>

/*
 * @path's settings as command-line words ("--key", "value", ...), in
 * *@out (config_free() them). 0, or -errno after a message on stderr
 * naming the file and line.
 */
int config_load(const char *path, char ***out, int *nout);
void config_free(char **args, int n);
/* Every key a file may set, one a line (make check-man). */
void config_keys_print(void);

#endif /* FERRY_CLI_CONFIG_H */
