/* jsonobj.c - tells early whether a text being written can still become one JSON object. */
#include "jsonobj.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static int is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int jsonobj_prefix_check(const char *name, const char *data, size_t len, char *why,
			 size_t whylen)
{
	const char *t = data, *e = data + len, *end = NULL;
	cJSON *o;
	int ret = 0;

	if (!len || data[len - 1] != '\n')
		return 0;
	if (len >= 3 && memcmp(t, "\xEF\xBB\xBF", 3) == 0)
		t += 3;
	while (t < e && is_ws(*t))
		t++;
	while (e > t && is_ws(e[-1]))
		e--;
	if (t == e)
		return 0;
	if (*t != '{') {
		snprintf(why, whylen, "%s must hold one JSON object", name);
		return -EINVAL;
	}
	o = cJSON_ParseWithLengthOpts(t, (size_t)(data + len - t), &end, 0);
	if (!o && end && end < e - 1) {
		snprintf(why, whylen, "%s must hold one JSON object (not valid JSON at byte %zu)",
			 name, (size_t)(end - data) + 1);
		ret = -EINVAL;
	} else if (o && end) {
		while (end < e && is_ws(*end))
			end++;
		if (end < e) {
			snprintf(why, whylen,
				 "%s must hold one JSON object (text after it at byte %zu)", name,
				 (size_t)(end - data) + 1);
			ret = -EINVAL;
		}
	}
	cJSON_Delete(o);
	return ret;
}
