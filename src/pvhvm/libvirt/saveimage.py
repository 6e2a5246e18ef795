"""libvirt's own save image (``virsh save``), as ``pvhvm save`` writes it for a libvirt
domain, and the pvhvm record it carries: pure encode/decode (only :func:`peek` reads a file).

Why not pvhvm's own save format (runtime/savefile.py): libvirt's daemon writes the image
itself (``virDomainSaveFlags``: header, domain XML, QEMU's stream), so wrapping it would copy
the whole stream once more on save and again on restore (``virDomainRestore`` reads a path),
and the wrapped file would no longer be one ``virsh restore`` takes. libvirt's image already
marks itself incomplete until it is whole (magic ``LibvirtQemudPart``, rewritten to
``LibvirtQemudSave`` at the end). So the image stays libvirt's, and pvhvm's part of it, the
domain image (:class:`~pvhvm.runtime.savefile.DomainImage`, format 2: the domain's config as
create read it, hot-plugged devices as specs, the files it opens; never a plan or an argv),
rides in the domain XML's ``<metadata>`` as one JSON element, which libvirt keeps and
ignores. Restore plans the domain again from that config (runtime/replan.py), as the qemu
platform does; libvirt re-parses and validates the XML itself.

The header (libvirt src/qemu/qemu_saveimage.h, version 2), integers in the saving host's
byte order (libvirt reads a swapped one too)::

    offset  size  field
    0       16    magic  "LibvirtQemudSave" (whole) or "LibvirtQemudPart" (being written)
    16      4     version (2)
    20      4     data length D: the domain XML, NUL, then a cookie
    24      4     was_running
    28      4     compressed (0: raw)
    32      4     cookie offset
    36      56    unused (14 words)
    92      D     data
"""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from pvhvm.runtime.savefile import DomainImage, SaveFileError

MAGIC = b"LibvirtQemudSave"
PARTIAL_MAGIC = b"LibvirtQemudPart"
VERSIONS = (1, 2)
HEADER_SIZE = 92
#: the domain XML with its metadata; libvirt itself caps a save image's XML far below this
MAX_DATA = 16 << 20
#: the namespace of pvhvm's element in a domain's ``<metadata>``
NAMESPACE = "https://pvhvm.invalid/libvirt/domain-image/1"
ELEMENT = "image"
PREFIX = "pvhvm"


def is_libvirt_image(start: bytes) -> bool:
    """Whether a file that begins with ``start`` is a libvirt save image (whole or not)."""
    return start[:len(MAGIC)] in (MAGIC, PARTIAL_MAGIC)


def with_image(domain_xml: str, image: DomainImage) -> str:
    """``domain_xml`` with pvhvm's domain image in its ``<metadata>`` (any previous one
    replaced): the XML ``pvhvm save`` hands libvirt for the save image."""
    ET.register_namespace(PREFIX, NAMESPACE)
    domain = ET.fromstring(domain_xml)
    metadata = domain.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        # libvirt's schema wants <metadata> among the first elements: after name/uuid/...
        domain.insert(_metadata_index(domain), metadata)
    for old in metadata.findall(f"{{{NAMESPACE}}}{ELEMENT}"):
        metadata.remove(old)
    element = ET.SubElement(metadata, f"{{{NAMESPACE}}}{ELEMENT}")
    element.text = json.dumps(image.to_json(), sort_keys=True)
    return ET.tostring(domain, encoding="unicode")


def _metadata_index(domain: ET.Element) -> int:
    for index, child in enumerate(domain):
        if child.tag not in ("name", "uuid", "genid", "title", "description"):
            return index
    return len(domain)


def decode_header(data: bytes) -> tuple[int, int]:
    """(data length, compressed) from the first HEADER_SIZE bytes of a libvirt image."""
    if len(data) < HEADER_SIZE:
        raise SaveFileError("truncated: the file ends inside libvirt's save header")
    magic = data[:16]
    if magic == PARTIAL_MAGIC:
        raise SaveFileError("an incomplete libvirt save image (libvirt did not finish "
                            "writing it)")
    if magic != MAGIC:
        raise SaveFileError("not a libvirt save image (no LibvirtQemudSave magic)")
    readings = [struct.unpack_from(f"{order}4I", data, 16) for order in ("<", ">")]
    known = [reading for reading in readings if reading[0] in VERSIONS]
    if not known:  # named as an x86 host (little-endian) wrote it
        raise SaveFileError(f"libvirt save image version {readings[0][0]}; pvhvm reads "
                            f"versions {', '.join(map(str, VERSIONS))}")
    _version, length, _running, compressed = known[0]
    if length > MAX_DATA:
        raise SaveFileError(f"libvirt save image: its XML is {length} bytes, more than "
                            f"{MAX_DATA}")
    return length, compressed


def image_of_xml(domain_xml: str) -> DomainImage:
    """pvhvm's domain image in a save image's domain XML (SaveFileError when there is none:
    an image saved by virsh rather than pvhvm)."""
    try:
        domain = ET.fromstring(domain_xml)
    except ET.ParseError as err:
        raise SaveFileError(f"libvirt save image: its domain XML does not parse: {err}"
                            ) from err
    element = domain.find(f"metadata/{{{NAMESPACE}}}{ELEMENT}")
    if element is None or not element.text:
        raise SaveFileError("a libvirt save image that pvhvm did not write (its domain XML "
                            "has no pvhvm record): restore it with 'virsh restore'")
    try:
        document: Any = json.loads(element.text)
    except ValueError as err:
        raise SaveFileError(f"libvirt save image: pvhvm's record in it is not JSON: {err}"
                            ) from err
    image = DomainImage.from_json(document)
    for key, value in (("name", domain.findtext("name")), ("uuid", domain.findtext("uuid"))):
        if getattr(image, key) != value:
            raise SaveFileError(f"libvirt save image: pvhvm's record names {key} "
                                f"{getattr(image, key)!r}, its domain XML {value!r}")
    if image.platform != "libvirt":
        raise SaveFileError(f"libvirt save image holding a record of the {image.platform} "
                            "platform")
    return image


def decode(data: bytes) -> DomainImage:
    """The domain image in a libvirt save image's first bytes (header and XML at least)."""
    length, _ = decode_header(data)
    if len(data) < HEADER_SIZE + length:
        raise SaveFileError("truncated: the file ends inside libvirt's domain XML")
    xml = data[HEADER_SIZE:HEADER_SIZE + length].split(b"\0", 1)[0]
    try:
        text = xml.decode()
    except UnicodeDecodeError as err:
        raise SaveFileError(f"libvirt save image: its domain XML is not UTF-8: {err}"
                            ) from err
    return image_of_xml(text)


def peek(path: Path) -> DomainImage | None:
    """The domain image in the libvirt save image at ``path``; None when the file is not a
    libvirt save image at all (then it is pvhvm's own format, or junk). The one function
    here that reads a file."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(HEADER_SIZE)
            if not is_libvirt_image(start):
                return None
            length, _ = decode_header(start)
            data = start + stream.read(length)
    except OSError as err:
        raise SaveFileError(f"{path}: cannot read it: {err.strerror}") from err
    except SaveFileError as err:
        raise SaveFileError(f"{path}: {err}") from err
    try:
        return decode(data)
    except SaveFileError as err:
        raise SaveFileError(f"{path}: {err}") from err
