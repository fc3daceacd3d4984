# lmsfs - build, test, install.
#
#   make                 build build/lmsfs
#   make test            install missing packages, build, run the test suite
#                        (in parallel: TEST_JOBS=auto; TEST_JOBS=0 runs serially)
#   make SAN=address,undefined test   the same against a sanitizer build
#                        (in build-san-address_undefined/: one dir per SAN value)
#   make demo            mount on the built-in mock provider and show it off
#   make install PREFIX=/usr/local DESTDIR=
#
# CFLAGS (default -O2 -g), CPPFLAGS, LDFLAGS and LDLIBS are the user's: they
# are added after what the build needs, never instead of it. BUILD=DIR builds
# elsewhere; HARDEN=0 drops the hardening flags.

VERSION  := 0.1.0
PREFIX   ?= /usr/local
DESTDIR  ?=
BINDIR   := $(PREFIX)/bin
MANDIR   := $(PREFIX)/share/man/man1
DOCDIR   := $(PREFIX)/share/doc/lmsfs
PYTHON   ?= /usr/bin/python3

PKGS     := fuse3 libcurl libcjson inih
DEB_PKGS := fuse3 libfuse3-dev libcurl4-openssl-dev libcjson-dev libinih-dev \
            pkg-config python3-pytest python3-pytest-xdist rsync man-db bc \
            clang libclang-rt-14-dev valgrind
# make bench: jq is a baseline (P2, P5); libcurl and cJSON headers (above)
# build its C client.
DEB_PKGS += jq
CC       ?= cc

comma := ,
SAN ?=
ifeq ($(SAN),)
BUILD    := build
SANFLAGS :=
else
BUILD    := build-san-$(subst $(comma),_,$(SAN))
SANFLAGS := -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes

ifeq ($(WERROR),1)
WARN += -Werror
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

# The user's knobs. A command-line CFLAGS=... replaces only this default.
CFLAGS  ?= -O2 -g

# Hardening. _FORTIFY_SOURCE needs optimisation (glibc warns at -O0 or
# without -O), so it follows the last -O in CFLAGS; it is left out when
# the user sets it.
HARDEN ?= 1
ifeq ($(HARDEN),1)
OPTLEVEL := $(lastword $(filter -O%,$(CFLAGS)))
ifneq ($(filter-out -O0,$(OPTLEVEL)),)
ifeq ($(findstring _FORTIFY_SOURCE,$(CPPFLAGS) $(CFLAGS)),)
HARDEN_CPPFLAGS := -D_FORTIFY_SOURCE=2
endif
endif
HARDEN_CFLAGS  := -fstack-protector-strong -fPIE
HARDEN_LDFLAGS := -pie -Wl,-z,relro,-z,now
endif

# What the build needs, whatever the user passes.
LMSFS_CPPFLAGS := -DFUSE_USE_VERSION=314 -DLMSFS_VERSION=\"$(VERSION)\" \
                  -D_GNU_SOURCE $(HARDEN_CPPFLAGS) $(PKG_CFLAGS)
LMSFS_CFLAGS   := -std=gnu11 $(WARN) $(SANFLAGS) $(HARDEN_CFLAGS) -pthread
LMSFS_LDFLAGS  := $(SANFLAGS) $(HARDEN_LDFLAGS) -pthread
LMSFS_LIBS     := $(PKG_LIBS) -lm

ALL_CFLAGS  = $(LMSFS_CPPFLAGS) $(CPPFLAGS) $(LMSFS_CFLAGS) $(CFLAGS)
ALL_LDFLAGS = $(LMSFS_LDFLAGS) $(LDFLAGS)
ALL_LIBS    = $(LMSFS_LIBS) $(LDLIBS)

