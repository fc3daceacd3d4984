#!/bin/sh
# make demo: mount lmsfs on the built-in mock provider, show a conversation,
# a fork, a rewind, an attached file and a tool call, then unmount. Needs no
# LLM server and no terminal. LMSFS_BIN points at the binary (default
# build/lmsfs).
set -eu
BIN=${LMSFS_BIN:-$(pwd)/build/lmsfs}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/lmsfs-demo.XXXXXX)
MNT=$WORK/mnt
STATE=$WORK/state
PID=
mkdir -p "$MNT" "$STATE"

cleanup() {
	if grep -qs " $MNT " /proc/mounts; then
		fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null || true
	fi
	if [ -n "$PID" ]; then
		i=0
		while kill -0 "$PID" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
		kill -9 "$PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Runs a command line, shown first; output that does not end with a newline
# (a .reply's answer) gets one, so that the next prompt starts a line.
run() {
	printf '\n$ %s\n' "$*"
	rc=0
	sh -c "$*" >"$WORK/out" || rc=$?
	cat "$WORK/out"
	if [ -s "$WORK/out" ] && [ "$(tail -c 1 "$WORK/out" | wc -l)" -eq 0 ]; then
		echo
	fi
	return $rc
}

echo "# lmsfs demo: provider=mock, mounted on $MNT"
"$BIN" -f "$MNT" -o "state_dir=$STATE,provider=mock,mock_delay=40ms,default_model=mock-1b" \
	2>"$WORK/daemon.log" &
PID=$!
i=0
until grep -qs " $MNT " /proc/mounts; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 "$PID" 2>/dev/null; then
		echo "lmsfs did not mount:"; cat "$WORK/daemon.log"; exit 1
	fi
	sleep 0.05
done
cd "$MNT"

run "ls models"
run "cat health | head -8"
run "mkdir conversations/demo"
run "echo 'What is a FUSE filesystem?' > conversations/demo/prompt"
printf '\n$ tail -f -s 0.1 conversations/demo/stream   (stopped when the answer ends)\n'
tail -f -s 0.1 conversations/demo/stream &
TAIL=$!
cat conversations/demo/.reply >/dev/null
sleep 0.3
kill $TAIL 2>/dev/null || true
wait $TAIL 2>/dev/null || true
run "cat conversations/demo/messages.jsonl"
run "cp -r conversations/demo conversations/demo-fork"
run "echo 'And a second question, only in the fork.' > conversations/demo-fork/prompt && cat conversations/demo-fork/.reply"
run "wc -l conversations/demo/messages.jsonl conversations/demo-fork/messages.jsonl"
run "sed -i '2,\$d' conversations/demo-fork/messages.jsonl    # rewind to the first question"
run "cat conversations/demo-fork/messages.jsonl"
run "mkdir -p conversations/notes/attach && printf 'milk\\neggs\\n' > conversations/notes/attach/list.txt"
run "echo 'What is on my list?' > conversations/notes/prompt && cat conversations/notes/.reply"
run "ls conversations/notes/attach conversations/notes/files && cat conversations/notes/messages.jsonl"
run "cp $HERE/tools/calc tools/ && cat tools/.status"
run "echo 'Please use calc with expr=(6*7)+0.5 for me' > conversations/demo/prompt && cat conversations/demo/.reply"
run "cat conversations/demo/stream"
run "tail -n 3 conversations/demo/messages.jsonl"
run "cat conversations/demo/.status"
cd /
printf '\n$ fusermount3 -u %s\n' "$MNT"
fusermount3 -u "$MNT"
wait "$PID"
PID=
echo "# demo finished: lmsfs exited with status 0"
