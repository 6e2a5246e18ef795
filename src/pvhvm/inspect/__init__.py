"""Offline, read-only inspection of guest disk images: no boot, no host mount.

    partitions   MBR and GPT tables (parsed here), filesystem signatures by superblock
    extfs        ext2/3/4 read through e2fsprogs' debugfs (``image?offset=N``), read-only
    cpio         initramfs images: newc archives over gzip/xz/zstd/lz4, microcode prefixes
    bootloader   GRUB 2 grub.cfg, GRUB legacy menu.lst, extlinux/syslinux configs
    etcfiles     fstab, crypttab, os-release, /etc/default/grub, gettys
    image        inspect_image(): all of the above as one ImageReport; find_boot_entry()
    check        check_guest(plan, report): will this guest boot with this plan?
"""
