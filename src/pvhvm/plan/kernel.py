"""Whether a ``kernel=`` file is a Xen PV-only kernel, which QEMU cannot boot.

QEMU 7.2's x86 loader (hw/i386/x86.c, hw/i386/multiboot.c) boots three kinds of kernel: a
Linux kernel with the boot protocol's header (``HdrS`` at 0x202, a bzImage), a multiboot
kernel (its header in the first 8 KiB), and an ELF with a Xen PVH entry point (the ELF note
``XEN_ELFNOTE_PHYS32_ENTRY``, 18, xen/include/public/elfnote.h). An ELF whose notes are
Xen's (name ``Xen``) and name no PVH entry, or that has xend's old ``__xen_guest`` section,
is built for Xen's PV loader only: PV-GRUB, Mini-OS (a stub domain), a unikernel, a classic
xenlinux vmlinuz. Xen's loader also unpacks a gzip'd kernel, QEMU's does not; one is unpacked
here (bounded) to say what it is.

Reads are bounded (:data:`MAX_KERNEL_BYTES`), and a malformed file is "not PV-only": the
verdict is given only when the file says so.
"""

from __future__ import annotations

import zlib

#: the most of a kernel file read, and the most a gzip'd one is unpacked to
MAX_KERNEL_BYTES = 64 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ELF_MAGIC = b"\x7fELF"
_LINUX_MAGIC = b"HdrS"
_MULTIBOOT_MAGIC = 0x1BADB002
_MULTIBOOT_SEARCH = 8192
XEN_ELFNOTE_PHYS32_ENTRY = 18
_PT_NOTE = 4
_SHT_NOTE = 7
#: the most program or section headers looked at
_MAX_HEADERS = 512


def _multiboot(head: bytes) -> bool:
    for offset in range(0, min(len(head), _MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, checksum = (int.from_bytes(head[offset + i:offset + i + 4], "little")
                                  for i in (0, 4, 8))
        if magic == _MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return True
    return False


class _Elf:
    """The few fields of an ELF header needed to find its notes and section names."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.wide = data[4] == 2
        self.order: str = "big" if data[5] == 2 else "little"

    def int_(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(self.data):
            raise ValueError("outside the file")
        return int.from_bytes(self.data[offset:offset + size], self.order)  # type: ignore[arg-type]

    def word(self, offset: int) -> int:
        """An address-sized field (Elf32_Off / Elf64_Off)."""
        return self.int_(offset, 8 if self.wide else 4)

    def headers(self, table: int, size: int, count: int) -> list[int]:
        return [table + i * size for i in range(min(count, _MAX_HEADERS))]

    def segments(self) -> list[tuple[int, int, int]]:
        """(type, offset, size) of each program header."""
        if self.wide:
            table, size, count = self.word(0x20), self.int_(0x36, 2), self.int_(0x38, 2)
            return [(self.int_(h, 4), self.word(h + 8), self.word(h + 32))
                    for h in self.headers(table, size, count)]
        table, size, count = self.word(0x1C), self.int_(0x2A, 2), self.int_(0x2C, 2)
        return [(self.int_(h, 4), self.word(h + 4), self.word(h + 16))
                for h in self.headers(table, size, count)]

    def sections(self) -> list[tuple[int, int, int, int]]:
        """(name offset, type, offset, size) of each section header."""
        if self.wide:
            table, size, count = self.word(0x28), self.int_(0x3A, 2), self.int_(0x3C, 2)
            return [(self.int_(h, 4), self.int_(h + 4, 4), self.word(h + 24), self.word(h + 32))
                    for h in self.headers(table, size, count)]
        table, size, count = self.word(0x20), self.int_(0x2E, 2), self.int_(0x30, 2)
        return [(self.int_(h, 4), self.int_(h + 4, 4), self.word(h + 16), self.word(h + 20))
                for h in self.headers(table, size, count)]

    def string_table(self) -> int | None:
        """The offset of the section-name string table."""
        index = self.int_(0x3E if self.wide else 0x32, 2)
        sections = self.sections()
        return sections[index][2] if index < len(sections) else None

    def xen_notes(self, offset: int, size: int) -> set[int]:
        """The types of the notes named ``Xen`` in the note area at ``offset``."""
        types: set[int] = set()
        end = min(offset + size, len(self.data))
        while offset + 12 <= end:
            namesz, descsz, kind = (self.int_(offset + i, 4) for i in (0, 4, 8))
            name = self.data[offset + 12:offset + 12 + namesz]
            if name.rstrip(b"\x00") == b"Xen":
                types.add(kind)
            offset += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
        return types


def _elf_verdict(data: bytes) -> str | None:
    """Why the ELF ``data`` is Xen PV-only, or None."""
    try:
        elf = _Elf(data)
        notes: set[int] = set()
        for kind, offset, size in elf.segments():
            if kind == _PT_NOTE:
                notes |= elf.xen_notes(offset, size)
        names = elf.string_table()
        old_style = False
        for name, kind, offset, size in elf.sections():
            if kind == _SHT_NOTE:
                notes |= elf.xen_notes(offset, size)
            if names is not None and data[names + name:names + name + 12] == b"__xen_guest\x00":
                old_style = True
    except (ValueError, IndexError):
        return None
    if XEN_ELFNOTE_PHYS32_ENTRY in notes or _multiboot(data):
        return None
    if notes:
        return "an ELF with Xen's PV notes and no PVH entry (XEN_ELFNOTE_PHYS32_ENTRY)"
    if old_style:
        return "an ELF with xend's __xen_guest section"
    return None


def pv_only_kernel(path: str) -> str | None:
    """Why the kernel at ``path`` boots only on Xen as a PV guest (PV-GRUB, Mini-OS, a
    unikernel, a xenlinux kernel), or None when QEMU may boot it or the file does not say."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_KERNEL_BYTES)
    except OSError:
        return None
    packed = data.startswith(_GZIP_MAGIC)
    if packed:
        try:
            data = zlib.decompressobj(wbits=31).decompress(data, MAX_KERNEL_BYTES)
        except zlib.error:
            return None
    if data[0x202:0x206] == _LINUX_MAGIC or not data.startswith(_ELF_MAGIC):
        return None  # the Linux boot protocol (a bzImage), or not an ELF: not ours to judge
    verdict = _elf_verdict(data)
    if verdict is not None and packed:
        verdict = "a gzip'd " + verdict.removeprefix("an ")
    return verdict
