"""Hostile images: decompression bombs and partition tables that claim more than the image
holds cost at most the stated bounds (memory measured, not assumed), and end in one
InspectError.

Each bomb unpacks to more than 1 GiB (a cpio member claiming 4 GiB, then 1 GiB of zeros
behind it): before the bounds, the gzip/xz members were unpacked whole into memory (per
member, up to 2 GiB each) and zstd/lz4 without any cap.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.guest.initramfs import CpioEntry, cpio_newc
from pvhvm.inspect.cpio import CHUNK, MAX_DECODER_MEMORY, MAX_UNPACKED, read_initramfs
from pvhvm.inspect.errors import ImageFormatError, InspectError
from pvhvm.inspect.partitions import GPT_MAX_ARRAY, read_table
from tests.inspect.conftest import tool

GIB = 1 << 30
#: what reading any bomb may add to the reading process's peak RSS (measured: ~10 MiB)
RSS_BOUND_MIB = 64
_ZEROS = b"\0" * (1 << 20)


def _bomb_head() -> bytes:
    """A newc header whose member claims 0xFFFFFFFF bytes of data."""
    fields = [0, 0o100644, 0, 0, 1, 0, 0xFFFFFFFF, 0, 0, 0, 0, len("bomb") + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields) + b"bomb\0"
    return header + b"\0" * (-len(header) % 4)


def _python_bomb(make: Callable[[], object], size: int = GIB) -> bytes:
    compressor = make()
    parts = [compressor.compress(_bomb_head())]  # type: ignore[attr-defined]
    parts += [compressor.compress(_ZEROS) for _ in range(size >> 20)]  # type: ignore[attr-defined]
    parts.append(compressor.flush())  # type: ignore[attr-defined]
    return b"".join(parts)


def _tool_bomb(argv: list[str], size: int = GIB) -> bytes:
    process = subprocess.Popen([tool(argv[0]), *argv[1:]], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    out: list[bytes] = []
    # write and read in turn would deadlock on a full pipe: read in a thread
    reader = threading.Thread(target=lambda: out.append(process.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    process.stdin.write(_bomb_head())
    for _ in range(size >> 20):
        process.stdin.write(_ZEROS)
    process.stdin.close()
    reader.join()
    assert process.wait() == 0
    return out[0]


def _microcode() -> bytes:
    return cpio_newc([CpioEntry.file("kernel/x86/microcode/GenuineIntel.bin", b"\1" * 4096)])


BOMBS: dict[str, Callable[[], bytes]] = {
    "gzip": lambda: _python_bomb(lambda: zlib.compressobj(1, wbits=31)),
    "xz": lambda: _python_bomb(lambda: lzma.LZMACompressor(preset=0)),
    "zstd": lambda: _tool_bomb(["zstd", "-q", "-1", "-c"]),
    "lz4": lambda: _tool_bomb(["lz4", "-l", "-q", "-c"]),
    "microcode+gzip": lambda: _microcode() + _python_bomb(lambda: zlib.compressobj(1, wbits=31)),
}

_PROBE = """
import json, resource, sys
from pvhvm.inspect.cpio import read_initramfs
from pvhvm.inspect.errors import InspectError
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_initramfs(data)
    error = None
except InspectError as err:
    error = str(err)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": error, "grew_kib": after - before, "peak_kib": after}))
