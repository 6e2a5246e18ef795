"""Step 1 of ``tests/e2e/test_shapes.py`` on its own: boot each cached installed-guest shape on
emulated IDE to multi-user and write the ``ide-boot.json`` record beside its cached disk (the
record that test trusts for that very recipe), with the test's own helpers and assertions.

Each shape is built first when its cached image is missing or stale. A Xen PV guest (xenpv) has
no IDE boot. Usage (root)::

    .venv/bin/python benchmarks/installed-guest/ide_boot_shapes.py lvm xfs btrfs
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pvhvm.guest import shapes
from pvhvm.guest.installed import copy_disk
from pvhvm.guest.report import IDE_CLASS
from tests.e2e.conftest import Pvhvm
from tests.e2e.test_shapes import MULTI_USER, _boot, _config, _disks


def boot_on_ide(name: str) -> None:
    started = time.monotonic()
    guest = shapes.build_shape(shapes.RECIPES[name], progress=print)
    built = time.monotonic() - started
    work = Path(tempfile.mkdtemp(prefix="pvs-", dir="/tmp"))  # short: socket paths
    pvhvm = Pvhvm(work / "state")
    domains: list[str] = []
    try:
        disk = copy_disk(guest, work / "disk.img")
        config = _config(work, f"sh-{name}-ide", disk, pv=False, xen_pv=False)
        report, log, seconds = _boot(pvhvm, domains, config, f"sh-{name}-ide")
    finally:
        for domain in domains:
            pvhvm.run("destroy", domain, check=False)
        shutil.rmtree(work, ignore_errors=True)
    assert MULTI_USER in log, log[-3000:]
    assert report.has_class(IDE_CLASS) and _disks(report) == {"sda": "ata_piix"}, report
    recipe = guest.manifest()["recipe"]
    (guest.directory / "ide-boot.json").write_text(json.dumps(
        {"recipe": recipe, "seconds": seconds, "root": report.root}) + "\n")
    print(f"{name}: build {built:.0f} s (0 when cached), IDE boot to multi-user {seconds:.0f} s, "
          f"root {report.root}")


if __name__ == "__main__":
    for shape_name in sys.argv[1:]:
        if shape_name == "xenpv":
            print("xenpv: a Xen PV guest has no IDE boot")
            continue
        boot_on_ide(shape_name)
