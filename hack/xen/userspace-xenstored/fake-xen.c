/*
 * LD_PRELOAD library that lets Debian's C xenstored 4.17 run as a plain process on a machine
 * without Xen, for tests of xenstore clients (runtime-shim/tests/xenstored.rs).
 *
 * xenstored's start-up (dom0_init -> setup_structure, which also opens its database) insists on
 * talking to the hypervisor: libxenctrl for domain info, libxenevtchn for event channels,
 * libxengnttab to map dom0's ring, and /proc/xen/xsd_{port,kva}. Without them it exits, and
 * --no-domain-init leaves the database unopened. This library answers those calls so that only
 * the unix-socket side is live:
 *   - every handle is a dummy; every domid below DOMID_FIRST_RESERVED exists and runs;
 *   - the event channel fd is an eventfd that never fires; bound ports are counters;
 *   - a grant mapping is an anonymous zeroed page (a ring nobody writes);
 *   - /proc/xen/xsd_port reads "1", /proc/xen/xsd_kva is a one-page memfd.
 * Build: cc -shared -fPIC -O2 -o fake-xen.so fake-xen.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define DOMID_FIRST_RESERVED 0x7ff0u
#define PAGE 4096

static int handle;
static int event_fd = -1;
static int port_counter = 16;

/* libxenctrl */
void *xc_interface_open(void *logger, void *dombuild_logger, unsigned flags)
{
	(void)logger; (void)dombuild_logger; (void)flags;
	return &handle;
}
int xc_interface_close(void *xch) { (void)xch; return 0; }

/* xc_dominfo_t starts with domid, ssidref, then a word of state bits (bit 5: running). */
int xc_domain_getinfo(void *xch, uint32_t first, unsigned int max, void *info)
{
	(void)xch;
	if (max == 0 || first >= DOMID_FIRST_RESERVED)
		return 0;
	uint32_t *w = info;
	memset(info, 0, 64);
	w[0] = first;
	w[2] = 1u << 5;
	return 1;
}

/* libxengnttab */
void *xengnttab_open(void *logger, unsigned flags) { (void)logger; (void)flags; return &handle; }
int xengnttab_close(void *h) { (void)h; return 0; }
int xengnttab_set_max_grants(void *h, uint32_t count) { (void)h; (void)count; return 0; }
void *xengnttab_map_grant_ref(void *h, uint32_t domid, uint32_t ref, int prot)
{
	(void)h; (void)domid; (void)ref; (void)prot;
	void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}
int xengnttab_unmap(void *h, void *addr, uint32_t count)
{
	(void)h;
	return munmap(addr, (size_t)PAGE * count);
}

/* libxenevtchn */
void *xenevtchn_open(void *logger, unsigned flags)
{
	(void)logger; (void)flags;
	if (event_fd < 0)
		event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	return &handle;
}
void *xenevtchn_fdopen(void *logger, int fd, unsigned flags)
{
	(void)logger; (void)flags;
	event_fd = fd;
	return &handle;
}
int xenevtchn_close(void *h) { (void)h; return 0; }
int xenevtchn_fd(void *h) { (void)h; return event_fd; }
int xenevtchn_bind_virq(void *h, unsigned int virq) { (void)h; (void)virq; return port_counter++; }
int xenevtchn_bind_interdomain(void *h, uint32_t domid, uint32_t remote_port)
{
	(void)h; (void)domid; (void)remote_port;
	return port_counter++;
}
int xenevtchn_unbind(void *h, uint32_t port) { (void)h; (void)port; return 0; }
int xenevtchn_notify(void *h, uint32_t port) { (void)h; (void)port; return 0; }
int xenevtchn_pending(void *h) { (void)h; errno = EAGAIN; return -1; }
int xenevtchn_unmask(void *h, uint32_t port) { (void)h; (void)port; return 0; }

/* /proc/xen/xsd_port and /proc/xen/xsd_kva as memfds; every other path goes to libc. */
static int memfd_with(const char *name, const char *data, size_t len, size_t size)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	if ((len && write(fd, data, len) != (ssize_t)len) || ftruncate(fd, (off_t)size) != 0 ||
	    lseek(fd, 0, SEEK_SET) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

int open(const char *path, int flags, ...)
{
	static int (*libc_open)(const char *, int, ...);
	mode_t mode = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	if (strcmp(path, "/proc/xen/xsd_port") == 0)
		return memfd_with("xsd_port", "1", 1, 1);
	if (strcmp(path, "/proc/xen/xsd_kva") == 0)
		return memfd_with("xsd_kva", NULL, 0, PAGE);
	if (!libc_open)
		libc_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
	return libc_open(path, flags, mode);
}
