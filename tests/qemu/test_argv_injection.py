"""Issue 18, "one way onto QEMU's command line": no config key or libvirt XML field can add an
option to QEMU's command line.

For every config key and XML field that reaches argv, arbitrary strings (commas, ``=``,
spaces, NUL, newlines, unicode) either get the config refused with one InputError line, or
become exactly one option value: the argv is read back with a QemuOpts splitter written here
(single commas split, ``,,`` is a comma), every option string has exactly the keys pvhvm
writes for that option, and the value under test reads back as what was given. Then the
reproductions of the issue, and real QEMU opening nasty-but-valid paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pvhvm.config.disk import network_url
from pvhvm.config.domain import config_from_text
from pvhvm.errors import ConfigError, InputError
from pvhvm.libvirt.read import config_from_xml
from pvhvm.plan.plan import EMULATED_NIC_MODELS, make_plan
from pvhvm.qemu.argv import ArgvOptions, RunPaths, qemu_argv
from pvhvm.qemu.qmp import connect

PATHS = RunPaths(
    qmp_socket=Path("/run/pvhvm/g/qmp.sock"), control_socket=Path("/run/pvhvm/g/ctl.sock"),
    console_socket=Path("/run/pvhvm/g/console.sock"),
    console_log=Path("/var/log/pvhvm/g.console.log"),
)
SECRET = Path("/run/pvhvm/g/vnc,secret")
HVM = 'name = "g"\nbuilder = "hvm"\n'

# --- the reader: argv back into options, as QEMU reads them ------------------------------

#: options whose value QemuOpts parses: (allowed heads or None for no head, allowed keys)
_DEVICES = frozenset({
    "pvpanic", "virtio-balloon-pci", "VGA", "cirrus-vga", "usb-kbd", "usb-mouse", "usb-tablet",
    "intel-hda", "hda-duplex", "AC97", "sb16", "ES1370", "pci-bridge", "pcie-root-port",
    "ide-hd", "ide-cd", "virtio-blk-pci", "virtio-net-pci", *EMULATED_NIC_MODELS,
})
SCHEMA: dict[str, tuple[frozenset[str] | None, frozenset[str]]] = {
    "-name": (None, frozenset({"guest", "debug-threads"})),
    "-machine": (frozenset({"pc", "q35"}), frozenset({"sata", "smbus", "acpi", "hpet"})),
    "-smp": (frozenset(str(n) for n in range(1, 256)), frozenset({"maxcpus"})),
    "-chardev": (frozenset({"socket", "pty", "null", "file"}), frozenset({
        "id", "path", "server", "wait", "logfile", "logappend", "host", "port", "append"})),
    "-mon": (None, frozenset({"chardev", "mode"})),
    "-device": (_DEVICES, frozenset({
        "id", "drive", "bus", "unit", "bootindex", "num-queues", "queue-size", "iothread",
        "netdev", "mac", "host_mtu", "romfile", "chassis_nr", "chassis", "slot", "audiodev"})),
    "-drive": (None, frozenset({"id", "if", "media", "file", "format", "cache", "aio",
                                "readonly", "file.locking"})),
    "-netdev": (frozenset({"user", "bridge"}), frozenset({"id", "br"})),
    "-object": (frozenset({"secret", "iothread"}), frozenset({"id", "file", "data"})),
    "-vnc": (frozenset({"*"}), frozenset({"to", "password-secret"})),
    "-audiodev": (frozenset({"none"}), frozenset({"id"})),
    "-rtc": (None, frozenset({"base"})),
    "-action": (None, frozenset({"panic"})),
}
#: options whose value is one whole argv item, not QemuOpts
WHOLE = frozenset({"-uuid", "-accel", "-cpu", "-m", "-display", "-bios", "-serial",
                   "-parallel", "-kernel", "-initrd", "-append", "-k"})
FLAGS = frozenset({"-nodefaults", "-no-user-config", "-usb", "-no-reboot", "-no-shutdown",
                   "-S"})


def qemuopts_split(text: str) -> list[str]:
    """QemuOpts' reading (util/qemu-option.c get_opt_value): a single comma ends an item,
    ``,,`` is a comma in it. Written here, apart from pvhvm's own."""
    items, current, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                current += ","
                i += 2
                continue
            items.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    return [*items, current]


