/* config_value.c - how the value of a setting is read: durations with
 * units, sizes with suffixes, booleans, numbers, choices, name lists and
 * paths starting with ~. Pure: no I/O. */
#include "config.h"

#include <ctype.h>
#include <limits.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- number parsing ---------------------------------------------------- */

/* Copies s without surrounding whitespace into out. Returns -1 when it does
 * not fit (no number is that long). */
static int trim_copy(const char *s, char *out, size_t outlen)
{
	size_t n;

	while (isspace((unsigned char)*s))
		s++;
	n = strlen(s);
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	if (n >= outlen)
		return -1;
	memcpy(out, s, n);
	out[n] = '\0';
	return 0;
}

/* Reads [sign] digits [. digits] from s; returns the characters used, 0 when
 * there is no number. The digits are gathered into one integer and divided
 * once, so "0.7" gives the double closest to 0.7. */
static size_t scan_decimal(const char *s, int sign_ok, double *out)
{
	double mant = 0, scale = 1;
	size_t i = 0;
	int neg = 0, digits = 0;

	if (sign_ok && (s[0] == '-' || s[0] == '+')) {
		neg = s[0] == '-';
		i++;
	}
	for (; isdigit((unsigned char)s[i]); i++, digits++)
		mant = mant * 10 + (s[i] - '0');
	if (s[i] == '.') {
		for (i++; isdigit((unsigned char)s[i]); i++, digits++) {
			mant = mant * 10 + (s[i] - '0');
			scale *= 10;
		}
	}
	if (!digits || digits > 30)
		return 0;
	*out = (neg ? -mant : mant) / scale;
	return i;
}

/* v as a long, refused when it is too large to compute with. */
static int to_long(double v, long *out)
{
	if (v > (double)LONG_MAX / 2)
		return -EINVAL;
	*out = (long)v;
	return 0;
}

/* s as "<unsigned decimal> [unit]": the number in *v, *u at the unit
 * (inside t, blanks skipped; "" when none). 0 or -EINVAL. */
static int number_and_unit(const char *s, char *t, size_t tlen, double *v, const char **u)
{
	size_t i;

	if (trim_copy(s, t, tlen))
		return -EINVAL;
	i = scan_decimal(t, 0, v);
	if (!i)
		return -EINVAL;
	*u = t + i;
	while (**u == ' ')
		(*u)++;
	return 0;
}

/* A duration; plain numbers are in units of unit_ms. */
int config_parse_duration(const char *s, long unit_ms, long *out)
{
	char t[CONFIG_NUM_TEXT_MAX];
	double v, mult;
	const char *u;

	if (number_and_unit(s, t, sizeof(t), &v, &u))
		return -EINVAL;
	if (*u == '\0')
		mult = (double)unit_ms;
	else if (strcasecmp(u, "ms") == 0)
		mult = 1;
	else if (strcasecmp(u, "s") == 0)
		mult = 1000;
	else if (strcasecmp(u, "m") == 0)
		mult = 60000;
	else
		return -EINVAL;
	return to_long(round(v * mult), out);
}

int config_parse_duration_ms(const char *s, long *out)
{
	return s ? config_parse_duration(s, 1000, out) : -EINVAL;
}

int config_parse_size(const char *s, long *out)
{
	char t[CONFIG_NUM_TEXT_MAX];
	double v, mult = 1;
	const char *u;

	if (!s || number_and_unit(s, t, sizeof(t), &v, &u))
		return -EINVAL;
	switch (tolower((unsigned char)*u)) {
	case 'k':
		mult = 1024.0;
		break;
	case 'm':
		mult = 1024.0 * 1024;
		break;
	case 'g':
		mult = 1024.0 * 1024 * 1024;
		break;
	case 'b':
	case '\0':
		break;
	default:
		return -EINVAL;
	}
	if (mult > 1) {
		u++;
		if (strcasecmp(u, "ib") == 0)
			u += 2;
		else if (tolower((unsigned char)*u) == 'b')
			u++;
	} else if (*u) {
		u++; /* "B" */
	}
	if (*u)
		return -EINVAL;
	return to_long(floor(v * mult), out);
}

int config_parse_bool(const char *s, int *out)
{
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};
	char t[CONFIG_NUM_TEXT_MAX];
	size_t i;

	if (!s || trim_copy(s, t, sizeof(t)))
		return -EINVAL;
	for (i = 0; i < 4; i++) {
		if (strcasecmp(t, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(t, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return -EINVAL;
}

int config_parse_long(const char *s, long *out)
{
	char t[CONFIG_NUM_TEXT_MAX];
	char *end;
	long v;

	if (trim_copy(s, t, sizeof(t)) || !t[0])
		return -EINVAL;
	errno = 0;
	v = strtol(t, &end, 10);
	if (*end || errno)
		return -EINVAL;
	*out = v;
	return 0;
}

int config_parse_double(const char *s, double *out)
{
	char t[CONFIG_NUM_TEXT_MAX];
	size_t i;

	if (trim_copy(s, t, sizeof(t)))
		return -EINVAL;
	i = scan_decimal(t, 1, out);
	return i && t[i] == '\0' ? 0 : -EINVAL;
}

int config_parse_choice(const char *s, const char *const *names, int n)
{
	char t[CONFIG_NUM_TEXT_MAX];
	int i;

	if (trim_copy(s, t, sizeof(t)))
		return -1;
	for (i = 0; i < n; i++)
		if (strcasecmp(t, names[i]) == 0)
			return i;
	return -1;
}

void config_list_free(char **list)
{
	size_t i;

	if (!list)
		return;
	for (i = 0; list[i]; i++)
		free(list[i]);
	free(list);
}

/* Splits "a, b c" into a NULL-terminated list; *list is NULL when there are
 * no names. */
int config_list_split(const char *s, char ***list, size_t *n)
{
	static const char seps[] = ", \t\r\n";
	char **v;
	size_t count = 0, i = 0, len;
	const char *p;

	for (p = s + strspn(s, seps); *p; p += len, p += strspn(p, seps)) {
		len = strcspn(p, seps);
		count++;
	}
	*list = NULL;
	*n = 0;
	if (!count)
		return 0;
	v = calloc(count + 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (p = s + strspn(s, seps); *p; p += len, p += strspn(p, seps)) {
		len = strcspn(p, seps);
		v[i] = strndup(p, len);
		if (!v[i]) {
			config_list_free(v);
			return -ENOMEM;
		}
		i++;
	}
	*list = v;
	*n = count;
	return 0;
}

char *config_expand_home(const char *s)
{
	const char *home = getenv("HOME");
	char *out;

	if (s[0] == '~' && (s[1] == '/' || s[1] == '\0') && home && *home) {
		if (asprintf(&out, "%s%s", home, s + 1) < 0)
			return NULL;
		return out;
	}
	return strdup(s);
}

