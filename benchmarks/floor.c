/* The C floor: list and read exactly what the sysfs source reads, with the fewest system calls, and
 * parse nothing. Each device directory is opened once through its bus link; its attributes are
 * opened relative to that directory (openat), read in one read() each, closed. Links are read with
 * readlinkat, directories listed with getdents64 into one large buffer.
 *
 *   floor [-t] SYSFS PROCFS [PCI_IDS]   prints "<files> <bytes>": what it read, so nothing is skipped;
 *                                       -t: every path it read, linked or listed instead (for the
 *                                       benchmark's check that it reads what the source reads)
 *
 * Built by benchmarks/run.py twice: as a program (timed as a whole process beside
 * `passthrough-exporter devices --json`) and as a shared library whose floor_read() is timed in the
 * benchmark's process beside one refresh. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ATTR_READ 4097   /* the source reads ATTR_LIMIT + 1 bytes to tell an oversized attribute */
#define CONFIG_HEADER 64 /* the standard PCI header: all the source reads of config space */
#define DENTS (1 << 16)

struct stats { long files, bytes; };

static FILE *trace; /* -t only: never set when timed */

static void note(const char *kind, int at, const char *name) {
    char dir[4096] = "", fdpath[64];
    if (at != AT_FDCWD) {
        snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", at);
        long n = readlink(fdpath, dir, sizeof dir - 1);
        dir[n > 0 ? n : 0] = 0;
    }
    fprintf(trace, "%s %s%s%s\n", kind, dir, *dir && *name ? "/" : "", name);
}

/* A directory's entry names; its arrays grow as needed and are reused from one listing to the next. */
struct dir {
    int n, cap;
    size_t used, size;
    size_t *names; /* offsets into buf */
    char *buf;
};

#define NAME(d, i) ((d)->buf + (d)->names[i])

static void add_name(struct dir *d, const char *name, size_t len) {
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 1024;
        d->names = realloc(d->names, d->cap * sizeof *d->names);
    }
    if (d->used + len > d->size) {
        d->size = d->size ? 2 * d->size : DENTS;
        while (d->used + len > d->size)
            d->size *= 2;
        d->buf = realloc(d->buf, d->size);
    }
    if (!d->names || !d->buf)
        abort();
    memcpy(d->buf + d->used, name, len);
    d->names[d->n++] = d->used;
    d->used += len;
}

struct linux_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Lists an open directory into `d` (names point into d->buf): what os.listdir() returns. */
static void list_fd(int fd, struct dir *d, struct stats *st) {
    char dents[DENTS];
    d->n = 0;
    d->used = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, dents, sizeof dents);
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            struct linux_dirent64 *e = (struct linux_dirent64 *)(dents + off);
            off += e->d_reclen;
            if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
                continue;
            size_t len = strlen(e->d_name) + 1;
            add_name(d, e->d_name, len);
            st->bytes += len;
        }
    }
}

/* Lists `path` relative to `at`; -1 when it cannot be opened. */
static int list_at(int at, const char *path, struct dir *d, struct stats *st) {
    int fd = openat(at, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        d->n = 0;
        return -1;
    }
    if (trace)
        note("list", at, path);
    list_fd(fd, d, st);
    close(fd);
    return 0;
}

static int has(const struct dir *d, const char *name) {
    for (int i = 0; i < d->n; i++)
        if (strcmp(NAME(d, i), name) == 0)
            return 1;
    return 0;
}

