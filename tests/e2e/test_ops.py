"""Running guests for real (issue 21, items 2-5 in part), on real guests under TCG: reboot asks
the guest (ACPI) and reset does not; the console log keeps a panic trace across
on_crash=restart; a failed start quotes only its own QEMU output; a named bridge that does not
exist is refused; the VNC display QEMU chose is shown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pvhvm.guest.report import END
from pvhvm.runtime.logs import MARKER_PREFIX, ROTATE_SIZE, current_run
from tests import jsonout
from tests.e2e.conftest import Pvhvm, json_of
from tests.e2e.test_lifecycle import create, listed, record, wait_for
from tests.hosts import processes_mentioning

pytestmark = pytest.mark.e2e


def crash_guest(pvhvm: Pvhvm, name: str) -> None:
    """Panic the guest's kernel from its shell (sysrq c). With on_crash=restart the console
    may close under us as QEMU is replaced: that ends the console, which is fine."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvhvm", "console", name], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=pvhvm.env(),
    )
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(b"\necho c > /proc/sysrq-trigger\n")
        proc.stdin.flush()
        time.sleep(2)
        proc.stdin.write(b"\x1d")
        proc.stdin.flush()
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    proc.wait(timeout=30)


def console_text(pvhvm: Pvhvm, name: str) -> str:
    log = pvhvm.console_log(name)
    return log.read_text(errors="replace") if log.exists() else ""


def test_reboot_asks_the_guest_and_it_comes_back(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    created = json_of(create(pvhvm, domain, imagedir, "rb", "--json"))
    pvhvm.wait_report("rb")
    pvhvm.run("pause", "rb")
    refused = pvhvm.run("reboot", "rb", check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "pvhvm: error: domain 'rb' is paused, so its guest cannot act on the power button "
        "('pvhvm unpause rb' first, or 'pvhvm destroy rb')")
    assert not (record(pvhvm, "rb") or {}).get("reboot_requested")
    pvhvm.run("unpause", "rb")

    pvhvm.run("reboot", "rb")
    wait_for("the report after the reboot",
             lambda: console_text(pvhvm, "rb").count(END) >= 2, 240)
    text = current_run(console_text(pvhvm, "rb"))  # one QEMU run: no marker between boots
    _, _, second = text.partition(END)
    # the guest shut down cleanly (busybox init on the power button, the kernel's power-off)
    assert "reboot: Power down" in second, second[-2000:]
    assert second.index("reboot: Power down") < second.index(END)
    after = record(pvhvm, "rb")
    assert after is not None
    assert (after["domid"], after["uuid"], after["qemu_pid"]) == (
        created["domid"], created["uuid"], created["qemu_pid"])
    assert after["restarts"] == 0 and not after["reboot_requested"]
    wait_for("rb to run", lambda: listed(pvhvm).get("rb") == "r-----", 30)

    # reset is the hard one: no power-off in the guest, and it boots again
    powered_down = console_text(pvhvm, "rb").count("reboot: Power down")
    pvhvm.run("reset", "rb")
    wait_for("the report after the reset",
             lambda: console_text(pvhvm, "rb").count(END) >= 3, 240)
    assert console_text(pvhvm, "rb").count("reboot: Power down") == powered_down
    pvhvm.run("destroy", "rb")
    assert not pvhvm.leftovers("rb")


def test_a_panic_trace_is_kept_across_on_crash_restart(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    create(pvhvm, domain, imagedir, "phoenix2", "on_crash=restart")
    pvhvm.wait_report("phoenix2")
    crash_guest(pvhvm, "phoenix2")
    wait_for("the restart", lambda: (record(pvhvm, "phoenix2") or {}).get("restarts") == 1
             and record(pvhvm, "phoenix2")["state"] == "running", 60)
    restarted = record(pvhvm, "phoenix2")
    assert restarted is not None
    report = pvhvm.run("report", "phoenix2", "--json", timeout=300)  # this run's report
    assert jsonout.result(report.stdout)
    text = console_text(pvhvm, "phoenix2")
    markers = [line for line in text.splitlines() if line.startswith(MARKER_PREFIX)]
    assert len(markers) == 2, markers
    assert markers[1].endswith(f"(QEMU pid {restarted['qemu_pid']}) ---")
    before, _, _ = text.rpartition(markers[1])
    assert "Kernel panic" in before  # the trace of the run that crashed
    assert "Kernel panic" not in current_run(text)
    pvhvm.run("destroy", "phoenix2")


def test_failed_starts_quote_only_their_own_errors(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    not_a_kernel = imagedir / "not-a-kernel"
    not_a_kernel.write_bytes(b"\x7fELF but not really" * 100)
    first = create(pvhvm, domain, imagedir, "twice", f"kernel={not_a_kernel}", "--no-check",
                   check=False)
    assert first.returncode == 1 and "did not start" in first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("pvhvm: error:")]
    assert len(errors) == 1, first.stderr
    assert "note: vif 0: no bridge 'xenbr0'" in first.stderr  # pv-only.cfg's vif names none
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 5900 + 47))
        busy.listen()
        second = create(pvhvm, domain, imagedir, "twice", "vnc=1", "vncunused=0",
                        "vncdisplay=47", "--no-check", check=False)
    assert second.returncode == 1 and "did not start" in second.stderr
    # the first run's QEMU words are in the QEMU log (appended) but not in the second error
    first_words = first.stderr.split("):", 1)[1].strip()
    assert first_words and first_words != "no output"
    assert first_words not in second.stderr, (first.stderr, second.stderr)
    qemu_log = (pvhvm.state / "logs" / "qemu-dm-twice.log").read_text(errors="replace")
    assert first_words.split(" | ")[-1] in qemu_log
    assert not pvhvm.leftovers("twice")


