/*
 * xlparse: run Xen's own xl config and disk-spec parsers (libxlutil) on pvhvm's inputs.
 *
 *   xlparse disk SPEC      parse one disk= entry with xlu_disk_parse
 *   xlparse cfg FILE       read an xl.cfg with xlu_cfg_readfile, then parse its disk= list
 *
 * Prints one "key=value" line per field of each parsed disk; exit status 1 and xl's own
 * message on stderr when xl refuses the input. A test peer, built by tests/xen/xlpeer.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <libxl.h>
#include <libxlutil.h>

static void show(const libxl_device_disk *d)
{
    printf("vdev=%s\n", d->vdev ? d->vdev : "");
    printf("target=%s\n", d->pdev_path ? d->pdev_path : "");
    printf("format=%s\n", libxl_disk_format_to_string(d->format));
    printf("readwrite=%d\n", d->readwrite);
    printf("cdrom=%d\n", d->is_cdrom);
    printf("script=%s\n", d->script ? d->script : "");
    printf("backend=%s\n", d->backend_domname ? d->backend_domname : "");
}

static int parse_disk(XLU_Config *cfg, const char *spec)
{
    libxl_device_disk disk;
    libxl_device_disk_init(&disk);
    int rc = xlu_disk_parse(cfg, 1, &spec, &disk);
    if (!rc)
        show(&disk);
    libxl_device_disk_dispose(&disk);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: xlparse disk SPEC | xlparse cfg FILE\n");
        return 2;
    }
    XLU_Config *cfg = xlu_cfg_init(stderr, argc > 2 ? argv[2] : "-");
    if (!cfg)
        return 2;
    int rc = 0;
    if (!strcmp(argv[1], "disk")) {
        rc = parse_disk(cfg, argv[2]);
    } else if (!strcmp(argv[1], "cfg")) {
        rc = xlu_cfg_readfile(cfg, argv[2]);
        XLU_ConfigList *disks;
        int count = 0;
        if (!rc && !xlu_cfg_get_list(cfg, "disk", &disks, &count, 0)) {
            for (int i = 0; i < count && !rc; i++) {
                printf("--- disk %d\n", i);
                rc = parse_disk(cfg, xlu_cfg_get_listitem(disks, i));
            }
        }
        const char *value;
        if (!rc && !xlu_cfg_get_string(cfg, "type", &value, 0))
            printf("type=%s\n", value);
        long number;
        if (!rc && !xlu_cfg_get_long(cfg, "xen_platform_pci", &number, 0))
            printf("xen_platform_pci=%ld\n", number);
        XLU_ConfigList *vifs;
        if (!rc && !xlu_cfg_get_list(cfg, "vif", &vifs, &count, 0))
            printf("vifs=%d\n", count);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        rc = 2;
    }
    xlu_cfg_destroy(cfg);
    return rc ? 1 : 0;
}
