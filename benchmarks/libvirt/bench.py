"""create → running and destroy: libvirt vs pvhvm's own qemu platform vs the bare QEMU command,
in one run (not a timed test).

The guest is examples/pv-only.cfg on the image kit (TCG). Each repeat, in turn:

* bare QEMU: the argv of ``pvhvm create --dry-run --json`` started by hand, until its QMP
  socket answers ``qmp_capabilities`` (then killed);
* qemu platform: ``pvhvm create`` (returns once its supervisor has QEMU running), then
  ``pvhvm destroy``;
* libvirt platform: ``pvhvm create --platform libvirt --connect URI`` (returns once libvirt
  reports the domain running), then ``pvhvm destroy``;
* virsh: ``virsh create`` of the XML that pvhvm's libvirt platform starts (its dry run),
  then ``virsh destroy``;
* a second host over TCP: ``pvhvm create --platform libvirt --connect qemu+tcp://ADDR/system``
  on a libvirtd in a network namespace (tests/hosts.py, with its own xenbr0 for the NIC),
  then ``pvhvm destroy``;
* live migration: the libvirt platform's domain (the third step's, before its destroy) to
  that host by ``pvhvm migrate NAME --to qemu+tcp://ADDR/system --unsafe`` and back
  (``--migrate-uri tcp://`` this host's end of the link), while the guest boots.

The libvirtd is a private one started for the run (tests/libvirt/daemon.py). Prints and
writes (``--save``) medians and the ratios to the bare QEMU command. Usage::

    .venv/bin/python benchmarks/libvirt/bench.py [--repeat 7] \\
        [--save benchmarks/libvirt/results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pvhvm.bench.toolstack import Cli, qemu_by_hand  # noqa: E402
from pvhvm.guest.kit import build_kit  # noqa: E402
from tests.hosts import NetnsHost  # noqa: E402
from tests.libvirt.daemon import PrivateLibvirtd  # noqa: E402

CONFIG = ROOT / "examples" / "pv-only.cfg"


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--save", type=Path, default=None)
    args = parser.parse_args()
    kit = build_kit(Path.home() / ".cache" / "pvhvm" / "image")
    state = Path(tempfile.mkdtemp(prefix="pvb-", dir="/tmp"))
    imagedir = state / "images"  # guests write to their disk: a copy, not the kit's own
    imagedir.mkdir()
    for source in (kit.vmlinuz, kit.initramfs):
        (imagedir / source.name).symlink_to(source)
    subprocess.run(["cp", "--sparse=always", str(kit.rootfs), str(imagedir / kit.rootfs.name)],
                   check=True)
    cli = Cli(state)
    daemon = PrivateLibvirtd()
    daemon.start()
    host = NetnsHost()
    remote = PrivateLibvirtd(host)
    common = [str(CONFIG), f"imagedir={imagedir}", "--accel", "tcg"]
    samples: dict[str, list[float]] = {k: [] for k in (
        "bare_qemu_create", "qemu_create", "qemu_destroy", "libvirt_create", "libvirt_destroy",
        "virsh_create", "virsh_destroy", "libvirt_tcp_create", "libvirt_tcp_destroy",
        "migrate_to_tcp_host", "migrate_back")}
    try:
        host.start()
        host.add_bridge("xenbr0")  # the config's vif bridge, there
        remote.start()
        back = ["--unsafe", "--migrate-uri", f"tcp://{host.host_address}"]
        _, dry = cli.run("create", *common, "--dry-run", "--json")
        argv = json.loads(dry.stdout)["result"]["qemu_argv"]  # docs/json.md
        xml = state / "pv-only.xml"
        _, lv_dry = cli.run("create", *common, "--platform", "libvirt", "--connect", daemon.uri,
                            "--dry-run", "--json")
        xml.write_text(json.loads(lv_dry.stdout)["result"]["libvirt_xml"])
        for _ in range(args.repeat):
            samples["bare_qemu_create"].append(qemu_by_hand(argv))
            shutil.rmtree(state / "domains" / "pv-only", ignore_errors=True)
            samples["qemu_create"].append(cli.run("create", *common)[0])
            samples["qemu_destroy"].append(cli.run("destroy", "pv-only")[0])
            samples["libvirt_create"].append(cli.run(
                "create", *common, "--platform", "libvirt", "--connect", daemon.uri)[0])
            samples["migrate_to_tcp_host"].append(cli.run(
                "migrate", "pv-only", "--to", remote.tcp_uri, "--unsafe")[0])
            samples["migrate_back"].append(cli.run(
                "migrate", "pv-only", "--to", daemon.uri, *back)[0])
            samples["libvirt_destroy"].append(cli.run("destroy", "pv-only")[0])
            samples["virsh_create"].append(timed(["virsh", "-c", daemon.uri, "create",
                                                  str(xml)]))
            samples["virsh_destroy"].append(timed(["virsh", "-c", daemon.uri, "destroy",
                                                   "pv-only"]))
            samples["libvirt_tcp_create"].append(cli.run(
                "create", *common, "--platform", "libvirt", "--connect", remote.tcp_uri)[0])
            samples["libvirt_tcp_destroy"].append(cli.run("destroy", "pv-only")[0])
    finally:
        remote.stop()
        host.close()
        daemon.stop()
        shutil.rmtree(state, ignore_errors=True)
    medians = {k: round(statistics.median(v), 4) for k, v in samples.items()}
    bare = medians["bare_qemu_create"]
    result = {
        "schema": "pvhvm-bench-libvirt/1", "host": platform.node(), "repeat": args.repeat,
        "guest": "examples/pv-only.cfg, TCG", "median_s": medians,
        "create_ratio_to_bare_qemu": {
            k: round(medians[k] / bare, 2) for k in ("qemu_create", "libvirt_create",
                                                     "virsh_create", "libvirt_tcp_create")},
        "samples_s": {k: [round(x, 4) for x in v] for k, v in samples.items()},
    }
    text = json.dumps(result, indent=2) + "\n"
    sys.stdout.write(text)
    if args.save is not None:
        args.save.write_text(text)


if __name__ == "__main__":
    main()