def test_a_named_bridge_that_does_not_exist_is_refused(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    refused = create(pvhvm, domain, imagedir, "nobridge", "vif=['bridge=xenbr1']",
                     check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "pvhvm: error: vif 0: bridge 'xenbr1' does not exist on this host (bridges here: "
        "none); give an existing bridge, or no bridge= for QEMU user networking"), (
        refused.stderr)
    assert "nobridge" not in listed(pvhvm) and not pvhvm.leftovers("nobridge")
    dry = pvhvm.run("create", str(Path(__file__).parents[2] / "examples" / "pv-only.cfg"),
                    f"imagedir={imagedir}", "vif=['bridge=xenbr1']", "--dry-run")
    assert "bridge 'xenbr1' does not exist" in dry.stderr  # a dry run warns


def test_vncdisplay_shows_the_port_qemu_chose(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    with open(imagedir / "vnc.img", "wb") as image:
        image.truncate(1 << 20)
    with socket.socket() as busy:  # display 40 taken: vncunused moves QEMU on
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 5940))
        busy.listen()
        create(pvhvm, domain, imagedir, "seen", "vnc=1", "vncdisplay=40",
               f"disk=['{imagedir}/vnc.img,raw,xvda,w']", "--no-check")
    shown = pvhvm.run("vncdisplay", "seen").stdout.strip()
    host, _, display = shown.rpartition(":")
    assert host == "127.0.0.1" and int(display) > 40
    with socket.create_connection(("127.0.0.1", 5900 + int(display)), timeout=10) as client:
        assert client.recv(12).startswith(b"RFB ")  # QEMU's VNC server answers there
    (row,) = jsonout.result(pvhvm.run("list", "--json", "seen").stdout)
    assert row["vnc"] == shown
    (long,) = jsonout.result(pvhvm.run("list", "-l", "seen").stdout)
    assert long["vnc"]["port"] == 5900 + int(display)
    if not any(shutil.which(tool) for tool in ("vncviewer", "xtightvncviewer", "xvnc4viewer")):
        # no viewer on this host: one line, naming the display to give one
        viewer = pvhvm.run("vncviewer", "seen", check=False)
        assert viewer.returncode == 1 and len(viewer.stderr.strip().splitlines()) == 1
        assert viewer.stderr.strip().endswith(f"domain seen's display is {shown}")
    pvhvm.run("destroy", "seen")


