#!/bin/sh
# Shell recipes for lmsfs, as functions you can source:  . examples/recipes.sh
# Each assumes LMS points at the mountpoint (default ~/lms).
LMS=${LMS:-$HOME/lms}

# ask CONV QUESTION... : submit and wait; exit status non-zero if it failed.
ask() { c=$LMS/conversations/$1; shift; mkdir -p "$c"; echo "$*" > "$c/prompt" && cat "$c/.reply"; }

# fork FROM TO : an independent copy that answers on its own from now on.
fork() { cp -r "$LMS/conversations/$1" "$LMS/conversations/$2"; }

# rewind CONV N : keep only the first N messages of the history.
rewind() { sed -i "$(($2 + 1)),\$d" "$LMS/conversations/$1/messages.jsonl"; }

# undo CONV : drop the last question and its answer (last two lines).
undo() { f=$LMS/conversations/$1/messages.jsonl; n=$(wc -l < "$f"); rewind "$1" $((n - 2)); }

# follow CONV : watch answers arrive (tail polls FUSE; -s 0.1 makes it snappy).
follow() { tail -f -s 0.1 "$LMS/conversations/$1/stream"; }

# history_grep WORD : which conversations mention WORD.
history_grep() { grep -rl -- "$1" "$LMS/conversations" --include=messages.jsonl; }

# use_model CONV SUBSTRING : pick a model for one conversation.
use_model() { echo "$2" > "$LMS/conversations/$1/model"; }

# cancel CONV / retry CONV : control the running or failed answer.
cancel() { echo cancel > "$LMS/conversations/$1/.ctl"; }
retry() { echo retry > "$LMS/conversations/$1/.ctl" && cat "$LMS/conversations/$1/.reply"; }