Option = tuple[str, str | None, dict[str, str]]


def read_argv(argv: list[str]) -> list[Option]:
    """(option, head, {key: value}) for each option; asserts the shape of every one."""
    assert argv[0] == "qemu-system-x86_64"
    out: list[Option] = []
    i = 1
    while i < len(argv):
        option = argv[i]
        if option in FLAGS:
            out.append((option, None, {}))
            i += 1
            continue
        assert option in SCHEMA or option in WHOLE, f"unexpected argv item {option!r}"
        value = argv[i + 1]
        i += 2
        if option in WHOLE:
            out.append((option, value, {}))
            continue
        heads, keys = SCHEMA[option]
        items = qemuopts_split(value)
        head = None
        if heads is not None:
            head = items.pop(0)
            assert "*" in heads or head in heads, f"{option} {head!r}"
        pairs: dict[str, str] = {}
        for item in items:
            key, sep, text = item.partition("=")
            assert sep, f"{option} item {item!r} is not key=value"
            assert key in keys or (option == "-drive" and key.startswith("file.")), \
                f"{option}: key {key!r} pvhvm does not write"
            assert key not in pairs, f"{option}: {key} given twice"
            pairs[key] = text
        out.append((option, head, pairs))
    return out


def find(options: list[Option], option: str, **match: str) -> Option:
    found = [o for o in options if o[0] == option and all(
        o[2].get(k) == v for k, v in match.items())]
    assert len(found) == 1, (option, match, found)
    return found[0]


def whole(options: list[Option], option: str) -> str | None:
    values = [head for name, head, _ in options if name == option]
    assert len(values) <= 1
    return values[0] if values else None


# --- strings --------------------------------------------------------------------------------

NASTY = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=",=: /[]\n\x00\t\"'\\ab.-019\u00e9\u202e", max_size=30),
    st.sampled_from(["[::1]:0,websocket=0.0.0.0", "a,b", ",", ",,", "x,id=y", "0.0.0.0:1",
                     "file:/a,b", "unix:/a,,b,server,nowait", "unix:/a,server=off",
                     "tcp::4555,server,nowait", "tcp:[::1]:4555", "/x/initrd,vmlinuz", "pty",
                     "null", "en-us", "xenbr0", "00:16:3e:00:00:01", "e1000", "::1", "127.0.0.1",
                     "host.example", "5", "-5", "99999999999999999999"]),
)


def _one_line(err: Exception) -> None:
    assert "\n" not in str(err) and "\r" not in str(err), repr(str(err))


def argv_of(text: str, variables: Mapping[str, Any] | None = None,
            **options: Any) -> list[Option] | None:
    """The read-back argv of a config, or None when it is refused with one InputError line
    (anything else, a traceback, fails the test)."""
    try:
        plan = make_plan(config_from_text(text, "g.cfg", variables), check_files=False)
    except InputError as err:
        _one_line(err)
        return None
    paths = RunPaths(**{**PATHS.__dict__, "vnc_secret": options.pop("vnc_secret", None)})
    return read_argv(qemu_argv(plan, paths, ArgvOptions(**options)))


def _expected_chardev(spec: str, path_key: Callable[[str], str]) -> dict[str, str]:
    """What the test itself reads from a port spec: the chardev keys that must carry it."""
    if spec.startswith("file:"):
        return {"path": path_key(spec[5:])}
    if spec.startswith("unix:"):
        return {"path": path_key(qemuopts_split(spec[5:])[0])}
    if spec.startswith("tcp:"):
        address = qemuopts_split(spec[4:])[0]
        return {"port": str(int(address.rpartition(":")[2]))}
    return {}


