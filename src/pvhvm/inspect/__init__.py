"""Offline, read-only inspection of guest disk images: no boot, no host mount.

    partitions   MBR and GPT tables (parsed here), filesystem signatures by superblock
    extfs        ext2/3/4 read through e2fsprogs' debugfs (``image?offset=N``), read-only
    cpio         initramfs images: newc archives over gzip/xz/zstd/lz4, microcode prefixes
    bootloader   GRUB 2 grub.cfg, GRUB legacy menu.lst, extlinux/syslinux configs
    etcfiles     fstab, crypttab, os-release, /etc/default/grub, gettys
    image        inspect_image(): all of the above as one ImageReport; find_boot_entry()
    check        check_guest(plan, report): boots, will not boot, or cannot tell
    sandbox      the host tools that parse guest bytes (debugfs, mtools, zstd, lz4), run as
                 nobody in own namespaces with a timeout, the image handed over as a descriptor
"""
