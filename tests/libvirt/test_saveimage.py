"""libvirt's save image as pvhvm reads it (pvhvm.libvirt.saveimage): the header (libvirt's
qemu_saveimage.h, version 2, 92 bytes), pvhvm's domain image in the domain XML's metadata, and
one clear line for each way a file is not one pvhvm can restore. The e2e test
(tests/e2e/test_libvirt_devices.py) reads an image a real libvirtd wrote."""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.config.source import ConfigSource
from pvhvm.libvirt import saveimage
from pvhvm.runtime import save
from pvhvm.runtime.savefile import DomainImage, HotplugSpec, SaveFileError

UUID = "0c1f8f3a-5d6e-4f70-8a9b-0123456789ab"
DOMAIN = (f"<domain type='qemu'><name>g</name><uuid>{UUID}</uuid>"
          "<memory unit='KiB'>196608</memory><devices/></domain>")


def image(**changes: object) -> DomainImage:
    fields: dict[str, object] = dict(
        name="g", uuid=UUID, platform="libvirt",
        source=ConfigSource(file="g.cfg", text='name = "g"\n', directory="/"),
        memory_kib=192 * 1024, vcpus=1, on_poweroff="destroy", on_reboot="restart",
        on_crash="destroy", accel="tcg",
        hotplugged=(HotplugSpec("disk", "/d.img,raw,xvdb,w", None, 51728, vdev="xvdb"),),
        media={}, devices=("disk xvdb 51728",), files=(),
        extra={"libvirt_uri": "qemu:///system"})
    fields.update(changes)
    return DomainImage(**fields)  # type: ignore[arg-type]


def header(length: int, magic: bytes = saveimage.MAGIC, version: int = 2,
           order: str = "<") -> bytes:
    """A libvirt save header: magic, version, data_len, was_running, format, cookieOffset,
    14 unused words."""
    return magic + struct.pack(f"{order}5I", version, length, 1, 0, 0) + bytes(56)


def libvirt_file(xml: str, **kwargs: object) -> bytes:
    data = xml.encode() + b"\0"
    return header(len(data), **kwargs) + data + b"QEVM-stream"  # type: ignore[arg-type]


def test_header_is_libvirts_92_bytes() -> None:
    assert len(header(0)) == saveimage.HEADER_SIZE == 92


def test_image_round_trips_through_the_domain_xml(tmp_path: Path) -> None:
    xml = saveimage.with_image(DOMAIN, image())
    # the metadata goes after name/uuid, as libvirt's schema orders it
    assert xml.index("<metadata>") > xml.index("</uuid>") and xml.index("<metadata>") < xml.index(
        "<memory")
    again = saveimage.with_image(xml, image(memory_kib=160 * 1024))  # replaces, does not add
    assert again.count("pvhvm:image") == 2  # one element: its start and end tags
    path = tmp_path / "g.save"
    path.write_bytes(libvirt_file(again))
    read = save.peek(path)  # pvhvm restore's first look recognises libvirt's image
    assert (read.name, read.uuid, read.platform, read.memory_kib) == (
        "g", UUID, "libvirt", 160 * 1024)
    assert read.hotplugged == image().hotplugged
    assert read.extra["libvirt_uri"] == "qemu:///system"


def test_a_byte_swapped_header_is_read_as_libvirt_reads_it() -> None:
    xml = saveimage.with_image(DOMAIN, image())
    assert saveimage.decode(libvirt_file(xml, order=">")).name == "g"


@pytest.mark.parametrize(("data", "message"), [
    (libvirt_file(DOMAIN, magic=saveimage.PARTIAL_MAGIC),
     "an incomplete libvirt save image (libvirt did not finish writing it)"),
    (libvirt_file(DOMAIN), "a libvirt save image that pvhvm did not write"),
    (libvirt_file(DOMAIN, version=7), "libvirt save image version 7"),
    (header(10)[:50], "truncated: the file ends inside libvirt's save header"),
    (header(4096) + b"<domain", "truncated: the file ends inside libvirt's domain XML"),
    (libvirt_file("<domain"), "its domain XML does not parse"),
    (header(struct.unpack("<I", b"\xff\xff\xff\x7f")[0]), "more than"),
])
def test_bad_libvirt_images_get_one_line(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.save"
    path.write_bytes(data)
    with pytest.raises(SaveFileError) as caught:
        save.peek(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_a_record_that_disagrees_with_its_xml_is_refused() -> None:
    xml = saveimage.with_image(DOMAIN, image(name="other"))
    with pytest.raises(SaveFileError, match="names name 'other', its domain XML 'g'"):
        saveimage.decode(libvirt_file(xml))
    xml = saveimage.with_image(DOMAIN, image(platform="qemu"))
    with pytest.raises(SaveFileError, match="record of the qemu platform"):
        saveimage.decode(libvirt_file(xml))


def test_an_image_of_an_older_pvhvm_is_refused() -> None:
    """pvhvm's record in an older image held a plan and an argv: one line, nothing read."""
    old = image().to_json()
    del old["source"]
    domain = ET.fromstring(saveimage.with_image(DOMAIN, image()))
    element = domain.find(f"metadata/{{{saveimage.NAMESPACE}}}{saveimage.ELEMENT}")
    assert element is not None
    element.text = json.dumps({**old, "plan": {}, "argv": ["/bin/sh", "-c", "touch /tmp/x"]})
    xml = ET.tostring(domain, encoding="unicode")
    with pytest.raises(SaveFileError, match="made by an older pvhvm: it carries a QEMU "
                                            "command line"):
        saveimage.decode(libvirt_file(xml))


def test_pvhvms_own_format_is_not_taken_for_libvirts(tmp_path: Path) -> None:
    path = tmp_path / "own.save"
    path.write_bytes(b"PVHVMSAV" + bytes(40))
    assert saveimage.peek(path) is None
    path.write_bytes(b"junk")
    with pytest.raises(SaveFileError, match="not a pvhvm save"):
        save.peek(path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_junk_after_the_magic_is_an_error_never_a_crash(junk: bytes) -> None:
    try:
        saveimage.decode(saveimage.MAGIC + junk)
    except SaveFileError as err:
        assert "\n" not in str(err)