static void read_at(int at, const char *name, size_t size, struct stats *st) {
    char buf[ATTR_READ];
    int fd = openat(at, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return;
    long n = read(fd, buf, size);
    close(fd);
    if (n > 0) {
        st->files++;
        st->bytes += n;
    }
    if (trace)
        note("read", at, name);
}

static void read_if(int at, const struct dir *d, const char *name, struct stats *st) {
    if (has(d, name))
        read_at(at, name, ATTR_READ, st);
}

static void link_at(int at, const char *name, struct stats *st) {
    char buf[4096];
    long n = readlinkat(at, name, buf, sizeof buf);
    if (n > 0)
        st->bytes += n;
    if (trace && n > 0)
        note("link", at, name);
}

/* A whole procfs table (cmdline, interrupts, mountinfo): read until EOF, as the source does. */
static int read_whole(const char *path, struct stats *st) {
    static char buf[1 << 16];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -1;
    long n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        st->bytes += n;
    close(fd);
    st->files++;
    if (trace)
        note("read", AT_FDCWD, path);
    return 0;
}

static const char *PCI_FILES[] = {
    "vendor", "device", "class", "subsystem_vendor", "subsystem_device", "numa_node", "boot_vga",
    "reset_method", "enable", "sriov_totalvfs", "sriov_numvfs", "aer_dev_correctable", "aer_dev_nonfatal",
    "aer_dev_fatal", "power_state", NULL};
static const char *PCI_LINK_FILES[] = {  /* a VF's link is its PF's: not read there */
    "current_link_speed", "max_link_speed", "current_link_width", "max_link_width", NULL};
static const char *USB_DEVICE_FILES[] = {
    "idVendor", "idProduct", "manufacturer", "product", "bDeviceClass", "busnum", "devnum", NULL};
static const char *LUN_FILES[] = {"vendor", "model", "type", NULL};

static void read_list(int at, const struct dir *d, const char **names, struct stats *st) {
    for (; *names; names++)
        read_if(at, d, *names, st);
}

static struct dir dev, sub, sub2;

static void pci(int fd, struct stats *st) {
    int vf = has(&dev, "physfn");
    read_list(fd, &dev, PCI_FILES, st);
    if (!vf)
        read_list(fd, &dev, PCI_LINK_FILES, st);
    if (has(&dev, "config"))
        read_at(fd, "config", CONFIG_HEADER, st);
    for (int i = 0; i < dev.n; i++) {
        const char *a = NAME(&dev, i);
        if (!strcmp(a, "driver") || !strcmp(a, "iommu_group") || !strcmp(a, "physfn") || !strncmp(a, "virtfn", 6))
            link_at(fd, a, st);
    }
    if (has(&dev, "vfio-dev"))
        list_at(fd, "vfio-dev", &sub, st);
    if (has(&dev, "mdev_supported_types")) {
        int types = openat(fd, "mdev_supported_types", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (types >= 0) {
            if (trace)
                note("list", types, "");
            list_fd(types, &sub, st);
            for (int i = 0; i < sub.n; i++) {
                int t = openat(types, NAME(&sub, i), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (t < 0)
                    continue;
                if (trace)
                    note("list", t, "");
                list_fd(t, &sub2, st);
                read_if(t, &sub2, "name", st);
                read_if(t, &sub2, "device_api", st);
                read_if(t, &sub2, "available_instances", st);
                if (has(&sub2, "devices"))
                    list_at(t, "devices", &sub2, st);
                close(t);
            }
            close(types);
        }
    }
}

static void usb(int fd, const char *name, struct stats *st) {
    if (strchr(name, ':'))
        read_if(fd, &dev, "bInterfaceClass", st);
    else
        read_list(fd, &dev, USB_DEVICE_FILES, st);
    if (has(&dev, "driver"))
        link_at(fd, "driver", st);
}

static void scsi(int fd, const char *name, struct stats *st) {
    int colons = 0;
    for (const char *c = name; *c; c++)
        colons += *c == ':';
    if (colons != 3 || !strncmp(name, "host", 4) || !strncmp(name, "target", 6))
        return; /* hosts and targets: their listing is all the source reads */
    read_list(fd, &dev, LUN_FILES, st);
    if (has(&dev, "driver"))
        link_at(fd, "driver", st);
    if (has(&dev, "block"))
        list_at(fd, "block", &sub, st);
}

static struct dir bus;

static void read_bus(const char *sysfs, const char *name, int kind, struct stats *st) {
    char path[4096];
    snprintf(path, sizeof path, "%s/bus/%s/devices", sysfs, name);
    int base = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (base < 0)
        return;
    if (trace)
        note("list", base, "");
    list_fd(base, &bus, st);
    for (int i = 0; i < bus.n; i++) {
        const char *e = NAME(&bus, i);
        link_at(base, e, st); /* where the device sits: its parent */
        int fd = openat(base, e, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (trace)
            note("list", fd, "");
        list_fd(fd, &dev, st);
        if (kind == 0)
            pci(fd, st);
        else if (kind == 1)
            usb(fd, e, st);
        else
            scsi(fd, e, st);
        close(fd);
    }
    close(base);
}

static void list_path(const char *a, const char *b, struct stats *st) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", a, b);
    list_at(AT_FDCWD, path, &sub, st);
}

/* Returns files read and bytes seen (entries' names included) through `out`: 0 files, 1 bytes. */
long floor_read(const char *sysfs, const char *procfs, const char *pci_ids, long *out) {
    struct stats st = {0, 0};
    char path[4096];
    if (pci_ids && *pci_ids)
        read_whole(pci_ids, &st); /* the CLI loads vendor and device names once per process */
    read_bus(sysfs, "pci", 0, &st);
    read_bus(sysfs, "usb", 1, &st);
    read_bus(sysfs, "scsi", 2, &st);
    static const char *modules[] = {"vfio", "vfio_iommu_type1", "vfio_pci"};
    for (int m = 0; m < 3; m++) {
        snprintf(path, sizeof path, "%s/module/%s/parameters", sysfs, modules[m]);
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (trace)
            note("list", fd, "");
        list_fd(fd, &sub, &st);
        for (int i = 0; i < sub.n; i++)
            read_at(fd, NAME(&sub, i), ATTR_READ, &st);
        close(fd);
    }
    snprintf(path, sizeof path, "%s/cmdline", procfs);
    read_whole(path, &st);
    snprintf(path, sizeof path, "%s/interrupts", procfs);
    read_whole(path, &st);
    list_path(sysfs, "firmware/acpi/tables", &st);
    list_path(sysfs, "kernel/iommu_groups", &st);
    list_path(sysfs, "class/iommu", &st);
    snprintf(path, sizeof path, "%s/1/mountinfo", procfs); /* PID 1's view first, as the source */
    if (read_whole(path, &st) < 0) {
        snprintf(path, sizeof path, "%s/self/mountinfo", procfs);
        read_whole(path, &st);
    }
    list_path(procfs, "", &st); /* the holder scan lists the processes */
    out[0] = st.files;
    out[1] = st.bytes;
    return st.bytes;
}

#ifndef FLOOR_LIBRARY
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "-t")) {
        trace = stdout;
        argc--, argv++;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: floor [-t] SYSFS PROCFS [PCI_IDS]\n");
        return 2;
    }
    long out[2];
    floor_read(argv[1], argv[2], argc > 3 ? argv[3] : NULL, out);
    if (!trace)
        printf("%ld %ld\n", out[0], out[1]);
    return 0;
}
#endif
