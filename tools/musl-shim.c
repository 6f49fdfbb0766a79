/*
 * What Rust's `*-linux-gnu` standard library and Debian's libgcc_eh refer to that musl lacks, for executables linked
 * against musl by tools/static-link (why: docs/benchmarks.md, "glibc's start-up"): three glibc-only symbols, and the
 * LFS64 names (`fstat64`, `open64`, ...) that musl 1.2.4 stopped exporting. Types are spelled out (the ELF and LP64
 * ABI) rather than taken from a libc's structure headers, so the file builds the same against glibc's headers or
 * musl's; only <fcntl.h> is used, for O_CREAT and O_TMPFILE, which are the kernel's values under either.
 */
#define _GNU_SOURCE /* O_TMPFILE */
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/*
 * std's `glibc_version()` parses this to decide whether posix_spawn reports exec failures itself (glibc >= 2.24).
 * musl's posix_spawn does (it waits for the child's exec through a pipe), so std may use it: answer that version.
 */
const char *gnu_get_libc_version(void) { return "2.24"; }

/*
 * std calls glibc's `__res_init` after a failed name lookup so that the next one rereads resolv.conf. musl rereads
 * it on every lookup, so there is nothing to do.
 */
int __res_init(void) { return 0; }

/* ELF program header and dl_iterate_phdr's record (LP64). */
typedef struct {
    uint32_t p_type, p_flags;
    uint64_t p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align;
} phdr;
struct dl_phdr_info {
    uintptr_t dlpi_addr;
    const char *dlpi_name;
    const phdr *dlpi_phdr;
    uint16_t dlpi_phnum;
};
int dl_iterate_phdr(int (*cb)(struct dl_phdr_info *, size_t, void *), void *data);

#define PT_LOAD 1
#define PT_GNU_EH_FRAME 0x6474e550

/* glibc 2.35's `struct dl_find_object` (x86_64: no dlfo_eh_dbase, no dlfo_eh_count). */
struct dl_find_object {
    unsigned long long dlfo_flags;
    void *dlfo_map_start;
    void *dlfo_map_end;
    void *dlfo_link_map;
    void *dlfo_eh_frame;
    unsigned long long reserved[7];
};

struct lookup {
    uintptr_t pc;
    struct dl_find_object *out;
};

static int find_in(struct dl_phdr_info *info, size_t size, void *data)
{
    struct lookup *q = data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    void *eh_frame = NULL;
    (void)size;
    for (uint16_t i = 0; i < info->dlpi_phnum; i++) {
        const phdr *p = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + p->p_vaddr;
        if (p->p_type == PT_LOAD) {
            if (start < lo)
                lo = start;
            if (start + p->p_memsz > hi)
                hi = start + p->p_memsz;
        } else if (p->p_type == PT_GNU_EH_FRAME) {
            eh_frame = (void *)start;
        }
    }
    if (q->pc < lo || q->pc >= hi)
        return 0;
    *q->out = (struct dl_find_object){
        .dlfo_map_start = (void *)lo,
        .dlfo_map_end = (void *)hi,
        .dlfo_eh_frame = eh_frame,
    };
    return 1;
}

/*
 * libgcc's unwinder (built against glibc >= 2.35) finds a PC's unwind tables only through this call: answer it from
 * the loaded objects' program headers, as glibc does. 0 when found, -1 otherwise.
 */
int _dl_find_object(void *pc, struct dl_find_object *out)
{
    struct lookup q = { (uintptr_t)pc, out };
    return dl_iterate_phdr(find_in, &q) ? 0 : -1;
}

/*
 * The LFS64 names. On LP64 musl, off_t, struct stat, struct dirent, struct rlimit ... are already the 64-bit ones, and
 * musl up to 1.2.3 exported these names as weak aliases of the plain functions; 1.2.4 removed them from the link
 * (glibc-built code, like Rust's standard library, still calls them). Each is weak and forwards to the plain
 * function, so with musl 1.2.3's own aliases present either one may be chosen: they are the same function.
 */
typedef off_t off64;
typedef long ssize;
#define LFS64 __attribute__((weak))

