/* names.c - which names are allowed where, and model id <-> file name.
 *
 * Model ids such as "lmstudio-community/Qwen2.5-7B" contain '/', which a file
 * name cannot, so they are percent-encoded. Decoding accepts only the exact
 * form names_model_encode() produces ("%25", "%2F", and "%2E" only as the
 * first character; upper-case hex), so every model has exactly one name and
 * a name that lookup accepts is always the one readdir shows.
 */
#include "names.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NAMES_MAX 255
#define TOOL_NAME_MAX 64

int names_file_ok(const char *name)
{
	size_t i, len;

	if (!name)
		return -EINVAL;
	len = strlen(name);
	if (len == 0)
		return -EINVAL;
	if (len > NAMES_MAX)
		return -ENAMETOOLONG;
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -EINVAL;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c == '/' || c < 0x20 || c == 0x7f)
			return -EINVAL;
	}
	if (names_private(name))
		return -EINVAL;
	return 0;
}

int names_private(const char *name)
{
	return strcmp(name, NAMES_PRIVATE_DIR) == 0 ||
	       strncmp(name, NAMES_PRIVATE_PREFIX, sizeof(NAMES_PRIVATE_PREFIX) - 1) == 0;
}

int names_tool_ok(const char *name)
{
	size_t i, len;

	if (!name)
		return 0;
	len = strlen(name);
	if (len == 0 || len > TOOL_NAME_MAX)
		return 0;
	for (i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

char *names_model_encode(const char *id)
{
	size_t i, n = 0, len = strlen(id);
	char *out, *o;

	for (i = 0; i < len; i++)
		n += (id[i] == '%' || id[i] == '/' || (i == 0 && id[i] == '.'))
			 ? 3
			 : 1;
	out = malloc(n + 1);
	if (!out)
		return NULL;
	o = out;
	for (i = 0; i < len; i++) {
		const char *esc = NULL;
		if (id[i] == '%')
			esc = "%25";
		else if (id[i] == '/')
			esc = "%2F";
		else if (i == 0 && id[i] == '.')
			esc = "%2E";
		if (esc) {
			memcpy(o, esc, 3);
			o += 3;
		} else {
			*o++ = id[i];
		}
	}
	*o = '\0';
	return out;
}

char *names_model_decode(const char *name)
{
	size_t i, len = strlen(name);
	char *out, *o;

	/* A raw leading '.' is never produced by the encoder. */
	if (len == 0 || name[0] == '.')
		return NULL;
	out = malloc(len + 1);
	if (!out)
		return NULL;
	o = out;
	for (i = 0; i < len; i++) {
		if (name[i] == '/')
			goto bad;
		if (name[i] != '%') {
			*o++ = name[i];
			continue;
		}
		if (strncmp(name + i, "%25", 3) == 0)
			*o++ = '%';
		else if (strncmp(name + i, "%2F", 3) == 0)
			*o++ = '/';
		else if (i == 0 && strncmp(name, "%2E", 3) == 0)
			*o++ = '.';
		else
			goto bad;
		i += 2;
	}
	*o = '\0';
	return out;
bad:
	free(out);
	return NULL;
}
