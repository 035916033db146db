#ifndef LIVEMOUNT_CLIBAIO_SHIM_H
#define LIVEMOUNT_CLIBAIO_SHIM_H
#include <libaio.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>

/// preadv2(2) with one vector (glibc only declares it under _GNU_SOURCE).
/// Returns the bytes read, or -1 with errno (EAGAIN when RWF_NOWAIT would block).
static inline long livemount_preadv2(int fd, void *buffer, size_t length, long long offset, int flags) {
    struct iovec vector = { buffer, length };
    return syscall(SYS_preadv2, fd, &vector, 1, (unsigned long)offset, (unsigned long)((unsigned long long)offset >> 32), flags);
}
#endif