"""


def _read_in_child(path: Path) -> dict[str, object]:
    """read_initramfs in a fresh interpreter: its own peak RSS, before and after."""
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_decompression_bomb_costs_at_most_the_bound(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(BOMBS[kind]())
    result = _read_in_child(path)
    assert result["error"] is not None and f"more than {MAX_UNPACKED >> 20} MiB" in str(
        result["error"]), result
    assert int(str(result["grew_kib"])) < RSS_BOUND_MIB * 1024, result


def test_the_cap_is_over_the_whole_image_not_per_member(tmp_path: Path) -> None:
    """Three gzip members of 400 MiB each: each alone is under the cap, together over it."""
    member = cpio_newc([CpioEntry.file("big", b"")])  # replaced below by a 400 MiB one
    compressor = zlib.compressobj(1, wbits=31)
    fields = [0, 0o100644, 0, 0, 1, 0, 400 << 20, 0, 0, 0, 0, len("big") + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields) + b"big\0"
    header += b"\0" * (-len(header) % 4)
    parts = [compressor.compress(header)]
    parts += [compressor.compress(_ZEROS) for _ in range(400)]
    parts.append(compressor.compress(member[-124:]))  # the trailer entry
    parts.append(compressor.flush())
    one = b"".join(parts)
    assert read_initramfs(one).members["big"].size == 400 << 20  # one alone is fine
    path = tmp_path / "three.gz"
    path.write_bytes(one * 3)
    result = _read_in_child(path)
    assert "more than" in str(result["error"]), result


def _gpt_image(path: Path, *, size: int, entries_lba: int, count: int,
               entry_size: int, header_size: int = 92) -> Path:
    """A sparse image with a protective MBR and a GPT header saying what it is told to."""
    mbr = bytearray(512)
    mbr[446 + 4] = 0xEE
    struct.pack_into("<II", mbr, 446 + 8, 1, 0xFFFFFFFF)
    mbr[510:512] = b"\x55\xaa"
    header = bytearray(512)
    header[:8] = b"EFI PART"
    struct.pack_into("<I", header, 8, 0x00010000)
    struct.pack_into("<I", header, 12, header_size)
    struct.pack_into("<QII", header, 72, entries_lba, count, entry_size)
    with open(path, "wb") as stream:
        stream.write(bytes(mbr) + bytes(header))
        stream.truncate(size)
    return path


@pytest.mark.parametrize(("count", "entry_size"), [
    (1, 0xFFFFFF80),         # one 4 GB entry
    (0xFFFFFFFF, 128),       # four billion entries
    (1024, 4096),            # 4 MiB: sane-looking, over the array bound
    (4, 200),                # not a multiple of 128
])
def test_gpt_claiming_a_huge_entry_array(tmp_path: Path, count: int, entry_size: int) -> None:
    image = _gpt_image(tmp_path / "gpt.img", size=4096, entries_lba=2, count=count,
                       entry_size=entry_size)
    probe = """
import json, resource, sys
from pvhvm.inspect.image import inspect_image
from pvhvm.inspect.errors import InspectError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    inspect_image(__import__("pathlib").Path(sys.argv[1]))
    error = None
except InspectError as err:
    error = str(err)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": error, "grew_kib": after - before}))
