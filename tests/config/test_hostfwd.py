"""hostfwd= on vif lines (pvhvm's port forwards of QEMU user networking): the grammar, the
planner's refusals and defaults, the argv QEMU gets, and what the exports say."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.config.domain import config_from_text, load_config
from pvhvm.config.vif import HostForward, VifSpec, format_vif, parse_hostfwd, parse_vif
from pvhvm.errors import PlanError, PvhvmError, SpecError
from pvhvm.libvirt.xml import domain_xml
from pvhvm.plan.plan import DEFAULT_BRIDGE, Plan, Platform, make_plan
from pvhvm.qemu.argv import ArgvOptions, RunPaths, hostfwd_problems, qemu_argv
from pvhvm.qemu.opts import split_option_string
from pvhvm.runtime.hotplug import HotplugError, vif_to_attach
from pvhvm.runtime.state import DomainRecord
from pvhvm.xen.xlcfg import export_xl


def test_forwards_are_typed_and_may_repeat() -> None:
    vif = parse_vif("type=xenbus, hostfwd=tcp:127.0.0.1:2222-:22, hostfwd=udp::5353-10.0.2.15:53")
    assert vif.hostfwd == (
        HostForward("tcp", "127.0.0.1", 2222, 22),
        HostForward("udp", None, 5353, 53, "10.0.2.15"),
    )
    assert parse_hostfwd("::8080-:80") == HostForward("tcp", None, 8080, 80)  # tcp, as QEMU
    assert parse_vif(format_vif(vif)) == vif
    assert format_vif(vif) == ("type=xenbus,hostfwd=tcp:127.0.0.1:2222-:22,"
                               "hostfwd=udp::5353-10.0.2.15:53")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("hostfwd=tcp::0-:22", "host port 0 is out of range (1..65535)"),
        ("hostfwd=tcp::2222-:65536", "guest port 65536 is out of range"),
        ("hostfwd=tcp::ssh-:22", "host port 'ssh' is not a port number"),
        ("hostfwd=sctp::2222-:22", "protocol 'sctp' is not one of tcp, udp"),
        ("hostfwd=tcp:localhost:2222-:22", "host address 'localhost' is not an IPv4 address"),
        ("hostfwd=tcp:127.1:2222-:22", "host address '127.1' is not an IPv4 address"),
        ("hostfwd=tcp:[::1]:2222-:22", "is not [tcp|udp]:[HOSTADDR]:HOSTPORT-"),
        ("hostfwd=tcp::2222-10.0.2.2:22", "guest address 10.0.2.2 is not a guest's address"),
        ("hostfwd=tcp::2222-192.168.1.5:22", "is not a guest's address in QEMU's user network"),
        ("hostfwd=tcp::2222:22", "is not [tcp|udp]:[HOSTADDR]:HOSTPORT-"),
        ("hostfwd=", "hostfwd= needs a value"),
        ("hostfwd=tcp::2222-:22,hostfwd=tcp:127.0.0.1:2222-:80", "tcp host port 2222 is "
         "forwarded twice"),
    ],
)
def test_bad_forwards_are_refused_naming_the_part(spec: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_vif(spec)
    assert words in str(info.value)


def test_the_same_port_of_two_protocols_or_addresses_is_two_forwards() -> None:
    vif = parse_vif("hostfwd=tcp:127.0.0.1:53-:53,hostfwd=udp:127.0.0.1:53-:53,"
                    "hostfwd=tcp:127.0.0.2:53-:54")
    assert len(vif.hostfwd) == 3


@given(st.text(max_size=40))
def test_the_forward_parser_raises_only_spec_error(text: str) -> None:
    try:
        parse_hostfwd(text)
    except SpecError:
        pass


@given(st.sampled_from(["tcp", "udp"]), st.sampled_from([None, "127.0.0.1", "0.0.0.0"]),
       st.integers(1, 65535), st.integers(1, 65535),
       st.sampled_from([None, "10.0.2.15", "10.0.2.100"]))
def test_forward_round_trip(protocol: str, host: str | None, host_port: int, guest_port: int,
                            guest: str | None) -> None:
    forward = HostForward(protocol, host, host_port, guest_port, guest)
    assert parse_hostfwd(str(forward)) == forward
    assert parse_vif(format_vif(VifSpec(hostfwd=(forward,)))).hostfwd == (forward,)


def _config(tmp_path: Path, vifs: str) -> Path:
    path = tmp_path / "g.cfg"
    path.write_text(f'name = "g"\nbuilder = "hvm"\nmemory = 128\nvif = [ {vifs} ]\n')
    return path


def _plan(tmp_path: Path, vifs: str, platform: Platform = Platform.QEMU,
          skip: bool = False) -> Plan:
    return make_plan(load_config(_config(tmp_path, vifs), {}), platform,
                     skip_unsupported=skip)


def test_an_empty_host_address_is_this_host_only(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "'type=xenbus,hostfwd=tcp::2222-:22,hostfwd=udp:0.0.0.0:53-:53'")
    (vif,) = plan.vifs
    assert [str(f) for f in vif.hostfwd] == ["tcp:127.0.0.1:2222-:22", "udp:0.0.0.0:53-:53"]
    assert plan.to_json()["vifs"][0]["hostfwd"] == ["tcp:127.0.0.1:2222-:22",
                                                    "udp:0.0.0.0:53-:53"]
    assert "hostfwd" not in _plan(tmp_path, "'type=xenbus'").to_json()["vifs"][0]


@pytest.mark.parametrize(
    ("vifs", "words"),
    [
        ("'bridge=br0,hostfwd=tcp::2222-:22'", "bridge=br0 puts this vif on a bridge"),
        ("'bridge=xenbr0,hostfwd=tcp::2222-:22'", "bridge=xenbr0 puts this vif on a bridge"),
        ("'hostfwd=tcp::2222-:22', 'hostfwd=tcp:127.0.0.1:2222-:80'",
         "tcp host port 2222 is forwarded by vif 0 at"),
        ("'hostfwd=tcp::70000-:22'", "host port 70000 is out of range"),
    ],
)
def test_plan_refusals_name_file_line_and_column(tmp_path: Path, vifs: str, words: str) -> None:
    with pytest.raises(PvhvmError) as info:
        _plan(tmp_path, vifs)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'g.cfg'}:4:"), message
    assert words in message and "\n" not in message


def test_xen_refuses_forwards_and_export_xl_notes_them(tmp_path: Path) -> None:
    vifs = "'type=xenbus,hostfwd=tcp::2222-:22'"
    with pytest.raises(PvhvmError) as info:
        _plan(tmp_path, vifs, Platform.XEN)
    assert "the xen platform has not: xl puts every vif on a bridge" in str(info.value)
    plan = _plan(tmp_path, vifs, Platform.XEN, skip=True)  # as export-xl plans
    assert any("hostfwd= forwards ports" in w and "left out" in w for w in plan.warnings)
    exported = export_xl(plan)
    assert "hostfwd" not in exported.text.split("# NOTE")[0]  # xl would refuse the key
    assert any("hostfwd=tcp:127.0.0.1:2222-:22 left out" in n for n in exported.notes)


def test_export_libvirt_says_it_cannot_express_a_forward(tmp_path: Path) -> None:
    exported = domain_xml(_plan(tmp_path, "'type=xenbus,hostfwd=tcp::2222-:22'"), "qemu")
    (note,) = [n for n in exported.notes if "hostfwd" in n]
    assert "passt backend" in note and "portForward" not in exported.xml.split("-->")[-1]


PATHS = RunPaths(Path("/r/qmp"), Path("/r/ctl"), Path("/r/con"), Path("/r/log"))


def _netdevs(argv: list[str]) -> list[list[str]]:
    return [split_option_string(v) for o, v in itertools.pairwise(argv) if o == "-netdev"]


def test_qemu_gets_each_forward_on_the_user_netdev(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "'type=xenbus,hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53', ''")
    argv = qemu_argv(plan, PATHS, ArgvOptions())
    assert _netdevs(argv) == [
        ["user", "id=net0", "hostfwd=tcp:127.0.0.1:2222-:22", "hostfwd=udp:127.0.0.1:5353-:53"],
        ["user", "id=net1"],
    ]
    assert json.dumps(argv).count("hostfwd") == 2


def test_a_forward_on_a_default_bridge_this_host_has_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "'type=xenbus,hostfwd=tcp::2222-:22'")
    assert plan.vifs[0].bridge == DEFAULT_BRIDGE
    bridges = frozenset({DEFAULT_BRIDGE})
    (problem,) = hostfwd_problems(plan.vifs, bridges)
    assert "names no bridge and so is on 'xenbr0'" in problem
    with pytest.raises(PlanError):
        qemu_argv(plan, PATHS, ArgvOptions(bridges=bridges))
    assert hostfwd_problems(plan.vifs, frozenset()) == []


def test_network_attach_refuses_a_forward_rather_than_dropping_it() -> None:
    plan = make_plan(config_from_text('name = "g"\nbuilder = "hvm"\n', "g.cfg"),
                     check_files=False)
    record = DomainRecord(
        name="g", domid=1, uuid=plan.uuid, platform="qemu", memory_mib=plan.memory_mib,
        vcpus=plan.vcpus, plan=plan.to_json(), argv=[], on_poweroff="destroy",
        on_reboot="restart", on_crash="destroy", state="running")
    with pytest.raises(HotplugError) as info:
        vif_to_attach("type=xenbus,hostfwd=tcp::2222-:22", record)
    assert "taken at create only" in str(info.value)
    assert vif_to_attach("type=xenbus", record).hostfwd == ()
