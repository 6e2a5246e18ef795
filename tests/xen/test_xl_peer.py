"""pvhvm's disk grammar and xl.cfg export checked against Xen's own parsers (libxlutil)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvhvm.config.disk import FORMATS, Access, DiskSpec, format_disk, parse_disk
from pvhvm.config.domain import config_from_text
from pvhvm.config.vif import parse_rate
from pvhvm.errors import SpecError
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.xen.xenbus import domain_entries
from tests.config.test_disk_vif import XL_DISK_VECTORS
from tests.xen.conftest import XlParser

ROOT = Path(__file__).resolve().parents[2]


def ours(spec: str) -> dict[str, str]:
    """pvhvm's reading of ``spec`` in xlparse's terms."""
    disk = parse_disk(spec)
    return {
        "vdev": disk.vdev,
        "target": disk.target,
        "format": disk.format,
        "readwrite": "1" if disk.access.writable and not disk.cdrom else "0",
        "cdrom": "1" if disk.cdrom else "0",
        "script": disk.script or "",
        "backend": disk.backend or "",
    }


AGREED = [
    "/dev/vg/guest-volume,,hda",
    "/dev/vg/guest-volume,raw,hda,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
    "raw:/dev/vg/guest-volume,hda,w",
    "phy:/dev/vg/lv,hda,w",
    "file:/var/img/a.img,xvda,w",
    "tap:aio:/var/img/a.img,xvda,w",
    "tap:qcow2:/var/img/a.qcow2,xvdb,r",
    "qcow2:/var/img/a.qcow2,xvdb,r",
    "/root/image.iso,,hdc,cdrom",
    "file:/root/image.iso,hdc:cdrom,r",
    ",hdc:cdrom,r",
    "iscsi:iqn.2001-04.com.example:storage,xvdb,w",
    "drbd:r0,xvdc,w",
    "/var/img/a.img,raw,xvda,rw,script=block-nbd",
    "/var/img/a.img,qcow2,sdb,ro",
    "vdev=xvda,format=raw,access=rw,target=/a,b=c",
    "/var/img/a.img,raw,xvda,rw,backend=driverdom",
    "/var/img/a.img,vhd,xvde,rw,no-discard,direct-io-safe",
]


@pytest.mark.parametrize("spec", AGREED)
def test_same_reading_as_xl(xl: XlParser, spec: str) -> None:
    assert xl.disk(spec) == ours(spec)


#: spellings of check-xl-disk-parse that Debian's libxlutil 4.17 does not know yet
NEWER_THAN_DEBIANS_XL = ("trusted", "untrusted")


@pytest.mark.parametrize(
    "spec", [spec for _, specs in XL_DISK_VECTORS for spec in specs
             if not spec.startswith(NEWER_THAN_DEBIANS_XL)],
)
def test_check_xl_disk_parse_vectors_read_as_xl(xl: XlParser, spec: str) -> None:
    assert xl.disk(spec) == ours(spec)


@pytest.mark.parametrize(
    "parts",
    [["format=raw", "vdev=hda", "access=rw", "target=/dev/vg/guest-volume"],
     ["format=raw", "vdev=hdc", "access=ro", "devtype=cdrom", "target=/root/image.iso"],
     ["discard", "vdev=hda", "target=/some/disk/image.raw"],
     ["cdrom", "no-discard", "vdev=hda", "target=/some/disk/image.iso"]],
)
def test_block_attach_argument_form(xl: XlParser, parts: list[str]) -> None:
    """check-xl-disk-parse also gives a spec as several arguments (xl block-attach A B C);
    a disk= entry writes the same items joined with commas."""
    proc = xl.run("disk", *parts)
    assert proc.returncode == 0, proc.stderr
    assert dict(line.split("=", 1) for line in proc.stdout.splitlines()) == ours(",".join(parts))


@pytest.mark.parametrize(
    "spec",
    ["vdev=xvda,target=rbd:pool/guest:id=admin", "vdev=xvda,target=nbd://10.0.0.1/guest",
     "nbd://10.0.0.1/guest,xvda,w", "nbd:10.0.0.1:10809,xvda,w",
     "iscsi://10.0.0.2/iqn.2001-04.com.example:store/1,xvdb,w",
     "vdev=hdc,devtype=cdrom,target=https://mirror.example/debian.iso"],
)
def test_network_targets_read_as_xl(xl: XlParser, spec: str) -> None:
    """xl reads the same target and script; pvhvm also knows it is a network disk."""
    assert xl.disk(spec) == ours(spec)
    assert parse_disk(spec).is_network


@pytest.mark.parametrize(
    "spec",
    ["rbd:pool/guest:id=admin,raw,xvda,w", "iscsi://10.0.0.2/iqn.x/1,raw,xvda",
     "/img,empty,hda:cdrom,w,format=raw"],
)
def test_both_refuse_more(xl: XlParser, spec: str) -> None:
    assert xl.disk(spec) is None
    with pytest.raises(SpecError):
        parse_disk(spec)


@pytest.mark.parametrize(
    "spec",
    ["/img,foo,hda", "/img,raw,hda,x", "a,b,c,d,e", "vdev=hda,bogus=1,target=/x",
     "/img,raw,hda,rw,format=qcow2", "/img,raw,hda,rw,devtype=floppy",
     "/img,raw,hda,rw,vdev=hdb", "qcow2:/img,xvda,w,format=raw"],
)
def test_both_refuse(xl: XlParser, spec: str) -> None:
    assert xl.disk(spec) is None
    with pytest.raises(SpecError):
        parse_disk(spec)


def test_known_differences(xl: XlParser) -> None:
    """Where pvhvm deliberately differs from xl (documented in config/disk.py)."""
    # type= is the RFC's extension: xl refuses it.
    assert xl.disk("/img,raw,xvda,rw,type=xenbus") is None
    assert parse_disk("/img,raw,xvda,rw,type=xenbus").type == "xenbus"
    # The xend form without a prefix: xl reads "hda" as a format and refuses.
    assert xl.disk("/img,hda,w") is None
    assert parse_disk("/img,hda,w").vdev == "hda"
    # xend's phy: without /dev/: pvhvm adds /dev/ as xend did; xl passes it on as is.
    xl_reading = xl.disk("phy:vg/lv,xvda,w")
    assert xl_reading is not None and xl_reading["target"] == "vg/lv"
    assert parse_disk("phy:vg/lv,xvda,w").target == "/dev/vg/lv"
    # SPEC's xend form has a 4th positional, the backend domain; xl 4.17 refuses it.
    assert xl.disk("phy:/dev/sdb,xvda,w,driverdom") is None
    assert parse_disk("phy:/dev/sdb,xvda,w,driverdom").backend == "driverdom"
    # trusted/untrusted are newer xl flags (SPEC lists them); xl 4.17 does not know them.
    assert xl.disk("/var/img/a.img,raw,xvda,rw,untrusted") is None
    assert parse_disk("/var/img/a.img,raw,xvda,rw,untrusted").trusted is False
    # xend's w! (share a writable image on purpose): xl knows only r/ro/w/rw.
    assert xl.disk("/img,raw,xvda,w!") is None
    assert parse_disk("/img,raw,xvda,w!").access is Access.RW_SHARED
    # Blanks around items: xl reads "raw " as an unknown format; pvhvm strips them.
    assert xl.disk("/img , raw , xvda , w") is None
    assert parse_disk("/img , raw , xvda , w").format == "raw"
    # libxlutil accepts what libxl then refuses at create (libxl_device.c): an empty drive
    # that is not a cdrom, format=empty with an image. pvhvm refuses them as it parses.
    assert xl.disk(",,hda") is not None and xl.disk("/x.iso,empty,hdc,r,cdrom") is not None
    assert xl.disk("vdev=hdc,format=empty,target=/x.iso") is not None
    for spec in (",,hda", "/x.iso,empty,hdc,r,cdrom", "vdev=hdc,format=empty,target=/x.iso"):
        with pytest.raises(SpecError):
            parse_disk(spec)
    # "cdrom" then "devtype=disk": xl lets the last win; pvhvm takes each parameter once.
    assert xl.disk("cdrom,devtype=disk,vdev=hdc,target=/x") is not None
    with pytest.raises(SpecError, match="devtype given twice"):
        parse_disk("cdrom,devtype=disk,vdev=hdc,target=/x")
    # vdev=hdc:cdrom: xl keeps "hdc:cdrom" as the vdev name (libxl then cannot number it);
    # pvhvm reads the suffix as the positional form does.
    reading = xl.disk("vdev=hdc:cdrom,target=/x.iso")
    assert reading is not None and reading["vdev"] == "hdc:cdrom"
    assert parse_disk("vdev=hdc:cdrom,target=/x.iso").cdrom
    # target=phy:/dev/x: xl takes it literally (a file named "phy:/dev/x", which libxl then
    # fails to find); pvhvm refuses it in one line saying so.
    reading = xl.disk("vdev=xvda,target=phy:/dev/vg/lv")
    assert reading is not None and reading["target"] == "phy:/dev/vg/lv"
    with pytest.raises(SpecError, match="target= is taken literally"):
        parse_disk("vdev=xvda,target=phy:/dev/vg/lv")
    # A URL as a positional: xl takes "https:" for an unknown prefix and refuses; pvhvm
    # reads the target, as target= gives it.
    assert xl.disk("https://mirror.example/d.iso,raw,hdc:cdrom") is None
    assert parse_disk("https://mirror.example/d.iso,raw,hdc:cdrom").is_network


_target = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-", min_size=1,
                  max_size=16).map(lambda s: "/" + s)


@st.composite
def xl_expressible(draw: st.DrawFn) -> DiskSpec:
    cdrom = draw(st.booleans())
    return DiskSpec(
        vdev=draw(st.sampled_from(["hda", "hdd", "xvda", "xvdq", "sdb", "xvdaa", "xvda1"])),
        target=draw(st.one_of(st.just(""), _target)) if cdrom else draw(_target),
        format=draw(st.sampled_from(FORMATS)),
        access=draw(st.sampled_from([Access.RO, Access.RW])),
        cdrom=cdrom,
        script=draw(st.sampled_from([None, "block-nbd"])),
        backend=draw(st.sampled_from([None, "driverdom"])),
        discard=draw(st.sampled_from([None, True, False])),
        direct_io_safe=draw(st.booleans()),
    )


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(xl_expressible())
def test_canonical_form_is_xl_syntax(xl: XlParser, disk: DiskSpec) -> None:
    """What format_disk writes (without the type= extension) xl reads the same way."""
    text = format_disk(disk)
    reading = xl.disk(text)
    assert reading is not None, text
    assert reading == ours(text)


@pytest.mark.parametrize("example", ["pv-only.cfg", "pv-only-firmware.cfg", "default.cfg",
                                     "mixed.cfg"])
def test_exported_xl_cfg_parses_in_xl(xl: XlParser, example: str, tmp_path: Path) -> None:
    for name in ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4", "boot.img", "data.img"):
        (tmp_path / name).write_bytes(b"\0")
    exported = subprocess.run(
        [sys.executable, "-m", "pvhvm", "export-xl", str(ROOT / "examples" / example),
         f"imagedir={tmp_path}", "-o", str(tmp_path / "out.cfg")],
        capture_output=True, text=True, check=True,
    )
    assert "Traceback" not in exported.stderr
    proc = xl.run("cfg", str(tmp_path / "out.cfg"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    planned = parse_config_disks(example, tmp_path)
    assert lines.count("type=hvm") == 1
    assert sum(1 for ln in lines if ln.startswith("--- disk")) == len(planned)
    xl_vdevs = [ln.split("=", 1)[1] for ln in lines if ln.startswith("vdev=")]
    # export-xl moves an HVM guest's PV disk to an index libxl does not emulate (xvda -> xvde)
    # and names the plan's vdev in its comment: xl reads the moved name, which maps back
    moved = dict(re.findall(r"vdev=(\S+?),.*# pvhvm type=\S+ vdev=(\S+)",
                            (tmp_path / "out.cfg").read_text()))
    assert [moved.get(vdev, vdev) for vdev in xl_vdevs] == planned
    assert "vifs=" in proc.stdout


def test_exported_negative_number_parses_in_xl(xl: XlParser, tmp_path: Path) -> None:
    """libxlutil's lexer has no minus sign: export-xl quotes a negative value (the real xl
    4.17 refused a bare ``rtc_timeoffset = -3600``, tests/xen/test_real_xen.py)."""
    config = tmp_path / "neg.cfg"
    config.write_text('builder = "hvm"\nname = "neg"\nmemory = 128\nrtc_timeoffset = -3600\n')
    subprocess.run([sys.executable, "-m", "pvhvm", "export-xl", str(config), "-o",
                    str(tmp_path / "out.cfg")], capture_output=True, text=True, check=True)
    assert 'rtc_timeoffset = "-3600"' in (tmp_path / "out.cfg").read_text()
    proc = xl.run("cfg", str(tmp_path / "out.cfg"))
    assert proc.returncode == 0, proc.stderr


def parse_config_disks(example: str, imagedir: Path) -> list[str]:
    from pvhvm.config.domain import load_config

    config = load_config(ROOT / "examples" / example, {"imagedir": str(imagedir)})
    return [d.value.vdev for d in config.disks]


# --- vif rate= ---------------------------------------------------------------------------

RATES = ["10Mb/s", "250KB/s", "1MB/s@20ms", "10240KB/s", "1GB/s@1s", "100b/s@2",
         "8B/s@100us", "010KB/s", "4294967295B/s", "4294967296B/s", "0B/s", "10MB", "fast",
         "@20ms", "1MB/s@", "1MB/s@0ms", "1MB/s@4295s", "1MB/s@20m", "09KB/s", "5Gb/s@5000ms"]


@pytest.mark.parametrize("rate", RATES)
def test_rate_read_as_xl(xl: XlParser, rate: str) -> None:
    theirs = xl.rate(rate)
    try:
        parsed = parse_rate(rate)
    except SpecError:
        assert theirs is None
    else:
        assert theirs == (parsed.bytes_per_interval, parsed.interval_usecs)


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.from_regex(r"\A[0-9]{1,11}[GMK]?[Bb]/s(@[0-9]{1,8}(m|u)?s?)?\Z"))
def test_rate_property_against_xl(xl: XlParser, rate: str) -> None:
    theirs = xl.rate(rate)
    try:
        parsed = parse_rate(rate)
    except SpecError:
        assert theirs is None, rate
    else:
        assert theirs == (parsed.bytes_per_interval, parsed.interval_usecs), rate


def test_rate_backend_node_is_what_netback_reads(xl: XlParser) -> None:
    """On the xen platform the vif backend's rate node is libxl's bytes,usecs."""
    plan = make_plan(
        config_from_text('name="g"\nbuilder="hvm"\nvif=["mac=00:16:3e:00:00:09,rate=10240KB/s@20ms,type=vif"]\n',
                         "g.cfg"),
        Platform.XEN, check_files=False,
    )
    nodes = domain_entries(plan, 2).as_dict()
    bytes_per_interval, usecs = xl.rate("10240KB/s@20ms") or (0, 0)
    assert nodes["/local/domain/0/backend/vif/2/0/rate"] == f"{bytes_per_interval},{usecs}"
    assert nodes["/local/domain/0/backend/vif/2/0/rate"] == "204800,20000"


# --- differential: random specs from xl's vocabulary -------------------------------------

#: why pvhvm refuses a spec libxlutil accepts (pvhvm's message says which)
PVHVM_STRICTER = {
    "given twice": "each parameter at most once, even in two spellings or with the same "
                   "value (xl lets the last win or allows the same value again)",
    "format=empty is an empty drive, but target": "libxl refuses it at create",
    "only a cdrom drive may be empty": "libxl refuses it at create (empty but not cdrom)",
    "no virtual device given": "libxlutil keeps an empty vdev that libxl cannot number",
    "target= is taken literally": "xl would look for a file named after the prefix",
}
_TARGETS = ["/img", "", "phy:/dev/x", "file:/x.img", "raw:/x", "qcow2:/x", "iscsi:iqn.x:y",
            "nbd://h/e", "rbd:p/i", "tap:aio:/t"]
_KEYWORDS = ["format=raw", "format=qcow2", "format=empty", "vdev=hdb", "access=r", "access=w",
             "devtype=cdrom", "devtype=disk", "backendtype=phy", "backendtype=qdisk",
             "backend=dd", "script=block-x", "cdrom", "discard", "no-discard",
             "direct-io-safe"]


@st.composite
def xl_vocabulary_specs(draw: st.DrawFn) -> str:
    keywords = draw(st.lists(st.sampled_from(_KEYWORDS), max_size=3, unique=True))
    if draw(st.booleans()) and draw(st.booleans()):
        return ",".join([*keywords, "target=" + draw(st.sampled_from(_TARGETS))])
    slots = draw(st.sampled_from([
        [["", "raw", "qcow2", "empty"], ["hda", "hdc:cdrom", "xvda", "xvdb:disk", "sdb"],
         ["", "r", "ro", "w", "rw"]],
        [["hda", "hdc:cdrom", "xvda", "xvdb:disk", "sdb"], ["", "r", "ro", "w", "rw"]],
    ]))
    positionals = [draw(st.sampled_from(_TARGETS))]
    positionals += [draw(st.sampled_from(s)) for s in slots[: draw(st.integers(0, len(slots)))]]
    return ",".join([*positionals, *keywords])


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(xl_vocabulary_specs())
def test_random_specs_read_as_xl_or_a_documented_choice(xl: XlParser, spec: str) -> None:
    theirs = xl.disk(spec)
    try:
        mine: dict[str, str] | None = ours(spec)
    except SpecError as err:
        mine = None
        why = str(err)
    if theirs is not None and mine is not None:
        assert theirs == mine, spec
    elif theirs is not None:  # pvhvm refuses what xl accepts: a documented choice
        assert any(words in why for words in PVHVM_STRICTER), why
    elif mine is not None:  # xl refuses what pvhvm accepts: a documented choice
        message = xl.run("disk", spec).stderr
        items = spec.split(",")
        if "unknown value for format" in message:
            # the xend form without a prefix: the second positional names a disk
            assert items[1] in ("hda", "hdc:cdrom", "xvda", "xvdb:disk", "sdb"), spec
            assert parse_disk(spec).prefix is None, spec
        else:
            # xl counts an empty positional format as raw, so a later format= respecifies
            # it; to pvhvm an empty positional is one not given
            assert "format respecified" in message and items[1] == "", (spec, message)
