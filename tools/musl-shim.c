/*
 * The three glibc-only symbols that Rust's x86_64-unknown-linux-gnu standard library and Debian's libgcc_eh refer to,
 * for executables linked against musl by tools/static-link (why: docs/benchmarks.md, "glibc's start-up").
 * No headers: the types below are the ELF and glibc ABI, spelled out, so the file builds the same against either
 * libc's headers or none.
 */
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
