/* test_think.c - <think> blocks split from an answer's text, whatever
 * the pieces it arrives in. */
#include "check.h"
#include "think.h"

#include <stdlib.h>

struct out {
	char text[512], reasoning[512];
};

static int collect(void *ctx, int reasoning, const char *s, size_t n)
{
	struct out *o = ctx;
	char *d = reasoning ? o->reasoning : o->text;
	strncat(d, s, n);
	return 0;
}

/* Feeds s cut at every pair of positions; every cut must give the same. */
static void split_all_ways(const char *s, const char *want_r, const char *want_t)
{
	size_t n = strlen(s);
	for (size_t i = 0; i <= n; i++)
		for (size_t j = i; j <= n; j++) {
			struct think t;
			struct out o = {"", ""};
			think_init(&t);
			think_feed(&t, s, i, collect, &o);
			think_feed(&t, s + i, j - i, collect, &o);
			think_feed(&t, s + j, n - j, collect, &o);
			think_end(&t, collect, &o);
			if (strcmp(o.reasoning, want_r) || strcmp(o.text, want_t)) {
				printf("FAIL cut %zu,%zu of \"%s\": reasoning \"%s\" text \"%s\"\n",
				       i, j, s, o.reasoning, o.text);
				check_failed++;
				return;
			}
		}
	check_passed++;
}

int main(void)
{
	split_all_ways("<think>a b</think>\n\nAnswer.", "a b", "Answer.");
	split_all_ways("  \n<think>\nwhy </ thin</think>ok", "why </ thin", "ok");
	split_all_ways("<think>never closed", "never closed", "");
	split_all_ways("<think></think>x", "", "x");
	split_all_ways("Use <think> here", "", "Use <think> here");
	split_all_ways("<thinking>no</thinking>", "", "<thinking>no</thinking>");
	split_all_ways("<thi", "", "<thi");
	split_all_ways("   ", "", "   ");
	split_all_ways("x</think>", "", "x</think>");
	split_all_ways("<think>a<<</think>b", "a<<", "b");
	split_all_ways("<think>a</thinx</think>b<think>c", "a</thinx", "b<think>c");
	return CHECK_DONE();
}
