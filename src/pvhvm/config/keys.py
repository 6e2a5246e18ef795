"""Every key of xl.cfg(5) (Xen 4.17) and of xm's create.py, and what pvhvm does with each.

A key is one of:

* ``USED``: read and realised by pvhvm on the qemu platform (and exported by ``export-xl``);
* ``XEN``: a setting of the Xen hypervisor or of xl itself (scheduling, paging, grant tables,
  security labels, stub domains...). It does not change the devices the guest sees; on the
  qemu platform it has no effect and says so in one warning; ``export-xl`` keeps it;
* ``GUEST``: changes what the guest gets (a passed-through PCI or USB device, a vTPM, a 9p
  share...) and cannot be realised on the qemu platform: an error there unless the user says
  to go ahead (``--skip-unsupported``); ``export-xl`` keeps it.

A key in neither table is unknown: a warning naming the nearest known key.
"""

from __future__ import annotations

from enum import Enum


class KeyUse(Enum):
    """What pvhvm does with a config key."""

    USED = "used"
    XEN = "xen"
    GUEST = "guest"


_USED = """
name uuid memory maxmem vcpus maxvcpus maxcpus builder type kernel ramdisk extra cmdline root
boot disk vif serial vnc vnclisten vncdisplay vncunused vncpasswd vncconsole sdl nographic
on_poweroff on_reboot on_crash acpi apic pae localtime rtc_timeoffset device_model
device_model_version xen_platform_pci stdvga vga usb usbdevice bios cdrom soundhw hpet
parallel bootloader vfb keymap videoram hvmloader firmware hotplug_slots
spice spicehost spiceport spicetls_port spicedisable_ticketing spicepasswd spiceagent_mouse
"""

_XEN = """
cpus cpus_soft cpu cpu_weight cpu_cap weight cap pool hap shadow_memory altp2m altp2mhvm
tsc_mode timer_mode vpt_align nestedhvm max_grant_frames max_maptrack_frames
max_grant_version max_event_channels seclabel init_seclabel device_model_stubdomain_override
device_model_stubdomain_seclabel stubdomain_kernel stubdomain_ramdisk stubdomain_memory
stubdomain_cmdline dm_restrict device_model_user device_model_override vkb_device claim_mode
superpages nomigrate driver_domain
on_watchdog on_soft_reset s3_integrity pci_permissive pci_msitranslate pci_power_mgmt
pci_seize msitranslate power_mgmt vhpt e820_host mca_caps security access_control cpuid
cpuid_check machine_address_size features suppress_spurious_page_faults guest_os_type nics
blkif netif tpmif viridian acpi_s3 acpi_s4 acpi_laptop_slate nx vnuma vcpu_avail bootargs
bootloader_args spicevdagent spice_clipboard_sharing spiceusbredirection spice_image_compression
spice_streaming_video opengl display xauthority isa monitor monitor_path expose_host_uuid
xen_platform_pci_bar_uc gfx_passthru_kind smbios_firmware acpi_firmware ms_vm_genid
apic_id_legacy passthrough iommu_memkb event_channels vmtrace_buf_kb vpmu tee
gic_version vuart arm_sve dom0_mem autoballoon ip gateway netmask hostname interface dhcp
nfs_server nfs_root xenstore_domid usbversion rdm rdm_mem_boundary mmio_hole
device_model_stubdomain memory_sharing migration_opts localtime_offset shadow_pages
"""

_GUEST = """
pci ioports irqs irq iomem dtdev gfx_passthru vtpm usbctrl usbdev p9 p9fs channel vdispl vsnd
vkb pvcalls virtio fda fdb usbport device_tree dm_vpmu rtc_offset device_model_args
device_model_args_hvm device_model_args_pv
"""

#: keys whose values reach QEMU's command line as they are written: refused with a line of
#: their own (pvhvm builds every QEMU option from the plan, issue 18)
RAW_QEMU_ARGS = frozenset({"device_model_args", "device_model_args_hvm", "device_model_args_pv"})


def _table() -> dict[str, KeyUse]:
    table: dict[str, KeyUse] = {}
    for text, use in ((_USED, KeyUse.USED), (_XEN, KeyUse.XEN), (_GUEST, KeyUse.GUEST)):
        for key in text.split():
            table.setdefault(key, use)
    return table


#: every known key → what pvhvm does with it
KEY_USE: dict[str, KeyUse] = _table()
KNOWN_KEYS: tuple[str, ...] = tuple(KEY_USE)

#: keys xm knew that xl does not: ``export-xl`` turns them into xl's spelling or drops them
#: with a note, never passes them through
XM_ONLY = frozenset({
    "builder", "cdrom", "vncconsole", "hvmloader", "cpu", "nics", "blkif", "netif", "tpmif",
    "access_control", "security", "features", "isa", "monitor", "monitor_path", "display",
    "xauthority", "opengl", "guest_os_type", "expose_host_uuid", "s3_integrity", "vhpt",
    "suppress_spurious_page_faults", "machine_address_size", "cpuid_check", "superpages",
    "pci_msitranslate", "pci_power_mgmt", "usbport", "fda", "fdb", "ip", "gateway", "netmask",
    "hostname", "interface", "dhcp", "nfs_server", "nfs_root", "bootargs", "vcpu_avail",
    "localtime_offset", "shadow_pages", "memory_sharing", "migration_opts", "rtc_offset",
    "irq",
})

#: keys only xl reads (xl.cfg(5), none of xm's create.py): evidence that a file is an xl one
#: (config.domain). ``builder`` is not here or in XM_ONLY's evidence: libvirt's xl writer
#: emits it.
XL_ONLY = frozenset({
    "type", "device_model_version", "device_model_override", "device_model_args",
    "device_model_args_hvm", "device_model_args_pv", "device_model_user",
    "device_model_stubdomain_override", "bios", "firmware", "vkb_device", "maxvcpus",
    "max_grant_frames", "max_maptrack_frames", "max_grant_version", "max_event_channels",
    "cpus_soft", "dm_restrict", "driver_domain", "usbctrl", "usbdev", "vdispl", "vsnd",
    "pvcalls", "virtio", "p9", "vnuma", "altp2m", "tee", "vmtrace_buf_kb", "rdm",
    "rdm_mem_boundary", "mmio_hole", "dtdev", "device_tree", "gic_version", "vuart",
})

#: keys xl reads with xlu_cfg_get_long: a whole number or nothing
XL_WHOLE_NUMBERS = (
    "cpu_weight", "cpu_cap", "weight", "cap", "shadow_memory", "max_grant_frames",
    "max_maptrack_frames", "max_event_channels", "videoram", "stubdomain_memory",
    "iommu_memkb", "vmtrace_buf_kb", "spiceport", "spicetls_port",
)
