"""The platform interface: the CLI picks a platform and calls it, with fake platforms injected.

The fakes keep their domains in memory and record every call, so these tests say which
platform each command reached and with what; the real platforms are exercised by
tests/xen, tests/runtime and tests/e2e.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pvhvm.cli.main import main
from pvhvm.errors import DomainError
from pvhvm.plan.plan import Plan
from pvhvm.plan.plan import Platform as PlanTarget
from pvhvm.platforms import default_platforms
from pvhvm.platforms.base import (
    Created,
    CreateOptions,
    DomainPlatform,
    Platforms,
    ReportSource,
)
from pvhvm.platforms.libvirt import is_local
from pvhvm.runtime.listing import BlockDevice, NetworkDevice
from pvhvm.runtime.state import DomainRecord, StateStore
from tests import jsonout

CLI_DIR = Path(__file__).resolve().parents[2] / "src" / "pvhvm" / "cli"


class FakePlatform(DomainPlatform):
    """Domains in a dict; lifecycle verbs recorded. ``verbs`` are the verbs it has."""

    plan_target = PlanTarget.QEMU

    def __init__(self, name: str, verbs: set[str], options: set[str] = frozenset(),
                 first_domid: int = 1) -> None:
        self.name = name
        self.verbs = verbs
        self.create_options = frozenset(options)
        self.records: dict[str, DomainRecord] = {}
        self.calls: list[tuple[str, ...]] = []
        self.next_domid = first_domid

    def _verb(self, verb: str, name: str, *extra: str) -> None:
        self.find(name)
        if verb not in self.verbs:
            raise self.not_here(verb, name)
        self.calls.append((verb, name, *extra))

    def realise_warnings(self, plan: Plan, options: CreateOptions) -> list[str]:
        return [f"{self.name} realises {plan.name} its own way"]

    def dry_run(self, plan: Plan, options: CreateOptions) -> dict[str, Any]:
        return {f"{self.name}_would": plan.name}

    def create(self, plan: Plan, options: CreateOptions) -> Created:
        self.calls.append(("create", plan.name, *options.given()))
        record = DomainRecord(
            name=plan.name, domid=self.next_domid, uuid=plan.uuid, platform=self.name,
            memory_mib=plan.memory_mib, vcpus=plan.vcpus, plan=plan.to_json(), argv=[],
            on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot, on_crash=plan.on_crash,
            state="running",
        )
        self.next_domid += 1
        self.records[plan.name] = record
        return Created(record, f"made by {self.name}")

    def holds(self, name: str) -> bool:
        return name in self.records

    def find(self, name: str) -> DomainRecord:
        if name not in self.records:
            raise DomainError(f"no domain named {name!r}")
        return self.records[name]

    def domains(self) -> list[DomainRecord]:
        return sorted(self.records.values(), key=lambda r: r.domid)

    def destroy(self, name: str) -> None:
        self.find(name)
        self.calls.append(("destroy", name))
        del self.records[name]

    def console(self, name: str) -> None:
        self._verb("console", name)

    def shutdown(self, name: str, wait: bool = False, timeout: float = 60.0) -> None:
        self._verb("shutdown", name, f"wait={wait}", f"timeout={timeout:g}")

    def pause(self, name: str) -> None:
        self._verb("pause", name)

    def unpause(self, name: str) -> None:
        self._verb("unpause", name)

    def reboot(self, name: str) -> None:
        self._verb("reboot", name)

    def block_devices(self, name: str) -> list[BlockDevice]:
        self._verb("block-list", name)
        return [BlockDevice(vdev="xvda", devid=51712, type="xenbus", driver=f"{self.name}-blk",
                            target="/img", mode="w")]

    def network_devices(self, name: str) -> list[NetworkDevice]:
        self._verb("network-list", name)
        return [NetworkDevice(devid=0, type="xenbus", driver=f"{self.name}-net",
                              mac="00:16:3e:00:00:01", bridge="xenbr0")]

    def report_source(self, name: str) -> ReportSource:
        raise self.not_here("report", name)


ALL_VERBS = {"console", "shutdown", "pause", "unpause", "reboot", "block-list", "network-list"}


@pytest.fixture
def alpha() -> FakePlatform:
    return FakePlatform("alpha", ALL_VERBS, {"accel", "paused", "console"})


@pytest.fixture
def beta() -> FakePlatform:
    return FakePlatform("beta", {"block-list"}, {"xenstore"}, first_domid=10)


@pytest.fixture
def platforms(alpha: FakePlatform, beta: FakePlatform) -> Platforms:
    return Platforms([alpha, beta])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "g.cfg"
    path.write_text('name = "g"\nbuilder = "hvm"\nmemory = 64\nvif = [""]\n')
    return path


def run(capsys: pytest.CaptureFixture[str], platforms: Platforms,
        *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv), platforms=platforms)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_create_goes_to_the_default_or_the_named_platform(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, alpha: FakePlatform,
    beta: FakePlatform, config: Path, tmp_path: Path,
) -> None:
    code, _, err = run(capsys, platforms, "create", str(config))
    assert code == 0, err
    assert alpha.calls == [("create", "g")] and beta.calls == []
    assert "domain g (id 1) made by alpha" in err
    assert "alpha realises g its own way" in err

    other = tmp_path / "h.cfg"
    other.write_text('name = "h"\nbuilder = "hvm"\n')
    code, out, err = run(capsys, platforms, "create", str(other), "--platform", "beta",
                         "--xenstore", "/x.sock", "--json")
    assert code == 0, err
    assert beta.calls == [("create", "h", "xenstore")]
    assert jsonout.result(out)["platform"] == "beta"


def test_dry_run_asks_the_platform_and_starts_nothing(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, beta: FakePlatform, config: Path,
) -> None:
    code, out, err = run(capsys, platforms, "create", str(config), "--platform", "beta",
                         "-n", "--json")
    assert code == 0, err
    document = jsonout.result(out)
    assert document["beta_would"] == "g"
    assert document["warnings"] == ["beta realises g its own way"]
    assert beta.calls == [] and not beta.records


def test_verbs_reach_the_platform_that_holds_the_domain(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, alpha: FakePlatform,
    beta: FakePlatform, config: Path,
) -> None:
    assert run(capsys, platforms, "create", str(config))[0] == 0
    alpha.calls.clear()
    for argv in (["pause", "g"], ["unpause", "g"], ["reboot", "g"], ["console", "g"],
                 ["shutdown", "g", "-w", "--timeout", "5"]):
        code, _, err = run(capsys, platforms, *argv)
        assert code == 0, (argv, err)
    assert alpha.calls == [("pause", "g"), ("unpause", "g"), ("reboot", "g"), ("console", "g"),
                           ("shutdown", "g", "wait=True", "timeout=5")]
    code, out, _ = run(capsys, platforms, "block-list", "g", "--json")
    assert code == 0 and jsonout.result(out)[0]["driver"] == "alpha-blk"
    code, out, _ = run(capsys, platforms, "network-list", "g")
    assert code == 0 and "alpha-net" in out
    assert beta.calls == []


def test_a_verb_the_platform_lacks_is_one_line(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, beta: FakePlatform, config: Path,
) -> None:
    assert run(capsys, platforms, "create", str(config), "--platform", "beta")[0] == 0
    for verb in ("pause", "unpause", "reboot", "console", "shutdown", "network-list", "report"):
        code, out, err = run(capsys, platforms, verb, "g")
        assert code == 1 and out == ""
        assert err == (f"pvhvm: error: domain 'g' is on the beta platform, which has no "
                       f"'pvhvm {verb}'\n"), verb
    code, out, err = run(capsys, platforms, "migrate", "g", "--to", "elsewhere")
    assert code == 1 and out == ""
    assert err == "pvhvm: error: domain 'g' is on the beta platform, which has no 'pvhvm migrate'\n"
    code, out, _ = run(capsys, platforms, "block-list", "g")
    assert code == 0 and "beta-blk" in out


def test_list_and_destroy_across_platforms(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, alpha: FakePlatform,
    beta: FakePlatform, config: Path, tmp_path: Path,
) -> None:
    other = tmp_path / "h.cfg"
    other.write_text('name = "h"\nbuilder = "hvm"\n')
    assert run(capsys, platforms, "create", str(other), "--platform", "beta")[0] == 0
    assert run(capsys, platforms, "create", str(config))[0] == 0
    code, out, _ = run(capsys, platforms, "list", "--json")
    assert code == 0
    assert [(row["name"], row["domid"]) for row in jsonout.result(out)] == [("g", 1), ("h", 10)]
    code, out, _ = run(capsys, platforms, "list", "-l", "h")
    assert code == 0 and jsonout.result(out)[0]["platform"] == "beta"

    assert run(capsys, platforms, "destroy", "h")[0] == 0
    assert beta.calls[-1] == ("destroy", "h") and ("destroy", "h") not in alpha.calls
    assert not beta.records and list(alpha.records) == ["g"]
    code, _, err = run(capsys, platforms, "destroy", "h")
    assert code == 1 and err == "pvhvm: error: no domain named 'h'\n"
    code, _, err = run(capsys, platforms, "pause", "nobody")
    assert code == 1 and err == "pvhvm: error: no domain named 'nobody'\n"


def test_names_stay_unique_across_platforms(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, alpha: FakePlatform,
    beta: FakePlatform, config: Path,
) -> None:
    assert run(capsys, platforms, "create", str(config))[0] == 0
    code, _, err = run(capsys, platforms, "create", str(config), "--platform", "beta")
    assert code == 1
    assert err.splitlines()[-1] == (
        "pvhvm: error: domain 'g' already exists (on the alpha platform)")
    assert not beta.records and beta.calls == []


def test_options_a_platform_does_not_act_on_are_refused_before_anything(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, alpha: FakePlatform,
    beta: FakePlatform, config: Path,
) -> None:
    code, _, err = run(capsys, platforms, "create", str(config), "--xenstore", "/x.sock")
    assert code == 1 and "--xenstore applies to --platform beta only" in err
    for option in (["--paused"], ["--accel", "tcg"], ["-c"]):
        code, _, err = run(capsys, platforms, "create", str(config), "--platform", "beta",
                           *option)
        assert code == 1 and "applies to --platform alpha only" in err, option
    assert alpha.calls == [] and beta.calls == []
    code, _, err = run(capsys, platforms, "create", str(config), "--platform", "qemu")
    assert code == 2 and "'qemu' is not one of alpha, beta" in err  # a bad choice: usage


def test_registry_rules(alpha: FakePlatform) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        Platforms([alpha, FakePlatform("alpha", set())])
    with pytest.raises(ValueError, match="no platform"):
        Platforms([])
    with pytest.raises(DomainError, match="no platform named 'gamma'"):
        Platforms([alpha]).get("gamma")


def test_built_in_platforms_hold_what_their_records_say(tmp_path: Path) -> None:
    """Each real platform holds exactly the names its own store has; qemu is the default."""
    platforms = default_platforms(StateStore(tmp_path))
    assert platforms.names() == ["qemu", "xen", "libvirt"]
    assert platforms.default.name == "qemu"
    xen = platforms.get("xen")
    records = StateStore(tmp_path / "xen", base=tmp_path)
    records.claim("g")
    assert platforms.locate("g") is xen and platforms.holder("h") is None
    message = str(xen.not_here("pause", "g"))
    assert message.startswith("domain 'g' is on the xen platform") and "xl pause g" in message


def test_cli_holds_no_platform_branch() -> None:
    """cli/ reaches platforms only through pvhvm.platforms: it imports no platform's own
    modules and compares no platform name."""
    private = ("pvhvm.runtime.lifecycle", "pvhvm.xen.domain", "pvhvm.runtime.console",
               "pvhvm.qemu.argv")
    for source in sorted(CLI_DIR.glob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                assert not any(i in private for i in imported), (source.name, node.module)
            if isinstance(node, ast.Compare):
                names = [c.value for c in ast.walk(node)
                         if isinstance(c, ast.Constant) and c.value in ("xen", "qemu")]
                assert not names, (source.name, node.lineno)


def test_libvirt_dry_run_needs_no_daemon(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The libvirt platform's dry run is the domain XML it would start, with the console
    logged under the state directory and the URI it would use; nothing is connected to."""
    monkeypatch.setenv("PVHVM_STATE_DIR", str(tmp_path / "state"))
    config = tmp_path / "g.cfg"
    config.write_text('name = "g"\nbuilder = "hvm"\nvif = ["bridge=nosuchbridge0"]\n')
    with pytest.raises(SystemExit) as info:
        main(["create", str(config), "--platform", "libvirt", "--connect", "qemu:///session",
              "--accel", "tcg", "-n", "--json"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    document = jsonout.result(out)
    assert document["libvirt_uri"] == "qemu:///session"
    root = ET.fromstring(document["libvirt_xml"])
    assert root.get("type") == "qemu"
    log = root.find("devices/serial/log")
    assert log is not None
    assert log.get("file") == str(tmp_path / "state" / "libvirt" / "logs" / "g.console.log")
    assert [i.get("type") for i in root.findall("devices/interface")] == ["user"]
    assert any("nosuchbridge0" in w for w in document["warnings"])
    assert not (tmp_path / "state" / "libvirt" / "domains").exists()


def test_local_and_remote_uris() -> None:
    assert is_local("qemu:///system") and is_local("qemu+unix:///system?socket=/x/sock")
    assert not is_local("qemu+ssh://host/system") and not is_local("qemu+tcp://10.0.0.2/system")


HOTPLUG_VERBS = [
    ["block-attach", "g", "/img/d.img,xvdb,w"], ["block-detach", "g", "xvdb"],
    ["network-attach", "g"], ["network-detach", "g", "1"], ["cd-insert", "g", "hdc", "/i.iso"],
    ["cd-eject", "g", "hdc"],
]


@pytest.mark.parametrize("argv", HOTPLUG_VERBS, ids=lambda a: a[0])
def test_hotplug_verbs_a_platform_lacks_are_one_line(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, config: Path, argv: list[str],
) -> None:
    assert run(capsys, platforms, "create", str(config), "--platform", "beta")[0] == 0
    code, out, err = run(capsys, platforms, *argv)
    assert (code, out) == (1, "")
    assert err == (f"pvhvm: error: domain 'g' is on the beta platform, which has no "
                   f"'pvhvm {argv[0]}'\n")


@pytest.mark.parametrize("argv", HOTPLUG_VERBS[4:], ids=lambda a: a[0])
def test_cd_media_on_xen_say_to_use_xl(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str],
) -> None:
    platforms = default_platforms(StateStore(tmp_path))
    StateStore(tmp_path / "xen", base=tmp_path).claim("g")
    code, out, err = run(capsys, platforms, *argv)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "xen platform" in err and f"xl {argv[0]} g" in err


def test_restore_is_refused_a_name_another_platform_holds(
    capsys: pytest.CaptureFixture[str], platforms: Platforms, alpha: FakePlatform,
    beta: FakePlatform, config: Path,
) -> None:
    """restore checks the name across platforms as create does (Platforms.check_free)."""
    assert run(capsys, platforms, "create", str(config))[0] == 0
    with pytest.raises(DomainError, match=r"domain 'g' already exists \(on the alpha platform\)"):
        platforms.check_free("g", beta)
    platforms.check_free("g", alpha)  # its own store refuses it, atomically
    platforms.check_free("other", beta)