int fstat(int, void *);
int stat(const char *, void *);
int lstat(const char *, void *);
int fstatat(int, const char *, void *, int);
int fstatfs(int, void *);
int statfs(const char *, void *);
int fstatvfs(int, void *);
int statvfs(const char *, void *);
int ftruncate(int, off64);
int truncate(const char *, off64);
off64 lseek(int, off64, int);
void *mmap(void *, size_t, int, int, int, off64);
void *readdir(void *);
int readdir_r(void *, void *, void **);
ssize pread(int, void *, size_t, off64);
ssize pwrite(int, const void *, size_t, off64);
ssize preadv(int, const void *, int, off64);
ssize pwritev(int, const void *, int, off64);
ssize sendfile(int, int, off64 *, size_t);
int getrlimit(int, void *);
int setrlimit(int, const void *);
int prlimit(int, int, const void *, void *);

LFS64 int fstat64(int fd, void *st) { return fstat(fd, st); }
LFS64 int stat64(const char *p, void *st) { return stat(p, st); }
LFS64 int lstat64(const char *p, void *st) { return lstat(p, st); }
LFS64 int fstatat64(int dir, const char *p, void *st, int flags) { return fstatat(dir, p, st, flags); }
LFS64 int fstatfs64(int fd, void *st) { return fstatfs(fd, st); }
LFS64 int statfs64(const char *p, void *st) { return statfs(p, st); }
LFS64 int fstatvfs64(int fd, void *st) { return fstatvfs(fd, st); }
LFS64 int statvfs64(const char *p, void *st) { return statvfs(p, st); }
LFS64 int ftruncate64(int fd, off64 len) { return ftruncate(fd, len); }
LFS64 int truncate64(const char *p, off64 len) { return truncate(p, len); }
LFS64 off64 lseek64(int fd, off64 off, int whence) { return lseek(fd, off, whence); }
LFS64 void *mmap64(void *a, size_t n, int prot, int flags, int fd, off64 off)
{
    return mmap(a, n, prot, flags, fd, off);
}
LFS64 void *readdir64(void *dir) { return readdir(dir); }
LFS64 int readdir64_r(void *dir, void *entry, void **out) { return readdir_r(dir, entry, out); }
LFS64 ssize pread64(int fd, void *b, size_t n, off64 off) { return pread(fd, b, n, off); }
LFS64 ssize pwrite64(int fd, const void *b, size_t n, off64 off) { return pwrite(fd, b, n, off); }
LFS64 ssize preadv64(int fd, const void *iov, int n, off64 off) { return preadv(fd, iov, n, off); }
LFS64 ssize pwritev64(int fd, const void *iov, int n, off64 off) { return pwritev(fd, iov, n, off); }
LFS64 int posix_fallocate64(int fd, off64 off, off64 len) { return posix_fallocate(fd, off, len); }
LFS64 int posix_fadvise64(int fd, off64 off, off64 len, int advice) { return posix_fadvise(fd, off, len, advice); }
LFS64 int fallocate64(int fd, int mode, off64 off, off64 len) { return fallocate(fd, mode, off, len); }
LFS64 ssize sendfile64(int out, int in, off64 *off, size_t n) { return sendfile(out, in, off, n); }
LFS64 int getrlimit64(int res, void *lim) { return getrlimit(res, lim); }
LFS64 int setrlimit64(int res, const void *lim) { return setrlimit(res, lim); }
LFS64 int prlimit64(int pid, int res, const void *lim, void *old) { return prlimit(pid, res, lim, old); }
LFS64 int lockf64(int fd, int cmd, off64 len) { return lockf(fd, cmd, len); }
LFS64 int creat64(const char *p, mode_t mode) { return open(p, O_CREAT | O_WRONLY | O_TRUNC, mode); }

/* The mode argument exists only with O_CREAT or O_TMPFILE, as open(2) says; it is read only then. */
static unsigned mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, unsigned) : 0;
}

LFS64 int open64(const char *p, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    unsigned mode = mode_arg(flags, ap);
    va_end(ap);
    return open(p, flags, mode);
}

LFS64 int openat64(int dir, const char *p, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    unsigned mode = mode_arg(flags, ap);
    va_end(ap);
    return openat(dir, p, flags, mode);
}