def test_a_big_log_is_rotated_at_the_next_start(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    logs_dir = pvhvm.state / "logs"
    logs_dir.mkdir(mode=0o700, exist_ok=True)
    old = logs_dir / "rot.console.log"
    old.write_bytes(b"an earlier run's output\n" * (ROTATE_SIZE // 20))
    old.chmod(0o600)
    with open(imagedir / "rot.img", "wb") as image:
        image.truncate(1 << 20)
    created = json_of(create(pvhvm, domain, imagedir, "rot", "--json", "--no-check",
                             f"disk=['{imagedir}/rot.img,raw,xvda,w']"))
    rotated = logs_dir / "rot.console.log.1"
    assert rotated.read_bytes().startswith(b"an earlier run's output\n")
    fresh = old.read_text(errors="replace")
    assert fresh.startswith(MARKER_PREFIX + "rot started at ")
    assert f"(QEMU pid {created['qemu_pid']}) ---" in fresh.splitlines()[0]
    for path in (old, rotated, logs_dir / "qemu-dm-rot.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    pvhvm.run("destroy", "rot")


BRIDGE_SCRIPT = r"""
set -e
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$WORK/upper,workdir=$WORK/work" /etc
mount -t sysfs sysfs /sys
ip link add br-t type bridge
ip link set br-t up
set +e
"$PVHVM" create "$CFG" "imagedir=$IMAGEDIR" name=brt "vif=['bridge=br-t']" "$DISK" \
    --accel tcg --no-check >"$WORK/first.out" 2>"$WORK/first.err"
echo $? >"$WORK/first.rc"
mkdir -p /etc/qemu && echo 'allow br-t' >/etc/qemu/bridge.conf
"$PVHVM" create "$CFG" "imagedir=$IMAGEDIR" name=brt "vif=['bridge=br-t']" "$DISK" \
    --accel tcg --no-check >"$WORK/second.out" 2>"$WORK/second.err"
echo $? >"$WORK/second.rc"
ls /sys/class/net/br-t/brif >"$WORK/ports"
"$PVHVM" network-list brt --json >"$WORK/nics.json"
"$PVHVM" destroy brt
ls /sys/class/net/br-t/brif >"$WORK/ports-after"
"""


def test_a_real_bridge_needs_the_helpers_allow_line(
    pvhvm: Pvhvm, imagedir: Path, tmp_path: Path
) -> None:
    """In a network and mount namespace of its own (its own bridge, /etc overlaid so the
    host's is untouched): a bridge that exists but that /etc/qemu/bridge.conf does not allow
    is refused naming that file; allowed, QEMU's bridge helper puts the NIC's tap on it."""
    work = Path(tempfile.mkdtemp(prefix="pvb-", dir="/tmp"))
    try:
        for sub in ("upper", "work", "state"):
            (work / sub).mkdir()
        with open(imagedir / "brt.img", "wb") as image:
            image.truncate(1 << 20)
        env = {**os.environ, "WORK": str(work), "PVHVM_STATE_DIR": str(work / "state"),
               "PVHVM_HOSTD_LINGER": "1", "PVHVM": str(Path(sys.executable).parent / "pvhvm"),
               "CFG": str(Path(__file__).parents[2] / "examples" / "pv-only.cfg"),
               "IMAGEDIR": str(imagedir), "DISK": f"disk=['{imagedir}/brt.img,raw,xvda,w']"}
        probe = subprocess.run(["unshare", "--net", "--mount", "true"], check=False)
        if probe.returncode != 0:
            pytest.skip("cannot make network and mount namespaces here")
        subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                        BRIDGE_SCRIPT], env=env, check=True, timeout=300)
        assert (work / "first.rc").read_text().strip() == "1"
        refused = (work / "first.err").read_text()
        assert refused.strip() == (
            "pvhvm: error: vif 0: bridge 'br-t' exists but QEMU's bridge helper "
            "(/usr/lib/qemu/qemu-bridge-helper) will refuse it: /etc/qemu/bridge.conf cannot "
            "be read; add the line 'allow br-t' to /etc/qemu/bridge.conf"), refused
        assert (work / "second.rc").read_text().strip() == "0", (work / "second.err").read_text()
        assert len((work / "ports").read_text().split()) == 1  # the NIC's tap, on br-t
        (nic,) = jsonout.result((work / "nics.json").read_text())
        assert nic["bridge"] == "br-t"
        assert (work / "ports-after").read_text().split() == []
        assert not Path("/etc/qemu/bridge.conf").exists() or "br-t" not in Path(
            "/etc/qemu/bridge.conf").read_text()
    finally:
        deadline = time.monotonic() + 15  # the namespace's host supervisor lingers 1 s
        while time.monotonic() < deadline and processes_mentioning(str(work)):
            time.sleep(0.2)
        shutil.rmtree(work, ignore_errors=True)