"""
    done = subprocess.run([sys.executable, "-c", probe, str(image)], capture_output=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result = json.loads(done.stdout)
    assert result["error"] is not None and "GPT header" in result["error"], result
    assert "\n" not in result["error"]
    assert result["grew_kib"] < (GPT_MAX_ARRAY >> 10) + 16 * 1024, result


def test_gpt_array_and_partitions_must_lie_inside_the_image(tmp_path: Path) -> None:
    image = _gpt_image(tmp_path / "far.img", size=64 << 10, entries_lba=1 << 40, count=128,
                       entry_size=128)
    with pytest.raises(ImageFormatError, match="inside"):
        read_table(open(image, "rb"), 64 << 10)  # noqa: SIM115
    image = _gpt_image(tmp_path / "part.img", size=64 << 10, entries_lba=2, count=128,
                       entry_size=128)
    with open(image, "r+b") as stream:
        stream.seek(1024)
        stream.write(b"\x01" * 16 + b"\x02" * 16 + struct.pack("<QQ", 34, 1 << 30))
    with pytest.raises(ImageFormatError, match=r"GPT entry 1: LBA 34\.\.1073741824"):
        read_table(open(image, "rb"), 64 << 10)  # noqa: SIM115
    image = _gpt_image(tmp_path / "hdr.img", size=64 << 10, entries_lba=2, count=128,
                       entry_size=128, header_size=1 << 20)
    with pytest.raises(ImageFormatError, match="header size"):
        read_table(open(image, "rb"), 64 << 10)  # noqa: SIM115


@settings(deadline=None, max_examples=200)
@given(header=st.binary(min_size=92, max_size=512), array=st.binary(max_size=4096),
       fields=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                        st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
       size=st.integers(1024, 1 << 40))
def test_gpt_of_any_bytes(header: bytes, array: bytes, fields: tuple[int, int, int, int],
                          size: int) -> None:
    """Any GPT header and array: a table or ImageFormatError, never another exception, and
    never a read bigger than the array bound."""
    mbr = bytearray(512)
    mbr[446 + 4] = 0xEE
    struct.pack_into("<II", mbr, 446 + 8, 1, 0xFFFFFFFF)
    mbr[510:512] = b"\x55\xaa"
    gpt = bytearray(header.ljust(512, b"\0"))
    gpt[:8] = b"EFI PART"
    struct.pack_into("<I", gpt, 12, fields[3] % 600)
    struct.pack_into("<QII", gpt, 72, fields[0] % 64, fields[1], fields[2])
    data = bytes(mbr) + bytes(gpt) + array

    class Bounded(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            assert size is None or size <= GPT_MAX_ARRAY, size
            return super().read(size)

    try:
        table = read_table(Bounded(data), size)
    except ImageFormatError:
        return
    for part in table.partitions:
        assert part.start > 0 and part.start + part.size <= size


@settings(deadline=None, max_examples=300)
@given(data=st.binary(max_size=2048), prefix=st.sampled_from([
    b"", b"070701", b"070702", b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd",
    b"\x02\x21\x4c\x18", b"BZh", b"\x5d\x00\x00"]))
def test_cpio_reader_of_any_bytes(data: bytes, prefix: bytes) -> None:
    """Any bytes after any magic: a result or InspectError, never another exception, and
    at most a few chunks of memory and an xz decoder's capped dictionary (tracemalloc's
    peak)."""
    tracemalloc.start()
    try:
        read_initramfs(prefix + data)
    except InspectError:
        pass
    finally:
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 * CHUNK + MAX_DECODER_MEMORY, peak


def test_bombs_leave_no_tool_running(tmp_path: Path) -> None:
    """A zstd bomb stopped at the cap: its zstd is killed, not left decompressing."""
    data = BOMBS["zstd"]()
    before = _children()
    with pytest.raises(ImageFormatError, match="more than"):
        read_initramfs(data, limit=64 << 20)
    assert _children() == before


def _children() -> set[int]:
    me = os.getpid()
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(entry.name))
    return out


def test_an_xz_header_asking_for_a_4_gib_dictionary(tmp_path: Path) -> None:
    """lzma-alone's header names its dictionary size: 4 GiB is refused, not allocated."""
    header = b"\x5d" + struct.pack("<I", 0xFFFF0000) + struct.pack("<q", -1)
    with pytest.raises(ImageFormatError, match="lzma"):
        read_initramfs(header + b"\0" * 64)


@settings(deadline=None, max_examples=300)
@given(image=st.binary(min_size=0, max_size=8192), mbr=st.booleans(), gpt=st.booleans(),
       claimed=st.integers(0, 1 << 44))
def test_partition_table_of_any_image(image: bytes, mbr: bool, gpt: bool, claimed: int) -> None:
    """Any bytes as a whole image (with a 55AA signature, a protective entry and "EFI PART"
    forced in or not), any size claimed for it: a table or ImageFormatError, no read bigger
    than the array bound, no partition outside the size."""
    data = bytearray(image.ljust(1024, b"\0"))
    if mbr:
        data[510:512] = b"\x55\xaa"
    if gpt:
        data[446 + 4] = 0xEE
        data[512:520] = b"EFI PART"

    class Bounded(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            assert size is None or size <= GPT_MAX_ARRAY, size
            return super().read(size)

    size = max(claimed, 1024)
    try:
        table = read_table(Bounded(bytes(data)), size)
    except ImageFormatError:
        return
    if table.scheme == "gpt":
        for part in table.partitions:
            assert part.start > 0 and part.start + part.size <= size