SRCS := $(wildcard fs/*.c)
OBJS := $(patsubst fs/%.c,$(BUILD)/%.o,$(SRCS))
DEPS := $(OBJS:.o=.d)

# Pure modules that unit tests link against (no FUSE, no curl).
PURE := buf utf8 sse jsonl config config_value config_file log names util msgs fsio store store_priv spool recover errclass u16 api think
# attachments (store layer, used by store.c and recover.c)
PURE += attach attach_send
# a program's process tree (tools and MCP servers)
PURE += proctree
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/unit/%,$(UNIT_SRCS))

# The compile and link lines, kept in $(BUILD)/flags: a change of flags
# rebuilds everything in that directory.
FLAGS_LINE := $(subst ','\'',$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) $(ALL_LIBS))

.PHONY: all deps deps-mcp test unit demo bench install uninstall fmt clean fuzz fuzz-smoke valgrind FORCE

all: $(BUILD)/lmsfs unit $(BUILD)/libfault.so

$(BUILD)/lmsfs: $(OBJS)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $(OBJS) $(ALL_LIBS)

$(BUILD)/%.o: fs/%.c $(BUILD)/flags | $(BUILD)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/flags: FORCE | $(BUILD)
	@printf '%s\n' '$(FLAGS_LINE)' | cmp -s - $@ || printf '%s\n' '$(FLAGS_LINE)' > $@

$(BUILD):
	mkdir -p $(BUILD) $(BUILD)/unit

unit: $(UNIT_BINS)

# Fault injection for the store tests: an LD_PRELOAD shim that fails the Nth
# write/fsync/rename/ftruncate/openat under the state directory. A shared
# library: -fPIC, never -pie.
$(BUILD)/libfault.so: tests/fault/fault.c | $(BUILD)
	$(CC) -O1 -g -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -fPIC -shared -o $@ $< -ldl

$(BUILD)/unit/%: tests/unit/%.c $(foreach m,$(PURE),$(BUILD)/$(m).o) $(BUILD)/flags | $(BUILD)
	$(CC) $(ALL_CFLAGS) -Ifs -o $@ $< $(foreach m,$(PURE),$(BUILD)/$(m).o) $(ALL_LDFLAGS) $(ALL_LIBS)

# Installs whatever Debian packages are missing; silent when all are there.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The MCP reference server the tests run (tests/test_mcp.py), pinned with
# its whole dependency tree in tests/mcp/package-lock.json and installed
# into tests/mcp/node_modules (ignored by git) only when missing: no
# network once it is there. Node.js and npm come from Debian when missing.
MCP_EVERYTHING := tests/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js

deps: deps-mcp

deps-mcp:
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  echo "installing: nodejs npm"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; \
	fi
	@if [ ! -f $(MCP_EVERYTHING) ]; then \
	  echo "installing: @modelcontextprotocol/server-everything into tests/mcp"; \
	  cd tests/mcp && npm ci --no-audit --no-fund --loglevel=error; \
	fi

# The suite runs on TEST_JOBS pytest-xdist workers (auto: one per core; 0:
# serially, without xdist). Tests marked xdist_group run one after another
# on one worker: see tests/conftest.py.
TEST_JOBS ?= auto
ifeq ($(TEST_JOBS),0)
XDIST_ARGS :=
else
XDIST_ARGS := -n $(TEST_JOBS) --dist loadgroup
endif

test: deps
	$(MAKE) all
	LMSFS_BIN=$(CURDIR)/$(BUILD)/lmsfs LMSFS_UNIT_DIR=$(CURDIR)/$(BUILD)/unit \
	  LMSFS_FAULT_LIB=$(CURDIR)/$(BUILD)/libfault.so \
	  $(PYTHON) -m pytest -q $(XDIST_ARGS) tests $(PYTEST_ARGS)

demo: deps
	$(MAKE) all
	LMSFS_BIN=$(CURDIR)/$(BUILD)/lmsfs sh examples/demo.sh

bench: deps
	$(MAKE) all
	LMSFS_BIN=$(CURDIR)/$(BUILD)/lmsfs $(PYTHON) tests/bench/run.py

install: $(BUILD)/lmsfs
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(DOCDIR)/examples/tools
	install -m 0755 $(BUILD)/lmsfs $(DESTDIR)$(BINDIR)/lmsfs
	install -m 0644 lmsfs.1 $(DESTDIR)$(MANDIR)/lmsfs.1
	install -m 0644 lmsfs.conf $(DESTDIR)$(DOCDIR)/lmsfs.conf.example
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	for f in examples/tools/*; do install -m 0755 $$f $(DESTDIR)$(DOCDIR)/examples/tools/; done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/lmsfs $(DESTDIR)$(MANDIR)/lmsfs.1
	rm -rf $(DESTDIR)$(DOCDIR)

# libFuzzer targets (clang): make fuzz FUZZ_TIME=60 runs each for that long;
# fuzz-smoke runs each for a few seconds on the committed seed corpus.
FUZZ_TIME ?= 60
FUZZ_TARGETS := sse chunk jsonl config
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 -D_GNU_SOURCE \
               -DLMSFS_VERSION=\"$(VERSION)\" -Ifs $(shell pkg-config --cflags libcjson inih 2>/dev/null)
FUZZ_LIBS := $(shell pkg-config --libs libcjson inih 2>/dev/null)
FUZZ_SRC_sse := fs/sse.c fs/buf.c
FUZZ_SRC_chunk := fs/api.c fs/u16.c fs/buf.c fs/errclass.c fs/util.c fs/utf8.c fs/think.c
FUZZ_SRC_jsonl := fs/jsonl.c fs/buf.c fs/utf8.c
FUZZ_SRC_config := fs/config.c fs/config_value.c fs/config_file.c fs/log.c fs/buf.c

build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c fs/*.h fs/*.c
	mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_SRC_$*) $(FUZZ_LIBS)

fuzz: $(foreach t,$(FUZZ_TARGETS),build-fuzz/fuzz_$(t))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build-fuzz/corpus-$$t; \
	  echo "fuzz_$$t: $(FUZZ_TIME) s"; \
	  build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_TIME) -max_len=65536 -print_final_stats=1 \
	    -artifact_prefix=build-fuzz/ build-fuzz/corpus-$$t tests/fuzz/corpus/$$t \
	    > build-fuzz/$$t.log 2>&1 || { tail -30 build-fuzz/$$t.log; exit 1; }; \
	  grep -E "^Done|number_of_executed_units" build-fuzz/$$t.log; \
	done

fuzz-smoke:
	$(MAKE) fuzz FUZZ_TIME=5

# The daemon under valgrind memcheck for the foundation and conversation
# tests: any error or definite leak fails the run (slow; not part of CI).
valgrind: deps
	$(MAKE) all
	LMSFS_BIN=$(CURDIR)/$(BUILD)/lmsfs LMSFS_WRAPPER="valgrind --quiet --vgdb=no --leak-check=full \
	  --errors-for-leak-kinds=definite --error-exitcode=99 --show-leak-kinds=definite" \
	  $(PYTHON) -m pytest -q tests/test_foundation.py tests/test_conversations.py $(PYTEST_ARGS)

fmt:
	clang-format -i fs/*.c fs/*.h tests/unit/*.c

clean:
	rm -rf build build-san build-san-* build-tsan build-O0 build-fuzz

-include $(DEPS)
