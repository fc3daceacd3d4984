/* health.h - the health file: is the server there, with what settings. */
#ifndef LMSFS_HEALTH_H
#define LMSFS_HEALTH_H

struct config;

/* Probes the server (through the model list) and returns malloc'd JSON. */
char *health_json(const struct config *cfg);

#endif
