"""``--platform xen`` on a Xen host: real domains through xl (issue 19, item 2).

Two halves:

- the toolstack logic on this host, with a stand-in ``xl`` (a script that keeps its domains in
  a JSON file) and a stand-in privcmd node: what pvhvm asks xl, that a failed ``xl create``
  comes back as one line and leaves no domain and no record, that ``list`` follows xl, and
  that ``--xenstore`` naming a xenstored other than pvhvm's own is refused on a Xen host
  while pvhvm's own is still written to (the RFC's model);
- end to end on the real Xen 4.17 host (tests/xen/host.py, the session's one boot): the kit's
  kernel and initramfs as a PV domU created by ``pvhvm create --platform xen`` in dom0, its
  devices seen in the kit's report on its console, a PV disk block-attached and seen by the
  guest, shutdown -w, and nothing of it left in dom0.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvhvm.cli.main import main
from pvhvm.guest.kit import Kit
from pvhvm.platforms import QemuPlatform
from pvhvm.platforms.base import Platforms
from pvhvm.platforms.xen import XenPlatform
from pvhvm.runtime.state import StateStore
from pvhvm.xen.xl import Xl, XlError, domids_named, one_line
from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.daemon import DaemonProcess, spawn_daemon
from tests import jsonout
from tests.xen.host import XenHost

# -- a stand-in xl for the toolstack logic -----------------------------------------------------

FAKE_XL = r'''#!/usr/bin/env python3
"""A stand-in for xl(1): domains in a JSON file; every call logged."""
import json, os, re, sys
state, log = os.environ["FAKE_XL_STATE"], os.environ["FAKE_XL_LOG"]
args = sys.argv[1:]
with open(log, "a") as stream:
    stream.write(json.dumps(args) + "\n")
doms = json.load(open(state)) if os.path.exists(state) else {}
verb = args[0]
def save():
    with open(state, "w") as stream:
        json.dump(doms, stream)
if verb == "list":
    print("Name                                        ID   Mem VCPUs\tState\tTime(s)")
    print("Domain-0                                     0  1024     2     r-----      12.5")
    for name, dom in doms.items():
        print(f"{name:<40} {dom['domid']:5d} {dom['mem']:5d} {1:5d}     {dom['flags']}  3.0")
    for name, dom in list(doms.items()):
        if "lists" in dom and "preserve" not in os.environ.get("FAKE_XL_ON_POWEROFF", ""):
            dom["lists"] -= 1
            if dom["lists"] < 0:
                doms.pop(name)
    save()
elif verb == "create":
    text = open(args[-1]).read()
    name = re.search(r'^name = "([^"]+)"', text, re.M).group(1)
    failure = os.environ.get("FAKE_XL_FAIL")
    if failure:
        if failure == "leave":  # a domain left behind by a build that failed half-way
            doms[name] = {"domid": 7, "mem": 256, "flags": "--p---"}
            save()
        print(f"Parsing config from {args[-1]}", file=sys.stderr)
        print("libxl: error: libxl_device.c:1290:device_hotplug_child_death_cb: script: "
              "/etc/xen/scripts/block failed; error detected.", file=sys.stderr)
        print("libxl: error: libxl_create.c:1886:domcreate_attach_devices: Domain 7:unable "
              "to add disk devices", file=sys.stderr)
        sys.exit(3)
    mem = int(re.search(r"^memory = (\d+)", text, re.M).group(1))
    doms[name] = {"domid": 6 + len(doms), "mem": mem,
                  "flags": "--p---" if "-p" in args else "r-----"}
    save()
elif verb == "destroy":
    doms.pop(args[1], None)
    save()
elif verb in ("pause", "unpause"):
    doms[args[1]]["flags"] = "--p---" if verb == "pause" else "-b----"
    save()
elif verb == "shutdown":
    # xl list shows a shut-down domain ("s") until xl's daemon destroys it (on_poweroff=
    # destroy): FAKE_XL_SHUTDOWN_LISTS lists of it first (preserve: it stays)
    lists = int(os.environ.get("FAKE_XL_SHUTDOWN_LISTS", "0"))
    if lists or "preserve" in os.environ.get("FAKE_XL_ON_POWEROFF", ""):
        doms[args[-1]].update(flags="---s--", lists=lists)
    else:
        doms.pop(args[-1], None)
    save()
elif verb == "console":
    sys.exit(int(os.environ.get("FAKE_XL_CONSOLE_STATUS", "0")))
'''

PV_CFG = """\
name = "pvg"
memory = 256
kernel = "{dir}/vmlinuz"
ramdisk = "{dir}/initrd.img"
extra = "console=hvc0 root=/dev/xvda"
disk = [ "file:{dir}/disk.img,xvda,w" ]
vif = [ "" ]
"""


class Toolstack:
    """The CLI over a private state directory, with the stand-in xl and privcmd."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.xl = directory / "xl"
        self.xl.write_text(FAKE_XL.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
        self.xl.chmod(0o755)
        self.log = directory / "xl.log"
        self.privcmd = directory / "privcmd"
        self.privcmd.touch()
        self.store = StateStore(directory / "state")
        self.env = {"FAKE_XL_STATE": str(directory / "domains.json"),
                    "FAKE_XL_LOG": str(self.log)}
        for name in ("vmlinuz", "initrd.img", "disk.img", "data.img"):
            (directory / name).write_bytes(b"\0" * 4096)
        self.config = directory / "pvg.cfg"
        self.config.write_text(PV_CFG.format(dir=directory))
        self.daemon: DaemonProcess | None = None

    def platforms(self) -> Platforms:
        return Platforms([QemuPlatform(self.store),
                          XenPlatform(self.store, xl=Xl(str(self.xl)), privcmd=[self.privcmd],
                                      xenstore=self.xenstore)])

    def xenstore(self) -> XenStoreClient:
        """dom0's XenStore: pvhvm's own daemon stands in for it here."""
        assert self.daemon is not None
        return XenStoreClient(self.daemon.socket_path)

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str,
            **env: str) -> tuple[int, str, str]:
        saved = dict(os.environ)
        os.environ.update({**self.env, **env})
        try:
            with pytest.raises(SystemExit) as exit_:
                main(list(argv), platforms=self.platforms())
        finally:
            os.environ.clear()
            os.environ.update(saved)
        out, err = capsys.readouterr()
        return int(exit_.value.code or 0), out, err

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def records(self) -> list[str]:
        domains = self.directory / "state" / "xen" / "domains"
        return sorted(p.name for p in domains.iterdir()) if domains.exists() else []


