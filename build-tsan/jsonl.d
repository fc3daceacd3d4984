build-tsan/jsonl.o: fs/jsonl.c fs/jsonl.h
fs/jsonl.h:
