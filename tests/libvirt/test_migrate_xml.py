"""The libvirt platform's console log across hosts: the file a domain's console goes to (what
``pvhvm report`` reads), and the destination XML of a migration, which drops the log pvhvm
gave libvirt on the way to another host and brings it back on the way home. Pure functions
on domain XML made by pvhvm's exporter; the e2e tests (test_libvirt_hosts.py) run them
against real daemons.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

from pvhvm.config.domain import load_config
from pvhvm.libvirt.xml import domain_xml
from pvhvm.plan.plan import make_plan
from pvhvm.platforms.libvirt import _console_file, _console_log, _destination_xml

ROOT = Path(__file__).resolve().parents[2]
LOG = "/state/libvirt/logs/pv-only.console.log"


def exported(log: str | None, serial: str | None = None) -> str:
    config = load_config(ROOT / "examples" / "pv-only.cfg", {"imagedir": "/images"})
    plan = make_plan(config, check_files=False)
    if serial is not None:
        plan = dataclasses.replace(plan, serial=serial)
    return domain_xml(plan, "qemu", console_log=log).xml


def logs(xml: str) -> list[tuple[str, str | None, str | None]]:
    domain = ET.fromstring(xml)
    return [(port.tag, log.get("file"), log.get("append"))
            for port in domain.find("devices") or [] for log in port.findall("log")]


def test_the_console_file_is_the_log_libvirt_was_given() -> None:
    assert _console_file(ET.fromstring(exported(LOG))) == Path(LOG)
    assert _console_log(ET.fromstring(exported(LOG))) == LOG
    assert _console_file(ET.fromstring(exported(None))) is None  # a remote host's domain


def test_a_file_serial_is_its_own_console_file() -> None:
    xml = exported(LOG, serial="file:/var/tmp/guest.serial")
    assert _console_file(ET.fromstring(xml)) == Path("/var/tmp/guest.serial")


def test_to_another_host_the_log_stays_here() -> None:
    xml = exported(LOG)
    away = _destination_xml(xml, LOG, local=False)
    assert away is not None and logs(away) == []
    assert _console_file(ET.fromstring(away)) is None
    # all else is as it was: the guest sees the same machine
    before = ET.fromstring(xml)
    after = ET.fromstring(away)
    for port in [*before.iter("serial"), *before.iter("console")]:
        for log in port.findall("log"):
            port.remove(log)
    assert ET.tostring(before) == ET.tostring(after)


def test_back_on_this_host_the_log_returns_appending() -> None:
    away = _destination_xml(exported(LOG), LOG, local=False)
    assert away is not None
    home = _destination_xml(away, LOG, local=True)
    assert home is not None and logs(home) == [("serial", LOG, "on")]
    serial = ET.fromstring(home).find("devices/serial")
    assert serial is not None and [child.tag for child in serial][-1] == "target"


def test_unchanged_where_nothing_has_to_change() -> None:
    assert _destination_xml(exported(LOG), LOG, local=True) is None  # this host to this host
    # created on another host: pvhvm gave it no log, and adds none
    assert _destination_xml(exported(None), None, local=True) is None
    assert _destination_xml(exported(None), None, local=False) is None
