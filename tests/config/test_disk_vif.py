"""disk= and vif= spec grammar (xl-disk-configuration(5), xend form, and type=)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.config.disk import (
    EMPTY_FORMAT,
    FORMATS,
    Access,
    DiskSpec,
    format_disk,
    network_url,
    parse_disk,
)
from pvhvm.config.vif import (
    IFNAME_KEYS,
    INT_KEYS,
    STRING_KEYS,
    Rate,
    VifSpec,
    format_vif,
    parse_rate,
    parse_vif,
)
from pvhvm.errors import SpecError
from pvhvm.plan.types import DeviceClass, DeviceKind, default_registry


@pytest.mark.parametrize(
    "spec",
    [
        "/dev/vg/guest-volume,,hda",
        "/dev/vg/guest-volume,raw,hda,rw",
        "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
        "raw:/dev/vg/guest-volume,hda,w",
        "phy:/dev/vg/guest-volume,hda,w",
        "file:/dev/vg/guest-volume,hda,w",
        "/dev/vg/guest-volume,hda,w",
    ],
)
def test_equivalent_spellings(spec: str) -> None:
    disk = parse_disk(spec)
    assert (disk.target, disk.vdev, disk.format, disk.access, disk.cdrom, disk.type) == (
        "/dev/vg/guest-volume", "hda", "raw", Access.RW, False, None,
    )


def test_cdrom_spellings() -> None:
    for spec in ("/root/image.iso,,hdc,cdrom", "/root/image.iso,,hdc,devtype=cdrom",
                 "file:/root/image.iso,hdc:cdrom,r", "vdev=hdc:cdrom,target=/root/image.iso"):
        disk = parse_disk(spec)
        assert (disk.target, disk.vdev, disk.cdrom, disk.access) == (
            "/root/image.iso", "hdc", True, Access.RO,
        )


def test_empty_cdrom() -> None:
    disk = parse_disk(",hdc:cdrom,r")
    assert disk.is_empty and disk.cdrom and disk.vdev == "hdc" and disk.access is Access.RO


# Xen's tools/xl/check-xl-disk-parse: each group of spellings and the one reading xl gives
# them all (pdev_path, vdev, format, readwrite, is_cdrom, script). The test data is ours,
# written from that script's cases; xl's multi-argument form (block-attach A B C) is joined
# with commas, as a disk= entry writes it.
XL_DISK_VECTORS = [
    (
        ("/dev/vg/guest-volume", "hda", "raw", Access.RW, False, None),
        ["/dev/vg/guest-volume,,hda", "/dev/vg/guest-volume,raw,hda,rw",
         "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
         "format=raw,vdev=hda,access=rw,target=/dev/vg/guest-volume",
         "raw:/dev/vg/guest-volume,hda,w"],
    ),
    (
        ("/root/image.iso", "hdc", "raw", Access.RO, True, None),
        ["/root/image.iso,,hdc,cdrom", "/root/image.iso,,hdc,,cdrom",
         "/root/image.iso,raw,hdc,devtype=cdrom",
         "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
         "format=raw,vdev=hdc,access=ro,devtype=cdrom,target=/root/image.iso",
         "raw:/root/image.iso,hdc:cdrom,ro",
         # a cdrom given w is read-only, as libxlutil makes it
         "/root/image.iso,raw,hdc:cdrom,w", "/root/image.iso,,hdc,w,cdrom"],
    ),
    (
        ("/dev/vg/guest-volume", "xvdb", "raw", Access.RW, False, None),
        ["backendtype=phy,vdev=xvdb,access=w,target=/dev/vg/guest-volume"],
    ),
    (
        ("", "hdc", EMPTY_FORMAT, Access.RO, True, None),
        ["devtype=cdrom,,,hdc", ",,hdc:cdrom,r", ",hdc:cdrom,r",
         "vdev=hdc,access=r,devtype=cdrom,target=", ",empty,hdc:cdrom,r",
         "vdev=hdc,access=r,devtype=cdrom,format=empty", "vdev=hdc,access=r,devtype=cdrom",
         ",,hdc:cdrom,w", "cdrom,vdev=hdc"],
    ),
    (
        ("iqn.2001-05.com.example:0-8a0906-guest", "xvda", "raw", Access.RW, False,
         "block-iscsi"),
        ["iscsi:iqn.2001-05.com.example:0-8a0906-guest,xvda,w",
         "vdev=xvda,access=w,script=block-iscsi,target=iqn.2001-05.com.example:0-8a0906-guest"],
    ),
    (
        ("app01", "hda", "raw", Access.RW, False, "block-drbd"),
        ["drbd:app01,hda,w"],
    ),
    (
        ("/some/disk/image.raw", "hda", "raw", Access.RW, False, None),
        ["discard,vdev=hda,target=/some/disk/image.raw",
         "trusted,vdev=hda,target=/some/disk/image.raw",
         "untrusted,vdev=hda,target=/some/disk/image.raw",
         "/some/disk/image.raw,raw,hda,w,devtype=disk", "/some/disk/image.raw,,hda:disk,w",
         "/some/disk/image.raw,raw,hda,access="],
    ),
    (
        ("/some/disk/image.iso", "hda", "raw", Access.RO, True, None),
        ["cdrom,no-discard,vdev=hda,target=/some/disk/image.iso"],
    ),
]


@pytest.mark.parametrize(
    ("expected", "spec"), [(want, spec) for want, specs in XL_DISK_VECTORS for spec in specs]
)
def test_check_xl_disk_parse_vectors(
    expected: tuple[str, str, str, Access, bool, str | None], spec: str
) -> None:
    disk = parse_disk(spec)
    assert (disk.target, disk.vdev, disk.format, disk.access, disk.cdrom, disk.script) == expected


@pytest.mark.parametrize(
    ("spec", "url"),
    [
        ("format=raw,vdev=xvda,target=rbd:pool/guest", "rbd:pool/guest"),
        ("rbd:pool/guest@snap,raw,xvda,w", "rbd:pool/guest@snap"),
        ("vdev=xvda,target=rbd:pool/guest:id=admin", "rbd:pool/guest:id=admin"),
        ("vdev=xvda,target=nbd://10.0.0.1:10809/guest", "nbd://10.0.0.1:10809/guest"),
        # xl's reading: prefix nbd -> script block-nbd, target //host/export
        ("nbd://10.0.0.1/guest,xvda,w", "nbd://10.0.0.1/guest"),
        ("nbd:10.0.0.1:10809,xvda,w", "nbd:10.0.0.1:10809"),
        ("iscsi://10.0.0.2/iqn.2001-04.com.example:store/1,xvdb,w",
         "iscsi://10.0.0.2/iqn.2001-04.com.example:store/1"),
        ("vdev=hdc:cdrom,target=https://mirror.example/debian.iso",
         "https://mirror.example/debian.iso"),
        ("vdev=xvda,target=nbd+unix:///guest?socket=/run/nbd.sock",
         "nbd+unix:///guest?socket=/run/nbd.sock"),
    ],
)
def test_network_targets(spec: str, url: str) -> None:
    disk = parse_disk(spec)
    assert disk.is_network and disk.network_url == url


@pytest.mark.parametrize(
    "spec",
    ["/var/lib/xen/guest.img,raw,xvda,w", "iscsi:iqn.2001-04.com.example:store,xvdb,w",
     "drbd:r0,xvda,w", "vdev=xvda,target=./rbd:odd-file-name", "/x,raw,xvda,w,script=block-nbd",
     "vdev=xvda,target=unknown://host/x"],
)
def test_not_network_targets(spec: str) -> None:
    assert not parse_disk(spec).is_network


def test_target_keyword_is_literal() -> None:
    """xl-disk-configuration(5): target= is the rest of the spec, taken literally."""
    disk = parse_disk("vdev=xvda,target=nbd:10.0.0.1:10809")
    assert (disk.target, disk.prefix, disk.script) == ("nbd:10.0.0.1:10809", None, None)
    assert disk.network_url == "nbd:10.0.0.1:10809"
    assert parse_disk("vdev=xvda,target=/srv/a:b,c").target == "/srv/a:b,c"


def test_network_url_needs_a_name() -> None:
    assert network_url("rbd:") is None and network_url("nbd:", None) is None


def test_type_token_and_ioemu_prefix() -> None:
    assert parse_disk("phy:/dev/sdb,hda,w,type=xenbus").type == "xenbus"
    assert parse_disk("/img,raw,xvda,rw,type=ioemu").type == "ioemu"
    assert parse_disk("file:/img,ioemu:hda,w").type == "ioemu"
    assert parse_disk("file:/img,ioemu:hda,w,type=ioemu").type == "ioemu"
    assert parse_disk("vdev=ioemu:hdb,target=/x").type == "ioemu"


def test_prefixes() -> None:
    assert parse_disk("tap:aio:/img,xvda,w").prefix == "tap:aio"
    assert parse_disk("tap:qcow2:/img,xvda,w").format == "qcow2"
    assert parse_disk("qcow:/img,xvda,w").format == "qcow"
    iscsi = parse_disk("iscsi:iqn.2001-04.com.example:storage,xvdb,w")
    assert iscsi.script == "block-iscsi" and iscsi.is_script_backed
    assert iscsi.target == "iqn.2001-04.com.example:storage"
    assert parse_disk("drbd:res0,xvda,w").script == "block-drbd"
    assert parse_disk("phy:vg/lv,xvda,w").target == "/dev/vg/lv"


def test_modes_and_backend() -> None:
    assert parse_disk("phy:/dev/x,xvda,r").access is Access.RO
    assert parse_disk("phy:/dev/x,xvda,w!").access is Access.RW_SHARED
    assert parse_disk("phy:/dev/x,xvda,w,backend0").backend == "backend0"
    assert parse_disk("/x,raw,xvda,ro,backend=dd").backend == "dd"


def test_target_eats_the_rest() -> None:
    disk = parse_disk("vdev=xvda,format=raw,target=/a,b=c,d")
    assert disk.target == "/a,b=c,d"


def test_flags() -> None:
    d = parse_disk("/x,raw,xvda,rw,no-discard,untrusted,direct-io-safe")
    assert (d.discard, d.trusted, d.direct_io_safe) == (False, False, True)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("/img,hda,w,type=xenbus,type=ioemu", "type given twice"),
        ("file:/img,ioemu:hda,w,type=xenbus", "disagrees with the ioemu: prefix"),
        ("/img,foo,hda", "format 'foo' is unknown"),
        ("/img,raw,hda,x", "access mode 'x'"),
        ("/img,raw,hda,w,extra", "too many positional"),
        ("phy:/x,hda,w,0,9", "too many positional"),
        ("", "empty disk spec"),
        ("vdev=hda,bogus=1,target=/x", "unknown parameter 'bogus'"),
        ("/img,raw", "no virtual device"),
        ("/img,raw,hda,rw,format=qcow2", "format given twice"),
        ("/img,raw,hda,rw,vdev=hdb", "vdev given twice"),
        ("/img,raw,hda,rw,devtype=floppy", "devtype='floppy'"),
        (",,hda", "only a cdrom drive may be empty"),
        ("vdev=xvda,target=phy:/dev/vg/lv", "target= is taken literally, and phy: is a "
         "deprecated prefix only a leading positional target may have"),
        ("vdev=xvda,target=iscsi:iqn.2001-04.com.example:x", "target= is taken literally"),
        ("vdev=hda,format=empty", "only a cdrom drive may be empty"),
        ("/x.iso,empty,hdc,r,cdrom", "format=empty is an empty drive, but target"),
        ("/x,raw,hda:floppy,w", "only an ioemu: prefix and a :cdrom or :disk suffix"),
        ("cdrom,devtype=disk,vdev=hdc,target=/x", "devtype given twice"),
        ("/img,raw,hda,rw,backendtype=nfs", "backendtype='nfs'"),
        ("/img,raw,hda,rw,type=", "type= needs a value"),
        ("/img,raw,hd:a,rw", "only an ioemu: prefix"),
        ("/img,raw,ioemu:,rw", "virtual device name is empty"),
        ("qcow2:/img,xvda,w,format=raw", "format given twice"),
    ],
)
def test_refused(spec: str, words: str) -> None:
    with pytest.raises(SpecError, match=None) as info:
        parse_disk(spec)
    assert words in str(info.value)
    assert repr(spec) in str(info.value)


@given(st.text(max_size=80))
def test_disk_parser_raises_only_spec_error(text: str) -> None:
    try:
        parse_disk(text)
    except SpecError:
        pass


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-", min_size=1, max_size=12)
_target = st.one_of(st.just(""), _word.map(lambda w: "/" + w), st.text(
    alphabet="abc/,=:_", min_size=1, max_size=12).map(lambda w: "/" + w),
    st.sampled_from(["rbd:pool/img:id=admin", "nbd://10.0.0.1:10809/e", "nbd:h:10809",
                     "https://h/x,y.iso", "iscsi://h/iqn.2001-04.x:y/1"]))


@st.composite
def disks(draw: st.DrawFn) -> DiskSpec:
    prefix = draw(st.sampled_from([None, "phy", "file", "tap:aio", "raw", "qcow2", "iscsi"]))
    fmt = draw(st.sampled_from(FORMATS))
    script = draw(st.sampled_from([None, "block-foo"]))
    if prefix in ("raw", "qcow2"):
        fmt = prefix
    if prefix == "iscsi":
        script = "block-iscsi"
    cdrom = draw(st.booleans())
    target = draw(_target) if prefix is None else "/" + draw(_word)
    if not cdrom and not target:
        target = "/" + draw(_word)  # only a cdrom drive may be empty
    return DiskSpec(
        vdev=draw(st.sampled_from(["hda", "hdd", "xvda", "xvdq1", "sdb", "xvdaa"])),
        target=target,
        format=EMPTY_FORMAT if not target else fmt,
        # libxlutil makes every cdrom read-only
        access=Access.RO if cdrom else draw(st.sampled_from(list(Access))),
        cdrom=cdrom,
        type=draw(st.sampled_from([None, "ioemu", "xenbus", "virtio"])),
        prefix=prefix,
        script=script,
        backend=draw(st.sampled_from([None, "0", "driverdom"])),
        backendtype=draw(st.sampled_from([None, "phy", "qdisk"])),
        discard=draw(st.sampled_from([None, True, False])),
        trusted=draw(st.sampled_from([None, True, False])),
        direct_io_safe=draw(st.booleans()),
    )


@given(disks())
def test_format_then_parse_is_identity(disk: DiskSpec) -> None:
    assert parse_disk(format_disk(disk)) == disk


@given(disks())
def test_network_url_survives_the_round_trip(disk: DiskSpec) -> None:
    assert parse_disk(format_disk(disk)).network_url == disk.network_url


@given(disks())
def test_parse_format_parse_is_stable(disk: DiskSpec) -> None:
    once = parse_disk(format_disk(disk))
    assert parse_disk(format_disk(once)) == once


# --- vif ---------------------------------------------------------------------------------


def test_vif_default_and_keys() -> None:
    assert parse_vif("") == VifSpec()
    vif = parse_vif("mac=00:16:3E:01:02:03, bridge=br0, type=ioemu, model=e1000")
    assert vif == VifSpec(mac="00:16:3e:01:02:03", bridge="br0", type="ioemu", model="e1000")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("colour=blue", "unknown key 'colour'"),
        ("mac=00:16:3e:01:02", "not six hex octets"),
        ("mac=01:16:3e:01:02:03", "multicast"),
        ("mac=00:00:00:00:00:00", "all zeros"),
        ("bridge", "not key=value"),
        ("bridge=a,bridge=b", "bridge given twice"),
        ("bridge=", "needs a value"),
    ],
)
def test_vif_refused(spec: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_vif(spec)
    assert words in str(info.value)


@given(st.one_of(
    st.text(max_size=60),
    st.lists(st.builds(lambda key, value: f"{key}={value}",
                       st.sampled_from([*STRING_KEYS, *INT_KEYS, "netdev"]),
                       st.text(max_size=14)), max_size=3).map(",".join),
))
def test_vif_parser_raises_only_spec_error(text: str) -> None:
    try:
        parse_vif(text)
    except SpecError:
        pass


_value = (
    st.text(alphabet="abcdefghij0123456789._-/ ", min_size=1, max_size=10)
    .map(str.strip)
    .filter(bool)
)


#: interface names (bridge=, vifname=, ...): no white space or '/' (IFNAMSIZ rules)
_ifname = st.text(alphabet="abcdefghij0123456789._-", min_size=1, max_size=10).filter(
    lambda name: name not in (".", ".."))


@given(
    st.fixed_dictionaries(
        {}, optional={k: _ifname if k in IFNAME_KEYS else _value
                      for k in STRING_KEYS if k not in ("mac", "rate")}
    ),
    st.fixed_dictionaries({}, optional={k: st.integers(68, 9000) for k in INT_KEYS}),
    st.sampled_from([None, "00:16:3e:aa:bb:cc"]),
    st.sampled_from([None, "10MB/s", "100Mb/s@20ms"]),
    st.sampled_from([None, True, False]),
)
def test_vif_round_trip(
    fields: dict[str, str], numbers: dict[str, int], mac: str | None, rate: str | None,
    trusted: bool | None,
) -> None:
    vif = VifSpec(mac=mac, rate=rate, trusted=trusted, **fields, **numbers)  # type: ignore[arg-type]
    assert parse_vif(format_vif(vif)) == vif


def test_vif_keys_of_xl_network_configuration() -> None:
    """Every keyword of xl-network-configuration(5) (4.17), typed."""
    vif = parse_vif(
        "mac=00:16:3e:01:02:03,bridge=xenbr0,gatewaydev=eth0,type=vif,model=pcnet,"
        "vifname=guest-eth0,script=vif-route,ip=10.0.0.2 10.0.0.3,backend=netdom,"
        "rate=10240KB/s,devid=4,mtu=9000,untrusted,forwarddev=eth1,accel=netfront"
    )
    assert vif == VifSpec(
        mac="00:16:3e:01:02:03", bridge="xenbr0", gatewaydev="eth0", type="vif",
        model="pcnet", vifname="guest-eth0", script="vif-route", ip="10.0.0.2 10.0.0.3",
        backend="netdom", rate="10240KB/s", devid=4, mtu=9000, trusted=False,
        forwarddev="eth1", accel="netfront",
    )
    assert parse_vif("netdev=eth0").gatewaydev == "eth0"  # xl's deprecated spelling
    assert parse_vif("trusted").trusted is True


def test_vif_types_of_xm_and_xl_mean_pv() -> None:
    registry = default_registry()
    for name in ("vif", "netfront", "xenbus"):
        assert registry.resolve(parse_vif(f"type={name}").type or "", DeviceClass.NIC) is (
            DeviceKind.XENBUS)
    assert registry.resolve("ioemu", DeviceClass.NIC) is DeviceKind.IOEMU
    with pytest.raises(SpecError, match="not a disk type"):
        registry.resolve("netfront", DeviceClass.DISK)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("mtu=jumbo", "mtu='jumbo' is not a whole number"),
        ("mtu=20", "mtu=20 is out of range (68..65535)"),
        ("mtu=\u00b2", "is not a whole number"),
        ("devid=-1", "devid='-1' is not a whole number"),
        ("rate=fast", "rate 'fast': not a rate"),
        ("rate=10MB", "rate '10MB': not a rate"),
        ("rate=0MB/s", "the rate is zero"),
        ("rate=10MB/s@soon", "interval is not a time"),
        ("rate=@20ms", "no rate given"),
        ("trusted,untrusted", "trusted/untrusted given twice"),
        ("gatewaydev=a,netdev=b", "gatewaydev given twice"),
        ("colo_sock_mirror_id=1", "unknown key 'colo_sock_mirror_id'"),
    ],
)
def test_vif_values_refused(spec: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_vif(spec)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        # xl-network-configuration(5)'s own examples, and the issue's
        ("10Mb/s", Rate(62_500, 50_000)),
        ("250KB/s", Rate(12_500, 50_000)),
        ("1MB/s@20ms", Rate(20_000, 20_000)),
        ("10240KB/s", Rate(512_000, 50_000)),
        ("1GB/s@1s", Rate(1_000_000_000, 1_000_000)),
        ("100b/s@2", Rate(24, 2_000_000)),  # 100 bits/s is 12 whole bytes/s
        ("8B/s@100us", Rate(0, 100)),
        ("010KB/s", Rate(400, 50_000)),  # C's strtoull base 0: 010 is octal 8
    ],
)
def test_rate_as_libxlutil_reads_it(rate: str, expected: Rate) -> None:
    assert parse_rate(rate) == expected
    assert expected.backend_value() == f"{expected.bytes_per_interval},{expected.interval_usecs}"


# --- xl-only syntax: the evidence of an xl file (issue 20) -----------------------------


@settings(deadline=None)
@given(disks())
def test_xls_canonical_form_is_always_xl_evidence(disk: DiskSpec) -> None:
    assert parse_disk(format_disk(disk)).xl_only is not None


@settings(deadline=None)
@given(st.sampled_from(["phy", "file", "tap:aio", "raw", "qcow2"]), _word,
       st.sampled_from(["hda", "xvdb", "sdc", "hdc:cdrom"]), st.sampled_from(["r", "w", "w!"]),
       st.sampled_from(["", ",type=ioemu", ",type=xenbus"]))
def test_xends_form_is_no_xl_evidence(prefix: str, target: str, vdev: str, mode: str,
                                       type_: str) -> None:
    """``prefix:target,vdev[:cdrom],mode`` is what xend read (type= is the RFC's own)."""
    spec = parse_disk(f"{prefix}:/{target},{vdev},{mode}{type_}")
    assert spec.xl_only is None


@pytest.mark.parametrize(
    ("spec", "evidence"),
    [("/dev/vg/x,raw,xvda,rw", "positional form"), ("/w.iso,,hdc,cdrom", "the flag 'cdrom'"),
     ("vdev=xvda, target=/x", "vdev="), ("phy:/x,xvda,w,backendtype=phy", "backendtype="),
     (",hdc:cdrom,r", None), ("file:/x,ioemu:hda,w", None)],
)
def test_disk_xl_evidence(spec: str, evidence: str | None) -> None:
    found = parse_disk(spec).xl_only
    assert (found is None) if evidence is None else (found is not None and evidence in found)


@pytest.mark.parametrize(
    ("spec", "evidence"),
    [("devid=2", "devid="), ("mtu=9000", "mtu="), ("type=vif", "type=vif"),
     ("gatewaydev=eth0", "gatewaydev="), ("untrusted", "untrusted"),
     ("bridge=br0,model=e1000,type=ioemu", None), ("type=netfront", None), ("", None)],
)
def test_vif_xl_evidence(spec: str, evidence: str | None) -> None:
    assert parse_vif(spec).xl_only == evidence
