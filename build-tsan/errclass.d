build-tsan/errclass.o: fs/errclass.c fs/errclass.h
fs/errclass.h:
