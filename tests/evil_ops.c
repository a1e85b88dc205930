/* A malicious onnxruntime custom-op library, for tests/test_containment.py.
 *
 * onnxruntime dlopen()s it and calls RegisterCustomOps, which registers nothing and reports
 * success (NULL). The harm is done by the constructor, which runs at dlopen inside the
 * worker: it puts itself between the worker's request pipe and the Python code that reads
 * it (as any code in the process could), so it sees each RUN request before the model does
 * and can misbehave during a call. Compile-time switches (-D):
 *
 *   MODE_SOCKET  connect() to 127.0.0.1:PORT at load and on every call, then carry on
 *   MODE_ALLOC   allocate and touch 64 MiB blocks until malloc fails, then abort() (what a
 *                C++ op does when new throws std::bad_alloc and nothing catches it)
 *   MODE_SPIN    spin forever (the call never returns)
 *   MODE_SEGV    write through a null pointer
 *
 *   SENTINEL=x   misbehave on a RUN request holding the float32 x (a poison row), or
 *   NTH=n        on the n-th RUN request this process sees, or, with neither, on every one.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

enum { RUN = 3, HEADER = 9 };
static int real_in = -1, fake_in = -1;
static unsigned long calls;

static void try_connect(void) {
#ifdef PORT
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(fd, (struct sockaddr *)&addr, sizeof addr);
    close(fd);
#endif
}

static void misbehave(void) {
#if defined(MODE_SOCKET)
    try_connect();
#elif defined(MODE_ALLOC)
    for (;;) {
        char *block = malloc(64u << 20);
        if (block == NULL) abort();
        memset(block, 1, 64u << 20);
    }
#elif defined(MODE_SPIN)
    for (volatile unsigned long i = 0;; i++) {
    }
#elif defined(MODE_SEGV)
    volatile int *volatile nowhere = NULL; /* volatile: the compiler keeps the store */
    *nowhere = 1;
#endif
}

static int triggered(const unsigned char *payload, uint64_t len) {
    calls++;
#if defined(SENTINEL)
    float x = SENTINEL;
    return memmem(payload, len, &x, sizeof x) != NULL;
#elif defined(NTH)
    (void)payload, (void)len;
    return calls == NTH;
#else
    (void)payload, (void)len;
    return 1;
#endif
}

static int read_full(int fd, unsigned char *buf, uint64_t n) {
    while (n) {
        ssize_t got = read(fd, buf, n);
        if (got <= 0) return -1;
        buf += got, n -= (uint64_t)got;
    }
    return 0;
}

static int write_full(int fd, const unsigned char *buf, uint64_t n) {
    while (n) {
        ssize_t put = write(fd, buf, n);
        if (put <= 0) return -1;
        buf += put, n -= (uint64_t)put;
    }
    return 0;
}

static void *relay(void *unused) {
    (void)unused;
    unsigned char header[HEADER];
    while (read_full(real_in, header, HEADER) == 0) {
        uint64_t len;
        memcpy(&len, header + 1, sizeof len);
        unsigned char *payload = malloc(len ? len : 1);
        if (payload == NULL || read_full(real_in, payload, len) != 0) break;
        if (header[0] == RUN && triggered(payload, len)) misbehave();
        int failed = write_full(fake_in, header, HEADER) || write_full(fake_in, payload, len);
        free(payload);
        if (failed) break;
    }
    close(fake_in);
    return NULL;
}

__attribute__((constructor)) static void on_load(void) {
#ifdef MODE_SOCKET
    try_connect();
#endif
    for (int fd = 3; fd < 256; fd++) { /* the worker's request pipe: the read-only FIFO */
        struct stat st;
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fstat(fd, &st) != 0) continue;
        if (!S_ISFIFO(st.st_mode) || (flags & O_ACCMODE) != O_RDONLY) continue;
        int pipefd[2];
        if (pipe(pipefd) != 0) return;
        real_in = dup(fd);
        dup2(pipefd[0], fd);
        close(pipefd[0]);
        fake_in = pipefd[1];
        pthread_t thread;
        pthread_create(&thread, NULL, relay, NULL);
        pthread_detach(thread);
        return;
    }
}

void *RegisterCustomOps(void *options, const void *api) {
    (void)options, (void)api;
    return NULL; /* OrtStatus *: NULL is success */
}
