/* test_util.c - numbers rounded for JSON show no more places than asked. */
#include "check.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

/* The JSON text cJSON gives for round_to(v, d). */
static void shows(double v, int d, const char *want)
{
	cJSON *n = cJSON_CreateNumber(round_to(v, d));
	char *s = cJSON_PrintUnformatted(n);
	CHECK_STR(s, want);
	free(s);
	cJSON_Delete(n);
}

int main(void)
{
	shows(510.65934299913351, 1, "510.7");
	shows(13.756001000729157, 1, "13.8");
	shows(510.70000000000005, 1, "510.7");
	shows(42.123456, 2, "42.12");
	shows(7, 1, "7");
	shows(0.04, 1, "0");
	return CHECK_DONE();
}
