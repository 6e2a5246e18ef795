/*
 * nohyp: an LD_PRELOAD shim that lets Debian's xl 4.17 run `xl -N create FILE' (a dry run that
 * prints libxl's domain config as JSON) on a host with no Xen. A test peer, built by
 * tests/xen/conftest.py; see tests/xen/test_xl_native.py.
 *
 * libxl_ctx_alloc opens a libxc handle (xc_interface_open) and a XenStore one (xs_open); xl's
 * global config reads the hypervisor's version (libxl_get_version_info, for autoballoon) and
 * its CPU count (libxl_cpu_bitmap_alloc -> xc_get_max_cpus). This shim answers those with a
 * plausible 4-CPU, 2-node Xen 4.17 host with HVM and HAP, so that only xl's own
 * parse_config_data and libxl's JSON generator run for real. Any call to something a dry run
 * should never reach (creating a domain, writing XenStore) fails loudly: the shim prints
 * "nohyp: unexpected NAME" on stderr and exits 70, so a test sees the peer broke.
 *
 * The same shim lets Debian's oxenstored run on a Unix socket with --no-domain-init
 * (benchmarks/xenstore/sidebyside.py): it opens a libxc handle, an event channel handle (here
 * a pipe that never becomes readable: no domain ever signals) bound to VIRQ_DOM_EXC, and a
 * grant table handle, and asks for the domains it knows (none).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>

#define NR_CPUS 4
#define NR_NODES 2   /* two CPUs each: a vnuma= file may name pnodes 0 and 1 */
#define TOTAL_PAGES (4096UL * 1024 / 4)   /* 4 GiB of 4 KiB pages */

static int handle_token;   /* the address stands in for both handles */

static void unexpected(const char *name)
{
    fprintf(stderr, "nohyp: unexpected %s (xl -N create should never reach it)\n", name);
    exit(70);
}

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    (void)logger; (void)dombuild_logger; (void)open_flags;
    return (xc_interface *)&handle_token;
}

int xc_interface_close(xc_interface *xch)
{
    (void)xch;
    return 0;
}

struct xs_handle *xs_open(unsigned long flags)
{
    (void)flags;
    return (struct xs_handle *)&handle_token;
}

void xs_close(struct xs_handle *xsh)
{
    (void)xsh;
}

int xc_version(xc_interface *xch, int cmd, void *arg)
{
    (void)xch;
    switch (cmd) {
    case XENVER_version:
        return (4 << 16) | 17;
    case XENVER_extraversion:
        snprintf(arg, sizeof(xen_extraversion_t), ".7");
        return 0;
    case XENVER_compile_info:
        memset(arg, 0, sizeof(xen_compile_info_t));
        return 0;
    case XENVER_capabilities:
        snprintf(arg, sizeof(xen_capabilities_info_t),
                 "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64");
        return 0;
    case XENVER_changeset:
        ((char *)arg)[0] = 0;
        return 0;
    case XENVER_platform_parameters:
        memset(arg, 0, sizeof(xen_platform_parameters_t));
        return 0;
    case XENVER_pagesize:
        return 4096;
    case XENVER_commandline:
        snprintf(arg, sizeof(xen_commandline_t), "console=com1");
        return 0;
    case XENVER_build_id:
        return -EPERM;   /* libxl reads this as "no build id" */
    default:
        errno = ENOSYS;
        return -1;
    }
}

int xc_physinfo(xc_interface *xch, xc_physinfo_t *info)
{
    (void)xch;
    memset(info, 0, sizeof(*info));
    info->threads_per_core = 1;
    info->cores_per_socket = NR_CPUS;
    info->nr_cpus = NR_CPUS;
    info->max_cpu_id = NR_CPUS - 1;
    info->nr_nodes = NR_NODES;
    info->max_node_id = NR_NODES - 1;
    info->cpu_khz = 2000000;
    info->total_pages = TOTAL_PAGES;
    info->free_pages = TOTAL_PAGES / 2;
    info->capabilities = XEN_SYSCTL_PHYSCAP_hvm | XEN_SYSCTL_PHYSCAP_pv |
                         XEN_SYSCTL_PHYSCAP_hap | XEN_SYSCTL_PHYSCAP_gnttab_v1 |
                         XEN_SYSCTL_PHYSCAP_gnttab_v2;
    return 0;
}

int xc_get_max_cpus(xc_interface *xch)
{
    (void)xch;
    return NR_CPUS;
}

int xc_get_online_cpus(xc_interface *xch)
{
    (void)xch;
    return NR_CPUS;
}

int xc_get_max_nodes(xc_interface *xch)
{
    (void)xch;
    return NR_NODES;
}

long xc_sharing_freed_pages(xc_interface *xch)
{
    (void)xch;
    errno = ENOSYS;
    return -1;
}

long xc_sharing_used_frames(xc_interface *xch)
{
    (void)xch;
    errno = ENOSYS;
    return -1;
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                      xc_dominfo_t *info)
{
    (void)xch; (void)first_domid; (void)max_doms; (void)info;
    return 0;   /* no domains */
}

/* An event channel handle: a pipe whose read end never becomes readable. */
struct xenevtchn_handle {
    int fds[2];
};

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
    (void)logger; (void)flags;
    xenevtchn_handle *xce = malloc(sizeof(*xce));
    if (xce && pipe(xce->fds) < 0) {
        free(xce);
        xce = NULL;
    }
    return xce;
}

int xenevtchn_close(xenevtchn_handle *xce)
{
    if (xce) {
        close(xce->fds[0]);
        close(xce->fds[1]);
        free(xce);
    }
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
    return xce->fds[0];
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
    (void)xce; (void)virq;
    return 1;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    (void)xce;
    errno = EAGAIN;
    return -1;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                     evtchn_port_t remote_port)
{
    (void)xce; (void)domid;
    return (xenevtchn_port_or_error_t)remote_port + 100;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned int open_flags)
{
    (void)logger; (void)open_flags;
    return (xengnttab_handle *)&handle_token;
}

int xengnttab_close(xengnttab_handle *xgt)
{
    (void)xgt;
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    (void)xgt; (void)nr_grants;
    return 0;
}

/* What a dry run must never do: each a loud failure rather than a silent success. */
int xc_domain_create(xc_interface *xch, uint32_t *pdomid, struct xen_domctl_createdomain *config)
{
    (void)xch; (void)pdomid; (void)config;
    unexpected("xc_domain_create");
    return -1;
}

bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data,
              unsigned int len)
{
    (void)h; (void)t; (void)path; (void)data; (void)len;
    unexpected("xs_write");
    return false;
}
