/*
 * xlparse: run Xen's own xl config, disk-spec and vif-rate parsers (libxlutil) on pvhvm's
 * inputs. A test peer, built by tests/xen/conftest.py.
 *
 *   xlparse disk SPEC...          parse one disk= entry (given as one or more strings, as
 *                                 `xl block-attach' takes them) with xlu_disk_parse
 *   xlparse cfg FILE              read an xl.cfg with xlu_cfg_readfile, then parse its disk=
 *                                 list (key=value lines)
 *   xlparse file FILE KEY...      read a whole config file with xlu_cfg_readfile and print one
 *                                 JSON object a line: each KEY's value as xl holds it (a
 *                                 string, with its number by xlu_cfg_get_long when it is one,
 *                                 or a list), then each disk= entry parsed by xlu_disk_parse
 *   xlparse rate RATE             parse a vif rate= with xlu_vif_parse_rate
 *
 * Exit status 1 and xl's own message on stderr when xl refuses the input (for `file': when
 * xlu_cfg_readfile does; a refused disk is a line of its own).
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

static int parse_disk(XLU_Config *cfg, int nspecs, const char *const *specs)
{
    libxl_device_disk disk;
    libxl_device_disk_init(&disk);
    int rc = xlu_disk_parse(cfg, nspecs, specs, &disk);
    if (!rc)
        show(&disk);
    libxl_device_disk_dispose(&disk);
    return rc;
}

/* A JSON string literal of s. */
static void json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void json_value(const XLU_Config *cfg, XLU_ConfigValue *value)
{
    if (xlu_cfg_value_type(value) == XLU_STRING) {
        char *s;
        xlu_cfg_value_get_string(cfg, value, &s, 1);
        json_string(s);
        return;
    }
    XLU_ConfigList *list;
    xlu_cfg_value_get_list(cfg, value, &list, 1);
    putchar('[');
    XLU_ConfigValue *item;
    for (int i = 0; (item = xlu_cfg_get_listitem2(list, i)); i++) {
        if (i)
            putchar(',');
        json_value(cfg, item);
    }
    putchar(']');
}

static void show_key(const XLU_Config *cfg, const char *key)
{
    const char *s;
    XLU_ConfigList *list;
    printf("{\"key\":");
    json_string(key);
    int rc = xlu_cfg_get_string(cfg, key, &s, 1);
    if (rc == ESRCH) {
        printf(",\"missing\":true}\n");
        return;
    }
    if (!rc) {
        long number;
        printf(",\"string\":");
        json_string(s);
        if (!xlu_cfg_get_long(cfg, key, &number, 1))
            printf(",\"long\":%ld", number);
        printf("}\n");
        return;
    }
    int count;
    if (!xlu_cfg_get_list(cfg, key, &list, &count, 1)) {
        printf(",\"list\":[");
        XLU_ConfigValue *item;
        for (int i = 0; (item = xlu_cfg_get_listitem2(list, i)); i++) {
            if (i)
                putchar(',');
            json_value(cfg, item);
        }
        printf("]}\n");
        return;
    }
    printf(",\"unreadable\":true}\n");
}

static void show_disk_json(int index, const char *spec, XLU_Config *cfg)
{
    libxl_device_disk d;
    libxl_device_disk_init(&d);
    printf("{\"disk\":%d,\"spec\":", index);
    json_string(spec);
    if (xlu_disk_parse(cfg, 1, &spec, &d)) {
        printf(",\"refused\":true}\n");
    } else {
        printf(",\"vdev\":");
        json_string(d.vdev ? d.vdev : "");
        printf(",\"target\":");
        json_string(d.pdev_path ? d.pdev_path : "");
        printf(",\"format\":");
        json_string(libxl_disk_format_to_string(d.format));
        printf(",\"readwrite\":%d,\"cdrom\":%d,\"script\":", d.readwrite, d.is_cdrom);
        json_string(d.script ? d.script : "");
        printf(",\"backend\":");
        json_string(d.backend_domname ? d.backend_domname : "");
        printf(",\"backendtype\":");
        json_string(libxl_disk_backend_to_string(d.backend));
        printf("}\n");
    }
    libxl_device_disk_dispose(&d);
}

static int read_file(XLU_Config *cfg, int nkeys, char **keys)
{
    int rc = xlu_cfg_readfile(cfg, keys[-1]);
    if (rc)
        return rc;
    for (int i = 0; i < nkeys; i++)
        show_key(cfg, keys[i]);
    XLU_ConfigList *disks;
    int count = 0;
    if (!xlu_cfg_get_list(cfg, "disk", &disks, &count, 1)) {
        for (int i = 0; i < count; i++) {
            const char *spec = xlu_cfg_get_listitem(disks, i);
            if (spec)
                show_disk_json(i, spec, cfg);
            else
                printf("{\"disk\":%d,\"not_a_string\":true}\n", i);
        }
    }
    return 0;
}

static int parse_rate(XLU_Config *cfg, const char *rate)
{
    libxl_device_nic nic;
    libxl_device_nic_init(&nic);
    int rc = xlu_vif_parse_rate(cfg, rate, &nic);
    if (!rc)
        printf("bytes_per_interval=%llu\ninterval_usecs=%u\n",
               (unsigned long long)nic.rate_bytes_per_interval,
               (unsigned)nic.rate_interval_usecs);
    libxl_device_nic_dispose(&nic);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: xlparse disk SPEC... | cfg FILE | file FILE KEY... | "
                        "rate RATE\n");
        return 2;
    }
    XLU_Config *cfg = xlu_cfg_init(stderr, argv[2]);
    if (!cfg)
        return 2;
    int rc = 0;
    if (!strcmp(argv[1], "disk")) {
        rc = parse_disk(cfg, argc - 2, (const char *const *)argv + 2);
    } else if (!strcmp(argv[1], "rate")) {
        rc = parse_rate(cfg, argv[2]);
    } else if (!strcmp(argv[1], "file")) {
        rc = read_file(cfg, argc - 3, argv + 3);
    } else if (!strcmp(argv[1], "cfg")) {
        rc = xlu_cfg_readfile(cfg, argv[2]);
        XLU_ConfigList *disks;
        int count = 0;
        if (!rc && !xlu_cfg_get_list(cfg, "disk", &disks, &count, 0)) {
            for (int i = 0; i < count && !rc; i++) {
                printf("--- disk %d\n", i);
                const char *spec = xlu_cfg_get_listitem(disks, i);
                rc = parse_disk(cfg, 1, &spec);
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