@pytest.fixture
def toolstack() -> Iterator[Toolstack]:
    with tempfile.TemporaryDirectory(prefix="pvx-", dir="/tmp") as directory, \
            spawn_daemon(Path(directory) / "dom0-xs.sock") as daemon:
        made = Toolstack(Path(directory))
        made.daemon = daemon
        yield made


def test_create_goes_through_xl_and_list_follows_it(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = toolstack.run(capsys, "create", str(toolstack.config), "--platform", "xen",
                                   "-p")
    assert code == 0, err
    assert "domain pvg (id 6) created by xl (paused" in out + err
    create = next(call for call in toolstack.calls() if call[0] == "create")
    assert create[1] == "-p"
    # what xl was given is export-xl's file, kept in the domain's state directory
    exported = Path(create[2]).read_text()
    assert 'name = "pvg"' in exported and f"target={toolstack.directory}/disk.img" in exported
    code, out, _ = toolstack.run(capsys, "list")
    assert out.splitlines()[1].split()[:6] == ["pvg", "6", "256", "1", "--p---", "3.0"]
    assert toolstack.run(capsys, "unpause", "pvg")[0] == 0
    code, out, _ = toolstack.run(capsys, "list", "--json")
    assert jsonout.result(out, "list")[0]["state"] == "running"
    code, out, err = toolstack.run(capsys, "block-attach", "pvg", "/nonexistent.img,raw,xvdb,w")
    assert code == 1 and err.count("\n") == 1 and "/nonexistent.img" in err
    assert not any(call[0] == "block-attach" for call in toolstack.calls())
    code, out, err = toolstack.run(capsys, "block-attach", "pvg",
                                   f"{toolstack.directory}/data.img,raw,xvdb,r")
    assert code == 0, err
    attach = [call for call in toolstack.calls() if call[0] == "block-attach"]
    assert attach == [["block-attach", "pvg", "format=raw,vdev=xvdb,access=r,"
                       f"target={toolstack.directory}/data.img"]]
    code, out, err = toolstack.run(capsys, "block-detach", "pvg", "xvdb")
    assert code == 0, err
    assert ["block-detach", "pvg", "51728"] in toolstack.calls()
    # gone behind pvhvm's back (on_poweroff=destroy, or xl destroy): its record goes too
    Path(toolstack.env["FAKE_XL_STATE"]).write_text("{}")
    assert toolstack.run(capsys, "list")[1].splitlines()[1:] == []
    assert toolstack.records() == []


def test_failed_xl_create_is_one_line_and_leaves_nothing(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = toolstack.run(capsys, "create", str(toolstack.config), "--platform", "xen",
                                   FAKE_XL_FAIL="leave")
    assert (code, out) == (1, "")
    assert err == ("pvhvm: error: xl create: script: /etc/xen/scripts/block failed; error "
                   "detected.; Domain 7:unable to add disk devices\n")
    # the domain the failed build left is destroyed, and no record is kept
    assert ["destroy", "pvg"] in toolstack.calls()
    assert json.loads(Path(toolstack.env["FAKE_XL_STATE"]).read_text()) == {}
    assert toolstack.records() == []


def test_destroy_removes_what_a_killed_hotplug_script_left(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert toolstack.run(capsys, "create", str(toolstack.config), "--platform", "xen")[0] == 0
    back = "/local/domain/0/backend"
    # what the block script's child wrote after libxl removed domain 6's vbd, and a
    # neighbour's backend that must stay
    with toolstack.xenstore() as xs:
        xs.write(f"{back}/vbd/6/51712/hotplug-error", "losetup failed")
        xs.write(f"{back}/vbd/9/51712/state", "4")
    code, _, err = toolstack.run(capsys, "destroy", "pvg")
    assert code == 0, err
    assert err == (f"note: domain 6: removed what libxl's killed hotplug scripts left in "
                   f"XenStore: {back}/vbd/6\n")
    with toolstack.xenstore() as xs:
        assert xs.directory(f"{back}/vbd") == ["9"]
    assert toolstack.records() == []


def test_shutdown_wait_waits_for_xls_destroy_and_then_settles(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    """on_poweroff=destroy: xl list shows the domain shut down (``s``) until xl's daemon has
    destroyed it; shutdown -w waits for that, then removes what its hotplug scripts left."""
    assert toolstack.run(capsys, "create", str(toolstack.config), "--platform", "xen")[0] == 0
    with toolstack.xenstore() as xs:
        xs.write("/local/domain/0/backend/vbd/6/51712/hotplug-error", "late")
    code, _, err = toolstack.run(capsys, "shutdown", "-w", "pvg", FAKE_XL_SHUTDOWN_LISTS="3")
    assert code == 0, err
    assert "note: domain 6: removed" in err
    assert toolstack.records() == [] and "pvg" not in json.loads(
        Path(toolstack.env["FAKE_XL_STATE"]).read_text())
    # on_poweroff=preserve: the shut-down domain stays, and so do its record and nodes
    config = toolstack.directory / "keep.cfg"
    config.write_text(toolstack.config.read_text().replace('"pvg"', '"keep"')
                      + 'on_poweroff = "preserve"\n')
    assert toolstack.run(capsys, "create", str(config), "--platform", "xen")[0] == 0
    code, _, err = toolstack.run(capsys, "shutdown", "-w", "keep",
                                 FAKE_XL_ON_POWEROFF="preserve")
    assert (code, err) == (0, "")
    assert toolstack.records() == ["keep"]


def test_a_failed_create_settles_the_domid_libxl_named(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    with toolstack.xenstore() as xs:
        xs.write("/local/domain/0/backend/vbd/7/51712/hotplug-error", "late")
    code, _, err = toolstack.run(capsys, "create", str(toolstack.config), "--platform", "xen",
                                 FAKE_XL_FAIL="1")
    assert code == 1
    assert "note: domain 7: removed" in err and err.endswith("unable to add disk devices\n")
    with toolstack.xenstore() as xs:
        assert not xs.exists("/local/domain/0/backend")  # nothing left, as libxl leaves it


def test_a_console_that_fails_after_the_json_result_adds_no_second_document(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = toolstack.run(capsys, "create", str(toolstack.config), "--platform", "xen",
                                   "--json", "-c", FAKE_XL_CONSOLE_STATUS="1")
    assert code == 1
    assert jsonout.result(out, "create")["name"] == "pvg"  # one document: the create's
    assert err.endswith("pvhvm: error: xl console pvg failed (exit status 1)\n")
    # the next command in this process prints its own document again
    code, out, _ = toolstack.run(capsys, "block-list", "nosuch", "--json")
    assert code == 1 and json.loads(out)["ok"] is False


def test_a_name_xl_already_runs_is_refused(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    Path(toolstack.env["FAKE_XL_STATE"]).write_text(
        json.dumps({"pvg": {"domid": 3, "mem": 128, "flags": "r-----"}}))
    code, _, err = toolstack.run(capsys, "create", str(toolstack.config), "--platform", "xen")
    assert code == 1 and err.count("\n") == 1 and "already runs on this Xen host" in err
    assert not any(call[0] == "create" for call in toolstack.calls())
    assert toolstack.records() == []


def test_foreign_xenstored_on_a_xen_host_is_refused(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    """A xenstored that is not pvhvm's (here any other process listening) on a host with a
    hypervisor: refused in one line, nothing written, xl not asked."""
    path = toolstack.directory / "xs.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen()
        code, out, err = toolstack.run(capsys, "create", str(toolstack.config), "--platform",
                                       "xen", "--xenstore", str(path))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "not pvhvm's own" in err and "through xl" in err
    assert toolstack.calls() == [] and toolstack.records() == []


def test_pvhvm_xenstored_on_a_xen_host_is_the_rfc_model(
    toolstack: Toolstack, capsys: pytest.CaptureFixture[str]
) -> None:
    """pvhvm's own xenstored, named by --xenstore on a Xen host: the nodes are written there,
    and xl is not asked."""
    with spawn_daemon(toolstack.directory / "own.sock") as daemon:
        code, out, err = toolstack.run(capsys, "create", str(toolstack.config), "--platform",
                                       "xen", "--xenstore", str(daemon.socket_path))
        assert code == 0, err
        assert "written to XenStore" in out + err
        assert toolstack.run(capsys, "destroy", "pvg")[0] == 0
    assert [call for call in toolstack.calls() if call[0] != "list"] == []


def test_libxl_output_as_one_line() -> None:
    stderr = ("Parsing config from /root/g.cfg\n"
              "libxl: error: libxl_dm.c:3152:device_model_spawn_outcome: Domain 4:domain 4 "
              "device model: spawn failed (rc=-3)\n"
              "libxl: error: libxl_create.c:1886:domcreate_attach_devices: Domain 4:unable "
              "to add disk devices\n")
    assert one_line(stderr) == ("Domain 4:domain 4 device model: spawn failed (rc=-3); "
                                "Domain 4:unable to add disk devices")
    assert one_line("Parsing config from x\nwarning: nothing\n") == "warning: nothing"
    assert one_line("") == "no output"
    assert domids_named("Domain 4:unable to add disk devices; Domain 12:x") == [4, 12]


def test_a_hotplug_script_killed_at_libxls_timeout_is_said(tmp_path: Path) -> None:
    """libxl's own words when it SIGKILLs a script at LIBXL_HOTPLUG_TIMEOUT (Xen 4.17), as
    a (real) shell script that prints them and fails as xl does."""
    xl = tmp_path / "xl"
    xl.write_text("#!/bin/sh\ncat >&2 <<'EOF'\nParsing config from pvg.cfg\n"
                  "libxl: error: libxl_exec.c:117:libxl_report_child_exitstatus: "
                  "/etc/xen/scripts/block add [2211] died due to fatal signal Killed\n"
                  "libxl: error: libxl_create.c:1886:domcreate_attach_devices: Domain 5:unable "
                  "to add disk devices\nEOF\nexit 3\n")
    xl.chmod(0o755)
    with pytest.raises(XlError) as raised:
        Xl(str(xl)).run("create", "pvg.cfg")
    assert str(raised.value) == (
        "xl create: /etc/xen/scripts/block add [2211] died due to fatal signal Killed; "
        "Domain 5:unable to add disk devices (/etc/xen/scripts/block add was killed at "
        "libxl's fixed 40 s hotplug-script timeout: this host was too busy to run it in time)")


# -- end to end on the real Xen host -----------------------------------------------------------

#: where the test puts the kit and the guest's disks in dom0
DOM0_DIR = "/root/pvplat"
#: the kit's report lines the PV domU prints on hvc0 (pvhvm/guest/report.py)
REPORT = re.compile(r"PVHVM-REPORT-BEGIN\r?\n(.*?)PVHVM-REPORT-END", re.S)

E2E_CONFIG = f"""\
# the kit as a Xen PV domU (no type=: PV), created by pvhvm in dom0
name = "pvplat"
memory = 256
vcpus = 1
kernel = "{DOM0_DIR}/vmlinuz"
ramdisk = "{DOM0_DIR}/initramfs.cpio.gz"
extra = "console=hvc0 root=/dev/xvda rootwait=120"
disk = [ "file:{DOM0_DIR}/rootfs.ext4,xvda,w" ]
vif = [ "bridge=xenbr0" ]
on_poweroff = "destroy"
"""


#: where the kit is copied in dom0, once per session
DOM0_KIT = "/root/pvhvm-kit"


@pytest.fixture(scope="session")
def kit_for_xen(kit: Kit, xen_host: XenHost) -> Iterator[str]:
    """The kit's kernel, initramfs and root filesystem in dom0 (copied over ssh, sparse),
    removed at the end of the session."""
    started = time.monotonic()
    with subprocess.Popen(["tar", "-C", str(kit.directory), "-cSf", "-", "vmlinuz",
                           "initramfs.cpio.gz", "rootfs.ext4"], stdout=subprocess.PIPE) as tar:
        done = subprocess.run([*xen_host.ssh_argv(), f"mkdir -p {DOM0_KIT} && "
                               f"tar -C {DOM0_KIT} -xSf -"], stdin=tar.stdout,
                              capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    print(f"the kit copied to dom0 in {time.monotonic() - started:.0f} s")
    yield DOM0_KIT
    xen_host.ssh(f"rm -rf {DOM0_KIT}", check=False)


def xs_read(host: XenHost, path: str) -> str:
    return host.ssh(f"xenstore-read {shlex.quote(path)}", check=False).stdout.strip()


def wait_for(what: str, probe: object, timeout: float, every: float = 3) -> None:
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


#: what pvhvm says when libxl killed a hotplug script at its fixed 40 s timeout (xen/xl.py)
HOTPLUG_KILLED = "killed at libxl's fixed 40 s hotplug-script timeout"


def pvhvm_in_dom0(host: XenHost, command: str, timeout: float = 900,
                  tries: int = 3) -> subprocess.CompletedProcess[str]:
    """``pvhvm COMMAND`` in dom0; tried again (each try printed) only when libxl killed a
    hotplug script at its fixed timeout, which a dom0 under TCG on a loaded 2-core machine
    hits (issue 19): the domain or device was not made, and pvhvm left nothing of it."""
    for attempt in range(1, tries + 1):
        done = host.ssh(f"cd {DOM0_DIR} && pvhvm {command}", timeout=timeout, check=False)
        if done.returncode == 0 or HOTPLUG_KILLED not in done.stderr or attempt == tries:
            return done
        print(f"pvhvm {command}: try {attempt} of {tries} failed ({done.stderr.strip()}); "
              "trying again")
    raise AssertionError("not reached")


#: ``pvhvm console`` under a pty (xl console wants a terminal), its output kept in a file
CONSOLE = ("timeout 1200 python3 -c 'import pty; pty.spawn([\"pvhvm\", \"console\", "
           "\"pvplat\"])' </dev/null >{out} 2>&1 & echo $! >{pid}")


def guest_report(host: XenHost, timeout: float = 600) -> str:
    """The kit's device report, from what ``pvhvm console`` has shown of the guest so far."""
    found: list[str] = []

    def probe() -> bool:
        text = host.ssh(f"tr -d '\\r' < {DOM0_DIR}/console.txt", check=False).stdout
        match = REPORT.search(text)
        if match:
            found.append(match.group(1))
        return bool(match)

    wait_for("the kit's report on the PV domU's console", probe, timeout, every=5)
    return found[0]


@pytest.mark.e2e
@pytest.mark.xen_domains
@pytest.mark.xdist_group("xenhost")
@pytest.mark.timeout(2400)  # the session's Xen host may boot in this test's setup (6-10 min)
def test_pv_domu_created_by_pvhvm(xen_host: XenHost, kit_for_xen: str) -> None:
    host = xen_host
    host.ssh(f"mkdir -p {DOM0_DIR} && cp --sparse=always {kit_for_xen}/vmlinuz "
             f"{kit_for_xen}/initramfs.cpio.gz {kit_for_xen}/rootfs.ext4 {DOM0_DIR}/ && "
             f"truncate -s 32M {DOM0_DIR}/data.img && "
             "{ ip link show xenbr0 >/dev/null 2>&1 || { ip link add xenbr0 type bridge && "
             "ip link set xenbr0 up; }; }")
    host.put(E2E_CONFIG, f"{DOM0_DIR}/pvplat.cfg")
    before = host.ssh("xenstore-ls -f /local/domain/0/backend 2>/dev/null | sort",
                      check=False).stdout
    started = time.monotonic()
    try:
        # created paused, so the console is attached before the guest prints a thing
        created = pvhvm_in_dom0(host, "create pvplat.cfg --platform xen -p")
        assert created.returncode == 0, created.stderr
        create_s = time.monotonic() - started
        listed = jsonout.result(host.ssh("pvhvm list --json").stdout, "list")
        domid = int(host.ssh("xl domid pvplat").stdout.strip())
        assert [(d["name"], d["domid"], d["state"]) for d in listed] == [
            ("pvplat", domid, "paused")]
        host.ssh(CONSOLE.format(out=f"{DOM0_DIR}/console.txt", pid=f"{DOM0_DIR}/console.pid"))
        time.sleep(3)
        host.ssh("pvhvm unpause pvplat")

        report = guest_report(host)
        mac = jsonout.result(host.ssh("pvhvm network-list pvplat --json").stdout)[0]["mac"]
        # blkfront's and netfront's devices: no PCI or virtio parent, so no driver (report.py)
        assert "blk xvda driver=- size=131072" in report, report
        assert f"net eth0 driver=- mac={mac}" in report, report
        assert "root /dev/xvda fstype=ext4" in report, report
        assert "pci " not in report, report  # a PV domU has no PCI bus at all

        attached = pvhvm_in_dom0(host, f"block-attach pvplat {DOM0_DIR}/data.img,raw,xvdb,w",
                                 timeout=600)
        assert attached.returncode == 0, attached.stderr
        front = f"/local/domain/{domid}/device/vbd/51728"
        back = f"/local/domain/0/backend/vbd/{domid}/51728"
        wait_for("xvdb's blkfront and blkback Connected",
                 lambda: (xs_read(host, f"{front}/state"), xs_read(host, f"{back}/state"))
                 == ("4", "4"), 300)
        # the guest's own view: blkfront's size of xvdb in sectors
        assert xs_read(host, f"{back}/sectors") == str(32 << 11)
        listed_disks = jsonout.result(host.ssh("pvhvm block-list pvplat --json").stdout)
        assert [(d["vdev"], d["driver"]) for d in listed_disks] == [
            ("xvda", f"/local/domain/0/backend/vbd/{domid}/51712 (state 4)"),
            ("xvdb", f"{back} (state 4)"),
        ]

        # pause and unpause: Xen's own view of the domain (xl list's state column)
        host.ssh("pvhvm pause pvplat")
        assert jsonout.result(host.ssh("pvhvm list --json").stdout)[0]["state"] == "paused"
        assert "p" in host.ssh("xl list pvplat").stdout.splitlines()[1].split()[4]
        host.ssh("pvhvm unpause pvplat")
        assert jsonout.result(host.ssh("pvhvm list --json").stdout)[0]["state"] != "paused"

        # block-detach: blkfront lets go of xvdb and libxl removes both ends
        detached = host.ssh("pvhvm block-detach pvplat xvdb", check=False, timeout=400)
        assert detached.returncode == 0, detached.stderr
        wait_for("xvdb's nodes gone", lambda: host.ssh(
            f"xenstore-exists {front} || xenstore-exists {back}", check=False).returncode != 0,
            120)
        assert [d["vdev"] for d in jsonout.result(
            host.ssh("pvhvm block-list pvplat --json").stdout)] == ["xvda"]

        # network-attach and -detach of a second NIC: netfront connects to it, then it goes
        attached = pvhvm_in_dom0(host, "network-attach pvplat bridge=xenbr0", timeout=400)
        assert attached.returncode == 0, attached.stderr
        nics = jsonout.result(host.ssh("pvhvm network-list pvplat --json").stdout)
        assert [n["devid"] for n in nics] == [0, 1], nics
        vif_front = f"/local/domain/{domid}/device/vif/1"
        wait_for("the second vif's netfront Connected",
                 lambda: xs_read(host, f"{vif_front}/state") == "4", 300)
        detached = host.ssh("pvhvm network-detach pvplat 1", check=False, timeout=400)
        assert detached.returncode == 0, detached.stderr
        wait_for("the second vif's nodes gone", lambda: host.ssh(
            f"xenstore-exists {vif_front}", check=False).returncode != 0, 120)
        assert [n["devid"] for n in jsonout.result(
            host.ssh("pvhvm network-list pvplat --json").stdout)] == [0]

        # a killed hotplug script's child, as seen on a loaded host: it inherited libxl's
        # XENBUS_PATH and writes hotplug-error under xvda's backend after libxl removed the
        # domain; pvhvm waits for it and removes what it wrote
        late = f"/local/domain/0/backend/vbd/{domid}/51712/hotplug-error"
        host.ssh(f"XENBUS_PATH=backend/vbd/{domid}/51712 setsid sh -c 'while xenstore-exists "
                 f"/local/domain/{domid}; do sleep 1; done; sleep 3; xenstore-write {late} "
                 "late' </dev/null >/dev/null 2>&1 &")
        down = host.ssh("pvhvm shutdown -w --timeout 300 pvplat", check=False, timeout=400)
        assert down.returncode == 0, down.stderr
        assert (f"note: domain {domid}: removed what libxl's killed hotplug scripts left in "
                f"XenStore: /local/domain/0/backend/vbd/{domid}") in down.stderr, down.stderr
        print(f"pvhvm create took {create_s:.0f} s; the whole PV domU test "
              f"{time.monotonic() - started:.0f} s")
    finally:
        host.ssh("pvhvm destroy pvplat", check=False)
        host.ssh("xl destroy pvplat", check=False)
        host.ssh(f"kill $(cat {DOM0_DIR}/console.pid)", check=False)
    assert "pvplat" not in host.ssh("xl list").stdout
    assert host.ssh("pvhvm list").stdout.splitlines()[1:] == []
    assert host.ssh("xenstore-ls -f /local/domain/0/backend 2>/dev/null | sort",
                    check=False).stdout == before
    assert host.ssh(f"xenstore-exists /local/domain/{domid}", check=False).returncode != 0
    assert not [n for n in host.ssh("ls /sys/class/net").stdout.split()
                if n.startswith(f"vif{domid}.")]
    # the block script's loop devices go when blkback lets go of them, after the domain is
    # gone (seconds later under load): waited for, within a bound
    wait_for("the block script's loop devices released",
             lambda: host.ssh("losetup -a").stdout.strip() == "", 120)
    host.ssh(f"ip link delete xenbr0; rm -rf {DOM0_DIR}", check=False)
