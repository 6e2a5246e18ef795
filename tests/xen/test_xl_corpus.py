"""Whole config files read side by side with Xen 4.17's own xl parsers (libxlutil).

Each file of tests/xen/corpus/ (written for these tests in the shapes real files have:
Xen's xlexample.*/xmexample.hvm, libvirt's xm/xl converter data, users' files) is read by
xlu_cfg_readfile (through tests/xen/xlpeer) and by pvhvm.config.lang.parse_config. For every
file xl accepts, each key's value and each disk= entry (xlu_disk_parse against
pvhvm.config.disk.parse_disk: target, format, vdev, access, cdrom, backend, backendtype,
script) must read the same. Every difference is listed in
DOCUMENTED_CHOICES with its reason, and every listed difference must still be there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pvhvm.config.disk import parse_disk
from pvhvm.config.lang import ConfigValues, parse_config
from pvhvm.config.vif import parse_rate, parse_vif
from pvhvm.errors import ConfigError, SpecError
from tests.xen.conftest import XlParser

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(p.name for p in CORPUS.glob("*.cfg"))
_KEY = re.compile(r"(?:^|;)\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\+?=", re.MULTILINE)

XM_IS_PYTHON = (
    "xm files are Python (xend exec'd them); pvhvm reads the safe subset of Python, which xl's "
    "own grammar (strings, numbers, lists) does not have"
)

#: file -> (the differences pvhvm has with xl on that file, why). A difference is
#: "xl refuses the file", "pvhvm refuses the file", "key NAME", or "disk N".
DOCUMENTED_CHOICES: dict[str, tuple[frozenset[str], str]] = {
    "xm-hvm-example.cfg": (
        frozenset({"xl refuses the file", "pvhvm refuses the file"}),
        "xl cannot read Python ('+'); pvhvm refuses the import statement xmexample.hvm starts "
        "with (it never runs code), naming the line",
    ),
    "xm-hvm-no-import.cfg": (frozenset({"xl refuses the file"}), XM_IS_PYTHON + " ('+')"),
    "xm-python-values.cfg": (
        frozenset({"xl refuses the file"}), XM_IS_PYTHON + " (True, '%', unary minus)",
    ),
    "xm-uppercase-names.cfg": (
        frozenset({"xl refuses the file"}),
        XM_IS_PYTHON + " (xl's names are lower-case only)",
    ),
    "xl-numeric-escape.cfg": (
        frozenset({"key extra"}),
        "libxlutil reads a backslash-digit escape as decimal ('\\101' is chr(101), 'e'); "
        "pvhvm reads it as Python does, octal ('A'), as xend did",
    ),
    "xl-shared-writable.cfg": (
        frozenset({"disk 1"}),
        "w! (share a writable image on purpose) is xend's mode; libxlutil 4.17 knows only "
        "r, ro, w, rw",
    ),
}


def keys_of(text: str, values: ConfigValues | None) -> list[str]:
    """Every name the file assigns (lower-case ones are what xl can hold)."""
    names = dict.fromkeys(_KEY.findall(text))
    if values is not None:
        names.update(dict.fromkeys(values.values))
    return list(names)


def same_item(ours: Any, theirs: Any) -> bool:
    """One list element: xl holds a string or a list."""
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(same_item, ours, theirs))
    if isinstance(ours, bool):
        return False  # xl has no booleans
    if isinstance(ours, int):
        return isinstance(theirs, str) and theirs == str(ours)
    return isinstance(ours, str) and ours == theirs


def same_value(ours: Any, theirs: dict[str, Any]) -> bool:
    """A top-level value: xl's string (and its number), or its list."""
    if "missing" in theirs or isinstance(ours, bool):
        return False
    if isinstance(ours, int):
        return theirs.get("long") == ours
    if isinstance(ours, str):
        return theirs.get("string") == ours
    if isinstance(ours, list) and "list" in theirs:
        return same_item(ours, theirs["list"])
    return False


def disk_reading(spec: str) -> dict[str, Any] | None:
    """pvhvm's reading of one disk= entry in xlparse's terms, None when refused."""
    try:
        disk = parse_disk(spec)
    except SpecError:
        return None
    return {
        "vdev": disk.vdev, "target": disk.target, "format": disk.format,
        "readwrite": 1 if disk.access.writable and not disk.cdrom else 0,
        "cdrom": 1 if disk.cdrom else 0, "script": disk.script or "",
        "backend": disk.backend or "", "backendtype": disk.backendtype or "unknown",
    }


def differences(xl: XlParser, name: str) -> set[str]:
    path = CORPUS / name
    text = path.read_text()
    try:
        ours: ConfigValues | None = parse_config(text, str(path))
    except ConfigError as err:
        assert "\n" not in str(err) and str(path) in str(err), err
        ours = None
    theirs = xl.file(path, keys_of(text, ours))
    found = set()
    if theirs is None:
        found.add("xl refuses the file")
    if ours is None:
        found.add("pvhvm refuses the file")
    if theirs is None or ours is None:
        return found
    for key, reading in theirs.keys.items():
        agree = (
            same_value(ours.values[key], reading) if key in ours.values
            else "missing" in reading
        )
        if not agree:
            found.add(f"key {key}")
    for item in theirs.disks:
        expected = None if item.get("refused") else {
            k: item[k] for k in ("vdev", "target", "format", "readwrite", "cdrom", "script",
                                 "backend", "backendtype")
        }
        if disk_reading(item["spec"]) != expected:
            found.add(f"disk {item['disk']}")
    return found


def test_the_corpus_is_whole() -> None:
    assert len(FILES) >= 30
    assert set(DOCUMENTED_CHOICES) <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_reads_as_xl_reads_it(xl: XlParser, name: str) -> None:
    expected, _reason = DOCUMENTED_CHOICES.get(name, (frozenset(), ""))
    if name.startswith("both-refuse-"):
        expected = frozenset({"xl refuses the file", "pvhvm refuses the file"})
    assert differences(xl, name) == expected


def test_refused_disks_in_accepted_files_are_refused_by_both(xl: XlParser) -> None:
    """xl-refused-disks.cfg: xl reads the file; both refuse its 1st and 3rd disks."""
    path = CORPUS / "xl-refused-disks.cfg"
    theirs = xl.file(path, ["disk"])
    assert theirs is not None
    assert [bool(d.get("refused")) for d in theirs.disks] == [True, False, True]
    specs = parse_config(path.read_text(), str(path)).values["disk"]
    assert [disk_reading(s) is None for s in specs] == [True, False, True]


XL_READS = [n for n in FILES if not n.startswith("both-refuse-")
            and "xl refuses the file" not in DOCUMENTED_CHOICES.get(n, (frozenset(), ""))[0]]


@pytest.mark.parametrize("name", [n for n in XL_READS if "vif" in (CORPUS / n).read_text()])
def test_vifs_read_and_rates_as_xl(xl: XlParser, name: str) -> None:
    """Every vif= entry pvhvm reads; each rate= gives libxlutil's bytes,usecs (xl's own vif
    parser lives in xl, not libxlutil: the rate is the part the peer can read)."""
    path = CORPUS / name
    theirs = xl.file(path, ["vif"])
    assert theirs is not None
    for entry in theirs.keys["vif"]["list"]:
        vif = parse_vif(entry)
        if vif.rate is not None:
            rate = parse_rate(vif.rate)
            assert xl.rate(vif.rate) == (rate.bytes_per_interval, rate.interval_usecs)
