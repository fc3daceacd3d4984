#!/bin/sh
# chat.sh NAME - a small chat REPL on a mounted lmsfs.
# Reads one question per line from stdin, submits it to
# $LMSFS_MOUNT/conversations/NAME/prompt and prints the answer.
# The mountpoint is $LMSFS_MOUNT (default ~/lms). Works in a pipe too:
#   printf 'hi\nand now?\n' | LMSFS_MOUNT=/mnt/lms examples/chat.sh demo
set -u
name=${1:?usage: chat.sh NAME}
conv=${LMSFS_MOUNT:-$HOME/lms}/conversations/$name
[ -d "$conv" ] || mkdir "$conv" || exit 1
[ -t 0 ] && printf '%s> ' "$name"
status=0
while IFS= read -r line; do
	[ -n "$line" ] || { [ -t 0 ] && printf '%s> ' "$name"; continue; }
	if ! printf '%s\n' "$line" > "$conv/prompt"; then
		sed -n 's/.*"rejected_write":[[:space:]]*"\(.*\)".*/refused: \1/p' "$conv/.status" >&2
		status=1
	elif ! cat "$conv/.reply"; then
		echo "(the answer failed; see $conv/.status)" >&2
		status=1
	fi
	echo
	[ -t 0 ] && printf '%s> ' "$name"
done
exit $status
