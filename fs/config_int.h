/* config_int.h - what config.c (the table of settings) shares with
 * config_file.c (the file and the environment). */
#ifndef LMSFS_CONFIG_INT_H
#define LMSFS_CONFIG_INT_H

#include <stddef.h>

enum ktype {
	K_URL,	     /* base_url */
	K_OPTSTR,    /* string; empty means unset (NULL) */
	K_PATH,	     /* non-empty string, leading "~/" expanded */
	K_LIST,	     /* allowed_models */
	K_PROVIDER,  /* provider */
	K_TOOLAPI,   /* tool_api */
	K_LOGLEVEL,  /* log_level */
	K_BOOL,	     /* int 0/1 */
	K_INT,	     /* int */
	K_LONG,	     /* long */
	K_OPTLONG,   /* long with a has_ flag; empty means unset */
	K_DOUBLE,    /* double */
	K_OPTDOUBLE, /* double with a has_ flag; empty means unset */
	K_DUR_S,     /* long milliseconds, plain number = seconds */
	K_DUR_MS,    /* long milliseconds, plain number = milliseconds */
	K_SIZE,	     /* long bytes */
};

/* max_tokens: 0 is inside [-1, inf) but means nothing useful. */
#define F_NOZERO 1

struct key {
	const char *name;
	enum ktype type;
	size_t off;	/* of the value in struct config */
	size_t has_off; /* of has_<x> for K_OPT* numbers */
	double min, max;
	int flags;
};

/* Every setting, in the order the example file lists them. */
extern const struct key config_keys[];
extern const size_t config_nkeys;
/* The setting called name, or NULL. */
const struct key *config_key_find(const char *name);
/* Checks v against k's range; text is the value as written. 0 or -errno
 * with a reason in err. */
int config_key_range(const struct key *k, double v, const char *text, char *err,
		     size_t errlen);
/* Writes a reason to err and returns rc. */
int config_seterr(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
