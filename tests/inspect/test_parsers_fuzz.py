"""Property tests: the parsers of guest-controlled bytes never fail with anything but
ImageFormatError, whatever the image holds (a guest image is untrusted input)."""

from __future__ import annotations

import io
import struct

from hypothesis import given
from hypothesis import strategies as st

from pvhvm.inspect.bootloader import parse_bls, parse_extlinux, parse_grub1, parse_grub2
from pvhvm.inspect.cpio import read_initramfs
from pvhvm.inspect.errors import ImageFormatError
from pvhvm.inspect.etcfiles import (
    classify,
    parse_crypttab,
    parse_fstab,
    parse_inittab_gettys,
    parse_shell_assignments,
)
from pvhvm.inspect.partitions import probe_signature, read_table

_lines = st.lists(st.sampled_from([
    "menuentry 'x' {", "}", "submenu 's' {", "linux /vmlinuz root=/dev/sda1", "initrd /i",
    "set default=1>0", "title t", "kernel /k ro", "default 1", "LABEL l", "KERNEL k",
    "APPEND initrd=/a,/b x=1", "DEFAULT l", "MENU DEFAULT", "if [ x ]; then", "fi",
    "function f {", "set default=\"${saved_entry}\"", "options $kernelopts", "'",
    "/dev/sda1 / ext4 defaults 0 1", "UUID=\\040 /x ext4 nofail", "a:b:c:getty ttyS0",
    "X=\"unterminated", "version 1.2", "",
]) | st.text(max_size=40), max_size=30).map("\n".join)


@given(text=_lines)
def test_text_parsers_never_raise(text: str) -> None:
    parse_grub2(text, "g", {"saved_entry": "1>0"})
    parse_grub1(text, "m")
    parse_extlinux(text, "/boot/extlinux/extlinux.conf")
    parse_bls({"a.conf": text, "b.conf": text}, "e")
    parse_fstab(text)
    parse_crypttab(text)
    parse_shell_assignments(text)
    parse_inittab_gettys(text)
    for word in text.split():
        classify(word)


@given(entries=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255),
                                  st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                        min_size=4, max_size=4),
       tail=st.binary(max_size=2048), signature=st.booleans())
def test_partition_table_of_any_sector(entries: list[tuple[int, int, int, int]],
                                       tail: bytes, signature: bool) -> None:
    sector = bytearray(512)
    for index, (status, ptype, start, count) in enumerate(entries):
        base = 446 + 16 * index
        sector[base] = status
        sector[base + 4] = ptype
        struct.pack_into("<II", sector, base + 8, start, count)
    if signature:
        sector[510:512] = b"\x55\xaa"
    data = bytes(sector) + tail
    try:
        table = read_table(io.BytesIO(data), len(data))
    except ImageFormatError:
        return
    for part in table.partitions:
        assert part.size > 0 and part.number >= 1
    probe_signature(io.BytesIO(data), 0)


@given(data=st.binary(max_size=600))
def test_initramfs_of_any_bytes(data: bytes) -> None:
    for candidate in (data, b"070701" + data, b"\x1f\x8b" + data, b"\xfd7zXZ\x00" + data):
        try:
            read_initramfs(candidate)
        except ImageFormatError:
            pass
