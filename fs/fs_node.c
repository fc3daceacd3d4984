/* fs_node.c - the inode table: numbers for the names the kernel looked
 * up, found by number or by (parent, name), freed when the kernel forgets
 * them. nodes_lock is a leaf. */
#include "fs_int.h"

#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define INO_FIRST_DYNAMIC 100

#define NB 16384

static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;

static struct node *by_ino[NB], *by_name[NB]; /* nodes_lock */
static uint64_t next_ino = INO_FIRST_DYNAMIC;  /* nodes_lock */



struct node {
	uint64_t ino;
	uint64_t parent;
	char *name;
	enum kind kind;
	uint64_t nlookup;
	int hashed_name;        /* reachable by (parent, name) */
	struct node *next_ino;  /* nodes_lock */
	struct node *next_name; /* nodes_lock */
};

/* --- node table ---------------------------------------------------------- */

static unsigned name_hash(uint64_t parent, const char *name)
{
	return util_strhash((unsigned)parent, name) % NB;
}

static struct node *ino_find(uint64_t ino)
{
	for (struct node *n = by_ino[ino % NB]; n; n = n->next_ino)
		if (n->ino == ino)
			return n;
	return NULL;
}

static struct node *name_find(uint64_t parent, const char *name)
{
	for (struct node *n = by_name[name_hash(parent, name)]; n; n = n->next_name)
		if (n->parent == parent && strcmp(n->name, name) == 0)
			return n;
	return NULL;
}

static void name_unhash(struct node *n)
{
	struct node **pp;
	if (!n->hashed_name)
		return;
	for (pp = &by_name[name_hash(n->parent, n->name)]; *pp; pp = &(*pp)->next_name)
		if (*pp == n) {
			*pp = n->next_name;
			break;
		}
	n->hashed_name = 0;
}

static void name_hash_in(struct node *n)
{
	unsigned h = name_hash(n->parent, n->name);
	n->next_name = by_name[h];
	by_name[h] = n;
	n->hashed_name = 1;
}

static struct node *node_insert(uint64_t ino, uint64_t parent, const char *name,
				enum kind kind)
{
	struct node *n = calloc(1, sizeof(*n));
	if (!n || !(n->name = strdup(name))) {
		free(n);
		return NULL;
	}
	n->ino = ino;
	n->parent = parent;
	n->kind = kind;
	n->next_ino = by_ino[ino % NB];
	by_ino[ino % NB] = n;
	name_hash_in(n);
	return n;
}

/* Finds or creates the node for (parent, name) and counts a lookup. */
struct node *node_get(uint64_t parent, const char *name, enum kind kind,
			     uint64_t *ino)
{
	struct node *n;
	pthread_mutex_lock(&nodes_lock);
	n = name_find(parent, name);
	if (n && n->kind != kind) {
		name_unhash(n); /* the name now means something else */
		n = NULL;
	}
	if (!n)
		n = node_insert(next_ino++, parent, name, kind);
	if (n) {
		n->nlookup++;
		*ino = n->ino;
	}
	pthread_mutex_unlock(&nodes_lock);
	return n;
}

/* Copies what we need about an inode so that no lock is held later. */
int node_info(uint64_t ino, struct nodeinfo *ni)
{
	struct node *n, *p;
	int ret = 0;

	memset(ni, 0, sizeof(*ni));
	if (ino == INO_ROOT) {
		ni->kind = K_ROOT;
		return 0;
	}
	for (size_t i = 0; i < fs_n_root_entries; i++)
		if (fs_root_entries[i].ino == ino) {
			ni->kind = fs_root_entries[i].kind;
			ni->parent = INO_ROOT;
			snprintf(ni->name, sizeof(ni->name), "%s", fs_root_entries[i].name);
			return 0;
		}
	pthread_mutex_lock(&nodes_lock);
	n = ino_find(ino);
	if (!n) {
		ret = -ESTALE;
		goto out;
	}
	ni->kind = n->kind;
	ni->parent = n->parent;
	snprintf(ni->name, sizeof(ni->name), "%s", n->name);
	if (n->kind == K_CFILE || n->kind == K_REPLY || n->kind == K_STATUS ||
	    n->kind == K_CTL) {
		p = ino_find(n->parent);
		if (!p) {
			ret = -ESTALE;
			goto out;
		}
		snprintf(ni->conv, sizeof(ni->conv), "%s", p->name);
	} else if (n->kind == K_CONV) {
		snprintf(ni->conv, sizeof(ni->conv), "%s", n->name);
	} else if (n->kind == K_SUBDIR) {
		p = ino_find(n->parent);
		if (!p) {
			ret = -ESTALE;
			goto out;
		}
		snprintf(ni->conv, sizeof(ni->conv), "%s", p->name);
	} else if (n->kind == K_SFILE) {
		struct node *g;
		p = ino_find(n->parent);
		g = p ? ino_find(p->parent) : NULL;
		if (!g) {
			ret = -ESTALE;
			goto out;
		}
		snprintf(ni->sub, sizeof(ni->sub), "%.7s", p->name);
		snprintf(ni->conv, sizeof(ni->conv), "%s", g->name);
	}
out:
	pthread_mutex_unlock(&nodes_lock);
	return ret;
}

void node_forget(uint64_t ino, uint64_t nlookup)
{
	struct node *n, **pp;
	if (ino < INO_FIRST_DYNAMIC)
		return;
	pthread_mutex_lock(&nodes_lock);
	n = ino_find(ino);
	if (n) {
		n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
		if (n->nlookup == 0) {
			name_unhash(n);
			for (pp = &by_ino[ino % NB]; *pp; pp = &(*pp)->next_ino)
				if (*pp == n) {
					*pp = n->next_ino;
					break;
				}
			free(n->name);
			free(n);
		}
	}
	pthread_mutex_unlock(&nodes_lock);
}

/* The name (parent, name) no longer exists. */
void node_drop_name(uint64_t parent, const char *name)
{
	struct node *n;
	pthread_mutex_lock(&nodes_lock);
	n = name_find(parent, name);
	if (n)
		name_unhash(n);
	pthread_mutex_unlock(&nodes_lock);
}

void node_move(uint64_t parent, const char *name, uint64_t newparent,
		      const char *newname)
{
	struct node *n, *victim;
	char *nn = strdup(newname);
	pthread_mutex_lock(&nodes_lock);
	victim = name_find(newparent, newname);
	if (victim)
		name_unhash(victim);
	n = name_find(parent, name);
	if (n && nn) {
		name_unhash(n);
		free(n->name);
		n->name = nn;
		nn = NULL;
		n->parent = newparent;
		name_hash_in(n);
	}
	pthread_mutex_unlock(&nodes_lock);
	free(nn);
}

/* The number of (parent, name) if the kernel was given one, else 0. Counts
 * no lookup. */
uint64_t node_find(uint64_t parent, const char *name)
{
	struct node *n;
	uint64_t ino = 0;

	if (parent == INO_ROOT) {
		for (size_t i = 0; i < fs_n_root_entries; i++)
			if (strcmp(fs_root_entries[i].name, name) == 0)
				return fs_root_entries[i].ino;
		return 0;
	}
	pthread_mutex_lock(&nodes_lock);
	n = name_find(parent, name);
	if (n && n->nlookup > 0)
		ino = n->ino;
	pthread_mutex_unlock(&nodes_lock);
	return ino;
}
