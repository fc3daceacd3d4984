build-tsan/names.o: fs/names.c fs/names.h
fs/names.h:
