/* fs_tree.c - lookup, attributes and the namespace operations: mkdir,
 * rmdir, unlink, rename, setattr (truncate, chmod, utimens), statfs. */
#include "fs_int.h"

#include "conv.h"
#include "fsio.h"
#include "log.h"
#include "mcp.h"
#include "names.h"
#include "store.h"

#include <sys/statvfs.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int sub_path(char *out, size_t n, const struct nodeinfo *parent, const char *name);

/* Entries and attributes are cached as each kind's policy says
 * (fs_special.c: cache_policy); lmsfs's own changes are announced to the
 * kernel (fs_notify.c). */
static void reply_entry(fuse_req_t req, uint64_t ino, const struct nodeinfo *ni,
			const struct stat *st)
{
	struct fuse_entry_param e;
	fill_entry(&e, ino, ni, st);
	if (fuse_reply_entry(req, &e) != 0)
		node_forget(ino, 1); /* the kernel never saw it: no FORGET comes */
}

/* Looks up (parent, name) and, when found, counts the lookup and replies. */
static void do_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct nodeinfo pi, ni;
	struct stat st;
	enum kind kind;
	uint64_t ino;
	int ret;

	ret = node_info(parent, &pi);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	memset(&ni, 0, sizeof(ni));
	snprintf(ni.name, sizeof(ni.name), "%s", name);
	switch (pi.kind) {
	case K_ROOT:
		for (size_t i = 0; i < fs_n_root_entries; i++)
			if (strcmp(fs_root_entries[i].name, name) == 0) {
				ni.kind = fs_root_entries[i].kind;
				ret = attr_of(fs_root_entries[i].ino, &ni, &st);
				if (ret)
					fuse_reply_err(req, -ret);
				else
					reply_entry(req, fs_root_entries[i].ino, &ni, &st);
				return;
			}
		fuse_reply_err(req, ENOENT);
		return;
	case K_MODELS:
		/* attr_of below answers ENOENT for a model that is not loaded. */
		kind = K_MODEL;
		break;
	case K_CONVS:
		if (names_file_ok(name) != 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		kind = K_CONV;
		break;
	case K_CONV:
		if (is_hidden_ctl(name, &kind)) {
			struct stat dst;
			if (fstatat(conv_root_fd(), pi.conv, &dst, 0) < 0) {
				fuse_reply_err(req, ENOENT);
				return;
			}
			snprintf(ni.conv, sizeof(ni.conv), "%s", pi.conv);
			break;
		}
		if (names_file_ok(name) != 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		snprintf(ni.conv, sizeof(ni.conv), "%s", pi.conv);
		kind = K_CFILE;
		if (is_conv_subdir(name)) {
			/* attach/ and files/: directories when they are. */
			struct stat dst;
			char p[PATH_MAX];
			if (cpath(p, sizeof(p), pi.conv, name) == 0 &&
			    fstatat(conv_root_fd(), p, &dst, AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISDIR(dst.st_mode))
				kind = K_SUBDIR;
		}
		break;
	case K_SUBDIR:
		if (names_file_ok(name) != 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		snprintf(ni.conv, sizeof(ni.conv), "%s", pi.conv);
		snprintf(ni.sub, sizeof(ni.sub), "%.7s", pi.name);
		kind = K_SFILE;
		break;
	case K_TOOLS:
		if (strcmp(name, ".status") == 0) {
			kind = K_TSTATUS;
			break;
		}
		if (names_file_ok(name) != 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		kind = K_TFILE;
		break;
	default:
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	ni.kind = kind;
	ni.parent = parent;
	ret = attr_of(0, &ni, &st);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (kind == K_CONV && !S_ISDIR(st.st_mode)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!node_get(parent, name, kind, &ino)) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	reply_entry(req, ino, &ni, &st);
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	do_lookup(req, parent, name);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	node_forget(ino, nlookup);
	fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *f)
{
	for (size_t i = 0; i < count; i++)
		node_forget(f[i].ino, f[i].nlookup);
	fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct nodeinfo ni;
	struct stat st;
	int ret = node_info(ino, &ni);
	if (ret == 0)
		ret = attr_of(ino, &ni, &st);
	if (ret) {
		fuse_reply_err(req, -ret);
	} else {
		struct cache_policy p;
		cache_policy(&ni, &p);
		fuse_reply_attr(req, &st, p.attr);
	}
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct nodeinfo ni;
	struct stat st;
	char p[PATH_MAX];
	int dfd, ret = node_info(ino, &ni);
	const char *rel;

	if (ret)
		goto out;
	if (ni.kind == K_CFILE || ni.kind == K_SFILE || ni.kind == K_SUBDIR) {
		ret = ni.kind == K_SUBDIR ? cpath(p, sizeof(p), ni.conv, ni.name)
					  : node_path(p, sizeof(p), &ni);
		dfd = conv_root_fd();
		rel = p;
	} else if (ni.kind == K_TFILE) {
		dfd = fs_tools_fd;
		rel = ni.name;
	} else if (ni.kind == K_CONV) {
		dfd = conv_root_fd();
		rel = ni.name;
	} else if (ni.kind == K_CONVS || ni.kind == K_TOOLS) {
		dfd = ni.kind == K_CONVS ? conv_root_fd() : fs_tools_fd;
		rel = ".";
	} else {
		/* Synthesised files: only harmless time updates (touch). */
		ret = (to_set & ~(FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
				  FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW))
			      ? -EACCES
			      : 0;
		if (ret == 0) {
			ret = attr_of(ino, &ni, &st);
			if (ret == -ENOENT && ni.kind == K_MODEL) {
				/* touch's futimens on a model whose file was
				 * just created: it may be listed under another
				 * name, or not yet. */
				memset(&st, 0, sizeof(st));
				st.st_ino = ino;
				st.st_mode = S_IFREG | 0644;
				st.st_nlink = 1;
				st.st_uid = fs_uid;
				st.st_gid = fs_gid;
				ret = 0;
			}
			if (ret == 0) {
				fuse_reply_attr(req, &st, 0);
				return;
			}
		}
		goto out;
	}
	if (ret)
		goto out;
	if (to_set & FUSE_SET_ATTR_SIZE) {
		const struct file_ops *ops = special_ops(&ni);
		if (ni.kind != K_CFILE && ni.kind != K_TFILE && ni.kind != K_SFILE) {
			ret = -EISDIR;
			goto out;
		}
		ret = ops->truncate ? ops->truncate(&ni, fi ? FH(fi) : NULL, attr->st_size)
				    : -EACCES;
		if (ret)
			goto out;
	}
	if (ni.kind == K_CFILE &&
	    (special_ops(&ni) == &hist_ops || special_ops(&ni) == &setting_ops) &&
	    (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)))
		fh_note_times(special_ops(&ni), ino, to_set, attr);
	if ((ni.kind == K_CFILE || ni.kind == K_TFILE || ni.kind == K_SFILE) &&
	    fstatat(dfd, rel, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
		log_warnx("refused to change a symlink: %s", rel);
		ret = -ELOOP;
		goto out;
	}
	if (to_set & FUSE_SET_ATTR_MODE) {
		if (fchmodat(dfd, rel, attr->st_mode & 07777, 0) < 0) {
			ret = -errno;
			goto out;
		}
	}
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t u = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t g = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		if (fchownat(dfd, rel, u, g, AT_SYMLINK_NOFOLLOW) < 0) {
			ret = -errno;
			goto out;
		}
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec tv[2];
		tv[0].tv_sec = 0;
		tv[1].tv_sec = 0;
		tv[0].tv_nsec = UTIME_OMIT;
		tv[1].tv_nsec = UTIME_OMIT;
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		if (utimensat(dfd, rel, tv, AT_SYMLINK_NOFOLLOW) < 0) {
			ret = -errno;
			goto out;
		}
	}
	ret = attr_of(ino, &ni, &st);
	if (ret == 0) {
		fuse_reply_attr(req, &st, 0);
		return;
	}
out:
	fuse_reply_err(req, -ret);
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct nodeinfo pi, ni;
	struct stat st;
	uint64_t ino;
	int ret = node_info(parent, &pi);
	enum kind kind = K_CONV;

	if (ret == 0 && pi.kind == K_CONV && is_conv_subdir(name)) {
		/* attach/ and files/ are the only directories of a
		 * conversation; nothing nests deeper. */
		char p[PATH_MAX];
		kind = K_SUBDIR;
		ret = cpath(p, sizeof(p), pi.conv, name);
		if (ret == 0 && mkdirat(conv_root_fd(), p, (mode & 0777) | 0700) < 0)
			ret = -errno;
	} else if (ret == 0 && pi.kind != K_CONVS) {
		ret = pi.kind == K_CONV || pi.kind == K_SUBDIR ? -EPERM : -EACCES;
	} else if (ret == 0) {
		ret = conv_mkdir(name, mode);
	}
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	memset(&ni, 0, sizeof(ni));
	ni.kind = kind;
	snprintf(ni.name, sizeof(ni.name), "%s", name);
	if (kind == K_SUBDIR)
		snprintf(ni.conv, sizeof(ni.conv), "%s", pi.conv);
	ret = attr_of(0, &ni, &st);
	if (ret || !node_get(parent, name, kind, &ino)) {
		fuse_reply_err(req, ret ? -ret : ENOMEM);
		return;
	}
	reply_entry(req, ino, &ni, &st);
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct nodeinfo pi;
	int ret = node_info(parent, &pi);
	if (ret == 0 && pi.kind == K_CONV && is_conv_subdir(name)) {
		char p[PATH_MAX];
		ret = cpath(p, sizeof(p), pi.conv, name);
		if (ret == 0 && unlinkat(conv_root_fd(), p, AT_REMOVEDIR) < 0)
			ret = -errno;
		if (ret == 0)
			node_drop_name(parent, name);
		fuse_reply_err(req, -ret);
		return;
	}
	if (ret == 0 && pi.kind != K_CONVS)
		ret = pi.kind == K_ROOT ? -EBUSY : -ENOTDIR;
	if (ret == 0)
		ret = conv_rmdir(name);
	if (ret == 0)
		node_drop_name(parent, name);
	fuse_reply_err(req, -ret);
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct nodeinfo pi;
	char p[PATH_MAX];
	enum kind k;
	int ret = node_info(parent, &pi);

	if (ret)
		goto out;
	if (pi.kind == K_CONV) {
		if (is_hidden_ctl(name, &k)) {
			ret = -EPERM;
			goto out;
		}
		ret = names_file_ok(name);
		if (ret == 0)
			ret = cpath(p, sizeof(p), pi.conv, name);
		if (ret == 0 && strcmp(name, STORE_HISTORY) == 0) {
			/* Writers holding it open must know it went. */
			struct conv *c = conv_get(pi.conv);
			if (c)
				conv_hist_lock(c);
			if (unlinkat(conv_root_fd(), p, 0) < 0)
				ret = -errno;
			if (c) {
				conv_hist_replaced(c);
				conv_hist_unlock(c);
				conv_put(c);
			}
		} else if (ret == 0 && unlinkat(conv_root_fd(), p, 0) < 0) {
			ret = -errno;
		}
	} else if (pi.kind == K_TOOLS) {
		ret = names_file_ok(name);
		if (ret == 0 && unlinkat(fs_tools_fd, name, 0) < 0)
			ret = -errno;
	} else if (pi.kind == K_SUBDIR) {
		ret = names_file_ok(name);
		if (ret == 0)
			ret = sub_path(p, sizeof(p), &pi, name);
		if (ret == 0 && unlinkat(conv_root_fd(), p, 0) < 0)
			ret = -errno;
	} else if (pi.kind == K_MODELS) {
		models_op_unlink(req, parent, name); /* replies when unloaded */
		return;
	} else {
		ret = -EACCES;
	}
	if (ret == 0)
		node_drop_name(parent, name);
out:
	fuse_reply_err(req, -ret);
}

/* A path below a conversation: "conv/name" for a K_CONV parent,
 * "conv/sub/name" for a K_SUBDIR one. */
static int sub_path(char *out, size_t n, const struct nodeinfo *parent, const char *name)
{
	struct nodeinfo f;
	memset(&f, 0, sizeof(f));
	f.kind = parent->kind == K_SUBDIR ? K_SFILE : K_CFILE;
	snprintf(f.conv, sizeof(f.conv), "%s", parent->conv);
	snprintf(f.sub, sizeof(f.sub), "%.7s", parent->name);
	snprintf(f.name, sizeof(f.name), "%s", name);
	return node_path(out, n, &f);
}

/* A plain file moved into, out of or between attach/ and files/: no
 * special file of a conversation takes part, and nothing nests. */
static int rename_in_subdirs(const struct nodeinfo *pi, const char *name,
			     const struct nodeinfo *npi, const char *newname, unsigned flags)
{
	char from[PATH_MAX], to[PATH_MAX];
	struct stat st;
	int ret;

	if ((pi->kind == K_CONV && (is_special_file(name) || is_conv_subdir(name))) ||
	    (npi->kind == K_CONV && (is_special_file(newname) || is_conv_subdir(newname))))
		return -EPERM;
	ret = names_file_ok(name);
	if (ret == 0)
		ret = names_file_ok(newname);
	if (ret == 0)
		ret = sub_path(from, sizeof(from), pi, name);
	if (ret == 0)
		ret = sub_path(to, sizeof(to), npi, newname);
	if (ret)
		return ret;
	if (fstatat(conv_root_fd(), from, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
		return -EPERM;
	if (renameat2(conv_root_fd(), from, conv_root_fd(), to, flags) < 0)
		return -errno;
	return 0;
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct nodeinfo pi, npi;
	char from[PATH_MAX], to[PATH_MAX];
	enum kind k;
	int ret = node_info(parent, &pi);

	if (ret == 0)
		ret = node_info(newparent, &npi);
	if (ret)
		goto out;
	if (flags & ~RENAME_NOREPLACE) {
		ret = -EINVAL;
		goto out;
	}
	if (pi.kind == K_CONVS && npi.kind == K_CONVS) {
		ret = conv_rename(name, newname, flags);
	} else if ((pi.kind == K_SUBDIR || npi.kind == K_SUBDIR) &&
		   (pi.kind == K_CONV || pi.kind == K_SUBDIR) &&
		   (npi.kind == K_CONV || npi.kind == K_SUBDIR)) {
		ret = rename_in_subdirs(&pi, name, &npi, newname, flags);
	} else if (pi.kind == K_CONV && npi.kind == K_CONV &&
		   (is_conv_subdir(name) || is_conv_subdir(newname))) {
		ret = -EPERM; /* attach/ and files/ keep their names */
	} else if (pi.kind == K_CONV && npi.kind == K_CONV) {
		struct conv *c;
		if (is_hidden_ctl(name, &k) || is_hidden_ctl(newname, &k)) {
			ret = -EPERM;
			goto out;
		}
		ret = names_file_ok(newname);
		if (ret == 0)
			ret = names_file_ok(name);
		if (ret == 0)
			ret = cpath(from, sizeof(from), pi.conv, name);
		if (ret == 0)
			ret = cpath(to, sizeof(to), npi.conv, newname);
		if (ret)
			goto out;
		if (strcmp(newname, STORE_STREAM) == 0 || strcmp(newname, STORE_REASONING) == 0) {
			/* The transcript and the reasoning are append-only:
			 * they may not be replaced. */
			struct stat st;
			if (fstatat(conv_root_fd(), to, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    st.st_size > 0) {
				ret = -EPERM;
				goto out;
			}
		}
		char why[300] = "";
		ret = setting_rename_check(newname, from, why, sizeof(why));
		if (ret) {
			if (why[0])
				note_reject(npi.conv, newname, why);
			goto out;
		}
		c = conv_get(npi.conv);
		if (c)
			conv_hist_lock(c);
		if (strcmp(newname, STORE_HISTORY) == 0)
			ret = rename_over_history(c, npi.conv, name, from, to, flags, why,
						  sizeof(why));
		else if (renameat2(conv_root_fd(), from, conv_root_fd(), to, flags) < 0)
			ret = -errno;
		else if (c && strcmp(name, STORE_HISTORY) == 0)
			conv_hist_replaced(c); /* moved away (vim's backup) */
		if (c) {
			conv_hist_unlock(c);
			conv_put(c);
		}
		/* Reported with no lock held (it takes the conversation's). */
		if (why[0])
			note_reject(npi.conv, "renaming over messages.jsonl", why);
	} else if (pi.kind == K_TOOLS && npi.kind == K_TOOLS) {
		ret = names_file_ok(newname);
		/* mcp.json is replaced only by a valid one. */
		if (ret == 0 && strcmp(newname, "mcp.json") == 0 && strcmp(name, "mcp.json") != 0)
			ret = mcpconf_check_rename(name);
		if (ret == 0 && renameat2(fs_tools_fd, name, fs_tools_fd, newname, flags) < 0)
			ret = -errno;
		if (ret == 0 && (strcmp(newname, "mcp.json") == 0 || strcmp(name, "mcp.json") == 0))
			mcp_note_write(NULL);
	} else if (pi.kind == K_CONVS || npi.kind == K_CONVS) {
		ret = -EPERM; /* conversations do not nest */
	} else {
		ret = -EXDEV;
	}
	if (ret == 0)
		node_move(parent, name, newparent, newname);
	if (ret == 0 && npi.kind == K_CONV && strcmp(newname, STORE_HISTORY) == 0) {
		/* The file renamed in may have had lines merged in (fs_hist.c):
		 * what the kernel cached of it (its size, the pages written)
		 * must go. Announced once its node carries the name, or the
		 * notifier would drop the replaced file's instead. */
		char p[PATH_MAX];
		if (snprintf(p, sizeof(p), "conversations/%s/%s", npi.conv, STORE_HISTORY) <
		    (int)sizeof(p))
			fs_notify_path(p);
	}
out:
	fuse_reply_err(req, -ret);
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	(void)parent; (void)name; (void)mode; (void)rdev;
	fuse_reply_err(req, EPERM);
}

void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	(void)link; (void)parent; (void)name;
	fuse_reply_err(req, EPERM);
}

/* A symlink planted in the state directory shows as one, but is never
 * followed, for the daemon or through the mount: reading it is ELOOP. */
void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct nodeinfo ni;
	if (node_info(ino, &ni) == 0)
		log_warnx("refused to follow a symlink: %s%s%s", ni.conv, ni.conv[0] ? "/" : "",
			  ni.name);
	fuse_reply_err(req, ELOOP);
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	(void)ino; (void)newparent; (void)newname;
	fuse_reply_err(req, EPERM);
}

void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs sv;
	if (fstatvfs(fs_state_fd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}