#: $PVHVM_EXAMPLES examples per property (150 by default; 2000 found the last bugs)
PROPERTY = settings(deadline=None, max_examples=int(os.environ.get("PVHVM_EXAMPLES", "150")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# --- config keys ---------------------------------------------------------------------------


@PROPERTY
@given(NASTY)
def test_name(value: str) -> None:
    options = argv_of(HVM.replace('"g"', "n"), {"n": value})
    if options is not None:
        assert find(options, "-name")[2]["guest"] == value


@PROPERTY
@given(NASTY)
def test_disk_target(value: str) -> None:
    assume(network_url(value.strip(), None) is None)
    options = argv_of(HVM + 'disk = ["format=raw, vdev=xvda, access=rw, target=" + v]',
                      {"v": value})
    if options is not None:
        drive = find(options, "-drive", id="disk-xvda")[2]
        assert drive["file"] == os.path.abspath(value.strip())
        assert drive["format"] == "raw"


@PROPERTY
@given(NASTY)
def test_xm_cdrom(value: str) -> None:
    assume(network_url(value, None) is None)
    options = argv_of(HVM, {"cdrom": value})
    if options is not None:
        drive = find(options, "-drive", id="disk-hdc")[2]
        # xm's cdrom= is the target of an xl spec, which strips it; empty: no medium
        assert drive.get("file") == (os.path.abspath(value.strip()) if value.strip() else None)


@PROPERTY
@given(NASTY, NASTY, NASTY)
def test_kernel_ramdisk_extra(kernel: str, ramdisk: str, extra: str) -> None:
    assume(Path(kernel).name != "hvmloader")
    options = argv_of(HVM, {"kernel": kernel, "ramdisk": ramdisk, "extra": extra})
    if options is not None:
        assert whole(options, "-kernel") == os.path.abspath(kernel)
        initrd = whole(options, "-initrd")
        if ramdisk:
            assert initrd == os.path.abspath(ramdisk) and "," not in initrd
        assert whole(options, "-append") == (extra or None)


@PROPERTY
@given(NASTY)
def test_serial(value: str) -> None:
    options = argv_of(HVM, {"serial": value})
    if options is None:
        return
    if value in ("", "none"):
        assert value == "" or whole(options, "-serial") is None
        return
    chardev = find(options, "-chardev", id="serial0")[2]
    for key, expected in _expected_chardev(value, os.path.abspath).items():
        assert chardev[key] == expected


@PROPERTY
@given(NASTY, st.sampled_from(["serial", "parallel"]))
def test_second_serial_and_parallel(value: str, key: str) -> None:
    text = HVM + ('serial = ["pty", v]' if key == "serial" else "parallel = v")
    options = argv_of(text, {"v": value})
    if options is None or value in ("", "none"):
        return
    chardev = find(options, "-chardev", id=f"{key}{'1' if key == 'serial' else '0'}")[2]
    for name, expected in _expected_chardev(value, os.path.abspath).items():
        assert chardev[name] == expected


def _vnc_head(options: list[Option]) -> tuple[str, str]:
    (head,) = [h for name, h, _ in options if name == "-vnc"]
    assert head is not None
    address, _, display = head.rpartition(":")
    assert display.isascii() and display.isdigit()
    return address, display


@PROPERTY
@given(NASTY)
def test_vnclisten(value: str) -> None:
    options = argv_of(HVM, {"vnc": 1, "vnclisten": value})
    if options is None:
        return
    address, display = _vnc_head(options)
    bare = address[1:-1] if address.startswith("[") else address
    # what was given, the address only (xm's ADDRESS:DISPLAY gives the display too); an
    # empty vnclisten is the default, 127.0.0.1
    value = value or "127.0.0.1"
    assert value in (bare, address) or value in (f"{bare}:{display}", f"{address}:{display}")
    if address.startswith("["):
        ipaddress.IPv6Address(bare)
    else:
        assert re.fullmatch(r"[A-Za-z0-9.-]+", address), address


@PROPERTY
@given(NASTY)
def test_vncdisplay_and_keymap(value: str) -> None:
    options = argv_of(HVM, {"vnc": 1, "vncdisplay": value})
    if options is not None:
        assert _vnc_head(options)[1] == str(int(value))
    options = argv_of(HVM, {"vnc": 1, "keymap": value})
    if options is not None and value:
        assert whole(options, "-k") == value and re.fullmatch(r"[a-z]{2,4}(-[a-z]{2})?", value)


@PROPERTY
@given(NASTY, st.booleans())
def test_vncpasswd(value: str, in_a_file: bool) -> None:
    options = argv_of(HVM, {"vnc": 1, "vncpasswd": value},
                      vnc_secret=SECRET if in_a_file else None)
    if options is None or not value:
        return
    secret = find(options, "-object", id="vncpass0")[2]
    assert secret == ({"id": "vncpass0", "file": str(SECRET)} if in_a_file
                      else {"id": "vncpass0", "data": value})


@PROPERTY
@given(NASTY, st.sampled_from(["bridge", "mac", "model"]))
def test_vif(value: str, key: str) -> None:
    spec = "type=ioemu, model=" if key == "model" else f"{key}="
    # the vif spec splits at commas: whatever bridge= it reads, it is a bridge of this host
    bridges = frozenset({value, value.strip(), value.split(",")[0].strip()})
    options = argv_of(HVM + 'vif = [s + v]', {"s": spec, "v": value}, bridges=bridges)
    if options is None:
        return
    if key == "bridge":
        _, head, netdev = find(options, "-netdev", id="net0")
        assert head == "user" or netdev["br"] in bridges
    elif key == "mac":
        assert find(options, "-device", id="vif-0")[2]["mac"] == value.strip().lower()
    else:
        assert find(options, "-device", id="vif-0")[1] == value.strip()


@PROPERTY
@given(NASTY, st.sampled_from([
    "uuid", "soundhw", "usbdevice", "vga", "stdvga", "boot", "memory", "maxmem", "vcpus",
    "maxvcpus", "rtc_timeoffset", "localtime", "acpi", "hpet", "on_poweroff", "on_reboot",
    "on_crash", "bios", "firmware", "hotplug_slots", "root", "cmdline", "usb", "vncunused",
    "vfb", "disk", "vif", "builder", "type",
]))
def test_every_other_key(value: str, key: str) -> None:
    """Keys that choose from a list, take a number, or are whole disk/vif/vfb specs:
    refused, or the argv keeps its shape (read_argv checks every option string's keys)."""
    text = HVM + 'vnc = 1\n' if key in ("vncunused", "vfb") else HVM
    options = argv_of(text + 'kernel = "/k"\n' if key == "root" else text, {key: value})
    if options is not None and key == "uuid":
        assert whole(options, "-uuid") == str(uuidlib.UUID(value))
    if options is not None and key == "root":
        assert whole(options, "-append") == f"root={value}"


# --- libvirt XML fields ----------------------------------------------------------------------

XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <os><type arch='x86_64'>hvm</type>{os}</os>
  <clock offset='variable' adjustment={adjustment}/>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type={driver}/>
      <source file={disk}/><target dev={vdev} bus={bus}/></disk>
    <interface type='bridge'><mac address={mac}/><source bridge={bridge}/><model type={model}/>
      <target dev={tap}/><mtu size={mtu}/></interface>
    {serial}
    <graphics type='vnc' port={port} autoport='no' listen={listen} keymap={keymap}
      passwd={passwd}/>
  </devices>
</domain>"""
DEFAULTS = {"name": "g", "os": "", "adjustment": "'0'", "disk": "'/d.img'", "vdev": "'vda'",
            "bus": "'virtio'", "driver": "'raw'", "mtu": "'1500'", "port": "'5901'",
            "mac": "'00:16:3e:00:00:01'", "bridge": "'br0'", "model": "'virtio'",
            "tap": "'vnet0'", "serial": "", "listen": "'127.0.0.1'", "keymap": "'en-us'",
            "passwd": "'secret'"}


def xml_argv(**fields: str) -> list[Option] | None:
    text = XML.format(**{**DEFAULTS, **fields})
    try:
        plan = make_plan(config_from_xml(text, "g.xml"), check_files=False)
    except InputError as err:
        _one_line(err)
        return None
    return read_argv(qemu_argv(plan, PATHS, ArgvOptions(bridges=frozenset({"br0"}))))


@PROPERTY
@given(NASTY, st.sampled_from(["disk", "bridge", "mac", "model", "tap", "listen", "keymap",
                               "passwd", "adjustment", "vdev", "driver", "mtu", "port",
                               "bus"]))
def test_xml_attributes(value: str, field: str) -> None:
    options = xml_argv(**{field: quoteattr(value)})
    if options is None:
        return
    if field == "disk":
        assert find(options, "-drive", id="disk-xvda")[2]["file"] == os.path.abspath(value)
    elif field == "mac":
        assert find(options, "-device", id="vif-0")[2]["mac"] == value.lower()
    elif field == "port" and value != "-1":
        assert _vnc_head(options)[1] == str(int(value) - 5900)
    elif field == "listen":
        address, display = _vnc_head(options)
        assert display == "1" and address in (value, f"[{value}]")
    elif field == "keymap":
        assert whole(options, "-k") == value
    elif field == "passwd" and value:
        assert find(options, "-object", id="vncpass0")[2]["data"] == value


def _text(value: str) -> str:
    """``value`` as XML element text (a CR as a reference: XML turns a raw one into LF)."""
    return escape(value, {"\r": "&#13;"})


@PROPERTY
@given(NASTY, st.sampled_from(["name", "kernel", "initrd", "cmdline"]))
def test_xml_text(value: str, field: str) -> None:
    if field == "name":
        options = xml_argv(name=_text(value))
    else:
        extra = "" if field == "kernel" else "<kernel>/k</kernel>"
        options = xml_argv(os=f"{extra}<{field}>{_text(value)}</{field}>")
    if options is None:
        return
    value = value.strip()  # the reader takes an element's text without its white space
    if field == "name":
        assert find(options, "-name")[2]["guest"] == value
    elif field == "kernel":
        assert whole(options, "-kernel") == os.path.abspath(value)
    elif field == "initrd" and value:
        assert whole(options, "-initrd") == os.path.abspath(value)
    elif field == "cmdline" and value:
        assert whole(options, "-append") == value


@PROPERTY
@given(NASTY, st.sampled_from(["serial-file", "serial-unix", "parallel-file", "tcp-host",
                               "tcp-service"]))
def test_xml_ports(value: str, field: str) -> None:
    kind, port = field.split("-")
    if kind == "tcp":
        host = quoteattr(value) if port == "host" else "'127.0.0.1'"
        service = quoteattr(value) if port == "service" else "'4555'"
        serial = (f"<serial type='tcp'><source mode='bind' host={host} service={service}/>"
                  "</serial>")
        chardev_id = "serial0"
    else:
        serial = f"<{kind} type='{port}'><source path={quoteattr(value)}/></{kind}>"
        chardev_id = f"{kind}0"
    options = xml_argv(serial=serial)
    if options is None:
        return
    chardev = find(options, "-chardev", id=chardev_id)[2]
    if kind != "tcp":
        assert chardev["path"] == os.path.abspath(value)
    elif port == "service":
        assert chardev["port"] == str(int(value))
    else:
        assert chardev["host"] in (value or "127.0.0.1", value.strip("[]"))


# --- the reproductions of issue 18 -----------------------------------------------------------


def test_vnclisten_with_an_injected_websocket_is_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        make_plan(config_from_text(HVM + 'vnc = 1\nvnclisten = "[::1]:0,websocket=0.0.0.0"\n',
                                   "g.cfg"), check_files=False)
    message = str(info.value)
    assert message.startswith("g.cfg:4:") and "vnclisten" in message and "\n" not in message


def test_vfb_line_cannot_inject_either() -> None:
    with pytest.raises(ConfigError, match=r"g\.cfg:3:.*vnclisten"):
        make_plan(config_from_text(
            HVM + 'vfb = ["type=vnc,vnclisten=[::1]:0 websocket=0.0.0.0"]\n', "g.cfg"),
            check_files=False)


@pytest.mark.parametrize("where", ["listen=", "<listen>"])
def test_graphics_listen_with_an_injected_websocket_is_one_error(where: str) -> None:
    hostile = "'[::1]:0,websocket=0.0.0.0'"
    if where == "listen=":
        text = XML.format(**{**DEFAULTS, "listen": hostile})
    else:
        text = XML.format(**DEFAULTS).replace(
            "passwd='secret'/>", f"passwd='secret'><listen type='address' address={hostile}/>"
            "</graphics>").replace("listen='127.0.0.1' ", "")
    with pytest.raises(ConfigError) as info:
        config_from_xml(text, "g.xml")
    message = str(info.value)
    assert message.startswith("g.xml:") and "listen" in message and "\n" not in message


def test_ramdisk_with_a_comma_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"g\.cfg: ramdisk .*-initrd splits"):
        make_plan(config_from_text(HVM + 'kernel = "/k"\nramdisk = "/x/initrd,/etc/shadow"',
                                   "g.cfg"), check_files=False)
    text = XML.format(**{**DEFAULTS, "os": "<kernel>/k</kernel><initrd>/i,/etc/shadow</initrd>"})
    with pytest.raises(ConfigError, match=r"g\.xml:4:.*<initrd>"):
        config_from_xml(text, "g.xml")


def _multiboot_kernel(path: Path) -> Path:
    """The smallest multiboot kernel QEMU loads (a.out kludge: load the file at 1 MiB)."""
    magic, flags = 0x1BADB002, 0x00010000
    header = struct.pack("<8I", magic, flags, -(magic + flags) & 0xFFFFFFFF, 0x100000,
                         0x100000, 0, 0, 0x100020)
    path.write_bytes(header.ljust(0x20, b"\0") + b"\xf4\xeb\xfd".ljust(32, b"\0"))
    return path


def test_a_multiboot_kernel_takes_no_space_in_its_ramdisk(tmp_path: Path) -> None:
    """QEMU 7.2 ends a multiboot module's file name at a space (the rest is its command
    line: '-initrd "/d/a b"' opens /d/a); a Linux kernel's loader takes the path whole."""
    kernel = _multiboot_kernel(tmp_path / "xen")
    ramdisk = tmp_path / "dom0 initrd"
    ramdisk.write_bytes(b"x")
    text = HVM + f'kernel = "{kernel}"\nramdisk = "{ramdisk}"\n'
    with pytest.raises(ConfigError, match=r"multiboot kernel.*first space"):
        make_plan(config_from_text(text, "g.cfg"))
    linux = tmp_path / "vmlinuz"
    linux.write_bytes(bytes(0x202) + b"HdrS" + bytes(64))
    plan = make_plan(config_from_text(text.replace(str(kernel), str(linux)), "g.cfg"))
    assert plan.ramdisk == str(ramdisk)
    if shutil.which("qemu-system-x86_64"):  # what QEMU itself does with that -initrd
        done = subprocess.run(
            ["qemu-system-x86_64", "-M", "pc", "-display", "none", "-monitor", "none",
             "-serial", "none", "-nodefaults", "-S", "-kernel", str(kernel),
             "-initrd", str(ramdisk)], capture_output=True, text=True, timeout=30, check=False)
        assert f"Failed to open file '{tmp_path / 'dom0'}'" in done.stderr


@pytest.mark.parametrize("line", [
    'serial = ["pty", "unix:{path}"]', 'serial = ["pty", "pty", "unix:{path},server,nowait"]',
    'parallel = "unix:{path}"', 'serial = "unix:{path}"',
])
def test_a_socket_port_at_a_regular_file_is_refused_and_the_file_untouched(
        line: str, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    with pytest.raises(ConfigError) as info:
        make_plan(config_from_text(HVM + line.format(path=precious), "g.cfg"))
    assert "exists and is not a socket" in str(info.value) and "g.cfg:3:" in str(info.value)
    assert precious.read_text() == "keep me\n"


def test_a_file_port_at_a_directory_or_device_is_refused(tmp_path: Path) -> None:
    for target in (tmp_path, Path("/dev/null")):
        with pytest.raises(ConfigError, match="exists and is not a file"):
            make_plan(config_from_text(HVM + f'parallel = "file:{target}"', "g.cfg"))


def test_the_xml_parallel_port_gets_the_same_check(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    (tmp_path / "d.img").write_bytes(b"")
    text = XML.format(**{**DEFAULTS, "disk": quoteattr(str(tmp_path / "d.img")),
                         "serial": f"<parallel type='unix'><source mode='bind' "
                                   f"path='{precious}'/></parallel>"})
    with pytest.raises(ConfigError, match=r"g\.xml:\d+:\d+: parallel .* is not a socket"):
        make_plan(config_from_xml(text, "g.xml"), check_files=True)


def test_file_ports_append() -> None:
    options = argv_of(HVM + 'serial = ["file:/tmp/a,b", "file:/tmp/c"]\nparallel = "file:/d"')
    assert options is not None
    for chardev_id, path in (("serial0", "/tmp/a,b"), ("serial1", "/tmp/c"),
                             ("parallel0", "/d")):
        assert find(options, "-chardev", id=chardev_id)[2] == {
            "id": chardev_id, "path": path, "append": "on"}


# --- real QEMU -----------------------------------------------------------------------------


async def _qmp(socket: Path, *commands: str) -> list[Any]:
    client = await connect(socket)
    try:
        return [await client.execute(command) for command in commands]
    finally:
        await client.disconnect()


def _wait_for_qmp(qemu: subprocess.Popen[bytes], qmp_socket: Path) -> None:
    """Until QEMU (started paused) has made its QMP socket; its output if it exits first."""
    deadline = time.monotonic() + 20
    while not qmp_socket.exists():
        assert qemu.poll() is None, qemu.communicate()[0]
        assert time.monotonic() < deadline, "QEMU made no QMP socket"
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_real_qemu_opens_the_nasty_but_valid_paths(tmp_path: Path) -> None:
    """QEMU started with pvhvm's argv opens a disk, a vnc password file, a file and a
    socket port, and its own QMP socket, all in a directory with commas (and '=') in its
    name: each at exactly its path."""
    nasty = tmp_path / "a,b=c,,d"
    nasty.mkdir()
    disk = nasty / "disk,1.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"], check=True)
    log, sock = nasty / "serial,1.log", nasty / "p,s"
    log.write_text("kept\n")  # QEMU 7.2 truncates a file chardev unless append=on
    text = (HVM + f'disk = ["format=raw, vdev=xvda, access=rw, target={disk}"]\n'
            f'serial = ["pty", "file:{log}"]\nparallel = "unix:{str(sock).replace(",", ",,")}"\n'
            'vnc = 1\nvnclisten = "127.0.0.1"\nvncpasswd = "p,w=1"\nvncdisplay = 177\n')
    plan = make_plan(config_from_text(text, "g.cfg"))
    secret = nasty / "vnc,secret"
    secret.write_text("p,w=1")
    paths = RunPaths(qmp_socket=nasty / "q,mp", control_socket=nasty / "c,tl",
                     console_socket=nasty / "con,sole", console_log=nasty / "con,sole.log",
                     vnc_secret=secret)
    argv = qemu_argv(plan, paths, ArgvOptions(supervised=False, start_paused=True,
                                              no_direct_io=frozenset({str(disk)})))
    qemu = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for_qmp(qemu, paths.qmp_socket)
        blocks, vnc = asyncio.run(_qmp(paths.qmp_socket, "query-block", "query-vnc"))
        files = {b["device"]: b["inserted"]["file"] for b in blocks if "inserted" in b}
        assert files == {"disk-xvda": str(disk)}
        assert vnc["enabled"] and vnc["service"] == str(5900 + 177) and vnc["auth"] == "vnc"
        assert log.read_text().startswith("kept\n") and sock.is_socket()
        assert paths.console_log.is_file()
        with contextlib.suppress(EOFError):  # QEMU may close before its reply is read
            asyncio.run(_qmp(paths.qmp_socket, "quit"))
        assert qemu.wait(timeout=20) == 0
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    # nothing was made under another name (QEMU removes its sockets when it quits)
    assert {p.name for p in nasty.iterdir()} == {
        "disk,1.img", "serial,1.log", "vnc,secret", "con,sole.log"}


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_real_qemu_listens_on_a_network_serial_port_after_the_console(tmp_path: Path) -> None:
    """``serial = ["pty", "tcp:127.0.0.1:PORT"]`` (xl passes any port form to QEMU): QEMU
    started with pvhvm's argv listens on PORT for ttyS1, on the loopback address only."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plan = make_plan(config_from_text(HVM + f'serial = ["pty", "tcp:127.0.0.1:{port}"]\n',
                                      "g.cfg"))
    paths = RunPaths(qmp_socket=tmp_path / "qmp", control_socket=tmp_path / "ctl",
                     console_socket=tmp_path / "console", console_log=tmp_path / "console.log")
    argv = qemu_argv(plan, paths, ArgvOptions(supervised=False, start_paused=True))
    qemu = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for_qmp(qemu, paths.qmp_socket)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # ttyS1's chardev accepted the connection
        chardevs = asyncio.run(_qmp(paths.qmp_socket, "query-chardev"))[0]
        (serial1,) = [c for c in chardevs if c["label"] == "serial1"]
        assert f"tcp:127.0.0.1:{port},server=on" in serial1["filename"]
    finally:
        qemu.kill()
        qemu.wait()
