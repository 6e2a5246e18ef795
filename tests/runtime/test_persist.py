"""Defined domains, the name/domid/UUID resolver and domids (issue 21, items 1 and 6): the
store and the CLI verbs that need no guest (define, list --all, autostart, config-update,
edit, undefine). Starting guests is tests/e2e/test_persist.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pvhvm.cli.complete import domain_names
from pvhvm.config.domain import config_from_text
from pvhvm.config.source import ConfigSource
from pvhvm.errors import DomainError
from pvhvm.inspect import checkcache
from pvhvm.plan.plan import default_mac, make_plan
from pvhvm.runtime.persist import (
    Definition,
    Definitions,
    IdentityError,
    Known,
    identity,
    resolve,
)
from pvhvm.runtime.state import DomainRecord, StateStore
from tests import jsonout
from tests.cli_run import run

CONFIG = 'name = "web1"\nbuilder = "hvm"\nmemory = 256\nvcpus = 2\nvif = [ "" ]\n'


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "state"
    monkeypatch.setenv("PVHVM_STATE_DIR", str(root))
    monkeypatch.chdir(tmp_path)
    return root




def source(text: str = CONFIG, file: str = "web1.cfg") -> ConfigSource:
    return ConfigSource(file=file, text=text, directory="/")


# --- the store -----------------------------------------------------------------------------


def test_define_appears_whole_private_and_keeps_its_uuid(state: Path) -> None:
    definitions = Definitions(state)
    kept = str(uuid.uuid4())
    assert definitions.define(Definition("web1", kept, False, source()))
    directory = state / "defined" / "web1"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("source.json", "domain.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert [p.name for p in (state / "defined").iterdir() if p.name.startswith(".")] == []
    definitions.set_autostart("web1", True)
    # a new config for the name: its uuid must be the same; autostart is kept
    assert not definitions.define(Definition("web1", kept, False, source(CONFIG + "#\n")))
    again = definitions.read("web1")
    assert again is not None and again.autostart and again.source.text.endswith("#\n")
    with pytest.raises(DomainError, match=f"already defined with uuid {kept}"):
        definitions.define(Definition("web1", str(uuid.uuid4()), False, source()))
    assert definitions.undefine("web1").uuid == kept
    assert definitions.read("web1") is None and definitions.names() == []


def test_a_definition_that_is_not_pvhvms_is_one_line(state: Path) -> None:
    definitions = Definitions(state)
    definitions.define(Definition("web1", str(uuid.uuid4()), False, source()))
    (state / "defined" / "web1" / "domain.json").write_text('{"uuid": "nope"}')
    with pytest.raises(DomainError, match=r"domain.json is not a pvhvm definition"):
        definitions.read("web1")


def test_identity_config_definition_or_fresh(state: Path) -> None:
    definitions = Definitions(state)
    fresh = {identity("web1", None, definitions, remember=False) for _ in range(3)}
    assert len(fresh) == 3 and not state.exists()  # dry runs: fresh each time, nothing kept
    first = identity("web1", None, definitions)  # the first create: random, then kept
    assert first not in fresh and identity("web1", None, definitions) == first
    assert identity("web1", None, definitions, remember=False) == first
    assert identity("web2", None, definitions) != first
    given = "12345678-1234-1234-1234-123456789abc"
    assert identity("web1", given.upper(), definitions) == given
    kept = str(uuid.uuid4())
    definitions.define(Definition("web1", kept, False, source()))
    assert identity("web1", None, definitions) == kept  # re-creating keeps uuid and MACs
    assert identity("web1", kept, definitions) == kept
    with pytest.raises(DomainError, match=f"defined with uuid {kept}"):
        identity("web1", given, definitions)


def test_resolve_by_name_domid_or_uuid() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    known = [Known("web1", 3, a), Known("7", 9, b), Known("db", None, str(uuid.uuid4()))]
    assert resolve("web1", known) == "web1"
    assert resolve("3", known) == "web1"
    assert resolve("7", known) == "7"  # a name wins over a domid
    assert resolve("9", known) == "7"
    assert resolve(a.upper(), known) == "web1"
    assert resolve(a.replace("-", ""), known) == "web1"
    with pytest.raises(IdentityError, match=r"^no domain named '4', nor with id 4$"):
        resolve("4", known)
    with pytest.raises(IdentityError, match="nor with uuid"):
        resolve(str(uuid.uuid4()), known)
    twice = [Known("x", 1, a), Known("y", 2, a)]
    with pytest.raises(IdentityError, match=r"names several domains \(x, y\)"):
        resolve(a, twice)
    assert isinstance(IdentityError("x"), ValueError)


def _record(name: str, domid: int) -> DomainRecord:
    return DomainRecord(name=name, domid=domid, uuid=str(uuid.uuid4()), platform="qemu",
                        memory_mib=64, vcpus=1, plan={}, argv=[], on_poweroff="destroy",
                        on_reboot="restart", on_crash="destroy")


def test_domids_are_not_reused(state: Path) -> None:
    store = StateStore(state)
    store.make_private()
    with store.locked():
        first = store.next_domid()
        second = store.next_domid()
    assert (first, second) == (1, 2)
    # a new store object (a restarted host supervisor) goes on from the counter
    again = StateStore(state)
    with again.locked():
        assert again.next_domid() == 3
    # a domid in use is skipped; an unreadable counter starts after the highest in use
    (state / "domains" / "a").mkdir()
    again.write(_record("a", 4))
    with again.locked():
        assert again.next_domid() == 5
    (state / "domid").write_text("garbage")
    with again.locked():
        assert again.next_domid() == 5


# --- the CLI ---------------------------------------------------------------------------------


def test_define_list_all_autostart_undefine(
        state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "web1.cfg").write_text(CONFIG)
    code, _, err = run(capsys, "define", "web1.cfg")
    assert code == 0, err
    assert err.startswith("domain web1 defined (uuid ")
    kept = err.split("uuid ")[1].rstrip(")\n")
    stored = json.loads((state / "defined" / "web1" / "source.json").read_text())
    assert stored["text"] == CONFIG and stored["directory"] == str(tmp_path)
    assert domain_names() == ["web1"]  # completes though it is not running
    # redefined with --json: the definition, same uuid, in the envelope
    code, out, err = run(capsys, "define", "web1.cfg", "--json")
    defined = jsonout.result(out, "define")
    assert code == 0 and (defined["name"], defined["uuid"], defined["autostart"]) == (
        "web1", kept, False), err
    code, out, _ = run(capsys, "list")
    assert out.count("\n") == 1  # not running: only with --all
    code, out, _ = run(capsys, "list", "--all")
    assert out.splitlines()[1].split() == ["web1", "-", "256", "2", "------", "0.0"]
    code, out, _ = run(capsys, "list", "--all", "--json")
    assert jsonout.result(out, "list") == [{"name": "web1", "domid": None, "memory_mib": 256, "vcpus": 2,
                                "state": "shut off", "flags": "------", "cpu_seconds": 0.0,
                                "vnc": None}]
    code, out, _ = run(capsys, "list", kept.upper(), "-l")  # named by its uuid
    (entry,) = jsonout.result(out, "list")
    assert entry["uuid"] == kept and entry["autostart"] is False
    assert run(capsys, "autostart", "web1")[0] == 0
    assert Definitions(state).read("web1").autostart  # type: ignore[union-attr]
    assert run(capsys, "autostart", kept, "--disable")[0] == 0
    assert not Definitions(state).read("web1").autostart  # type: ignore[union-attr]
    # the dry run of its file shows the uuid and MACs the defined domain has
    code, out, _ = run(capsys, "create", "web1.cfg", "-n", "--json")
    plan = jsonout.result(out, "create")
    assert plan["uuid"] == kept and plan["vifs"][0]["mac"] == default_mac(kept, 0)
    # a file naming it with another uuid is refused, as libvirt refuses a second uuid
    other = CONFIG + 'uuid = "12345678-1234-1234-1234-123456789abc"\n'
    (tmp_path / "other.cfg").write_text(other)
    code, _, err = run(capsys, "create", "other.cfg", "-n")
    assert code == 1 and f"defined with uuid {kept}" in err and err.count("\n") == 1
    code, _, err = run(capsys, "undefine", "web1")
    assert code == 0 and err == "domain web1 undefined\n"
    assert domain_names() == []
    code, _, err = run(capsys, "undefine", "web1")
    assert code == 1 and err == "pvhvm: error: no domain named 'web1'\n"


def test_two_defines_of_one_name_on_two_hosts_differ(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "web1.cfg").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    macs = []
    for host in ("a", "b"):
        monkeypatch.setenv("PVHVM_STATE_DIR", str(tmp_path / host))
        assert run(capsys, "define", "web1.cfg")[0] == 0
        _, out, _ = run(capsys, "create", "web1.cfg", "-n", "--json")
        plan = jsonout.result(out, "create")
        macs.append((plan["uuid"], plan["vifs"][0]["mac"]))
    assert macs[0][0] != macs[1][0] and macs[0][1] != macs[1][1]


@pytest.mark.parametrize(("text", "message"), [
    ('name = "web1"\nmemory = "lots"\n', "web1.cfg:2:"),
    ('name = "web 1"\n', "not a domain name"),
    ('name = "web1"\nbuilder = "hvm"\ndisk = [ "/no/such.img,raw,xvda,w" ]\n', "/no/such.img"),
])
def test_bad_define_is_one_line_and_keeps_nothing(
        state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        text: str, message: str) -> None:
    (tmp_path / "web1.cfg").write_text(text)
    code, out, err = run(capsys, "define", "web1.cfg")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith("pvhvm: error: ") and message in err
    assert Definitions(state).names() == []


def test_config_update_and_edit_keep_the_old_config_when_the_new_one_is_bad(
        state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "web1.cfg").write_text(CONFIG)
    assert run(capsys, "define", "web1.cfg")[0] == 0
    kept = Definitions(state).read("web1")
    assert kept is not None
    (tmp_path / "bad.cfg").write_text(CONFIG + "vcpus = 0\n")
    code, _, err = run(capsys, "config-update", "web1", "bad.cfg")
    assert code == 1 and "bad.cfg:6:" in err and err.count("\n") == 1, err
    (tmp_path / "renamed.cfg").write_text(CONFIG.replace("web1", "web2"))
    code, _, err = run(capsys, "config-update", "web1", "renamed.cfg")
    assert code == 1 and "names domain 'web2', not 'web1'" in err
    assert Definitions(state).read("web1") == kept
    (tmp_path / "good.cfg").write_text(CONFIG.replace("256", "384"))
    code, _, err = run(capsys, "config-update", "web1", "good.cfg")
    assert code == 0 and err == "domain web1: config updated\n"
    updated = Definitions(state).read("web1")
    assert updated is not None and "384" in updated.source.text and updated.uuid == kept.uuid

    # edit: the editor works on a copy; a bad edit keeps the old config and says why
    editor = tmp_path / "editor"
    editor.write_text(f"#!{sys.executable}\nimport sys, os\n"
                      "p = sys.argv[1]\n"
                      "t = open(p).read()\n"
                      "open(p, 'w').write(t.replace(os.environ['FROM'], os.environ['TO']))\n")
    editor.chmod(0o700)
    monkeypatch.setenv("EDITOR", str(editor))
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("FROM", "memory = 384")
    monkeypatch.setenv("TO", "memory = 'x'")
    code, _, err = run(capsys, "edit", "web1")
    assert code == 1 and err.count("\n") == 1, err
    assert "the edit is refused and domain web1's config is unchanged" in err
    kept_copy = Path(err.split("the edit is kept in ")[1].split(")")[0])
    assert "memory = 'x'" in kept_copy.read_text()
    assert Definitions(state).read("web1") == updated
    monkeypatch.setenv("TO", "memory = 320")
    code, _, err = run(capsys, "edit", "web1")
    assert code == 0, err
    edited = Definitions(state).read("web1")
    assert edited is not None and "memory = 320" in edited.source.text
    assert edited.uuid == kept.uuid and edited.source.directory == str(tmp_path)
    code, _, err = run(capsys, "edit", "web1")  # FROM no longer matches: nothing changes
    assert code == 0 and err == "domain web1: config unchanged\n"
    monkeypatch.setenv("EDITOR", "false")
    code, _, err = run(capsys, "edit", "web1")
    assert code == 1 and "exited with status 1" in err


def test_start_of_what_is_not_defined_and_host_unit(
        state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "start", "nosuch")
    assert code == 1 and err == "pvhvm: error: no domain named 'nosuch'\n"
    code, out, _ = run(capsys, "host", "install-unit", "--print")
    assert code == 0
    assert f"Environment=PVHVM_STATE_DIR={state}" in out
    lines = dict(line.split("=", 1) for line in out.splitlines()
                 if "=" in line and not line.startswith("#"))
    assert lines["ExecStart"].endswith(" host start")
    assert lines["ExecStop"].endswith(" host stop --timeout 300")
    program = lines["ExecStart"].split()[0]
    assert os.access(program, os.X_OK)
    units = state.parent / "units"
    units.mkdir()
    code, _, err = run(capsys, "host", "install-unit", "--dir", str(units))
    assert code == 0 and (units / "pvhvm-host.service").read_text() == out, err
    code, _, err = run(capsys, "host", "install-unit", "--dir", str(units / "nope"))
    assert code == 1 and err.count("\n") == 1 and "no such directory" in err
    # nothing to do: host start and stop succeed and say nothing
    code, out, _ = run(capsys, "host", "start", "--json")
    assert (code, jsonout.result(out, "host start")) == (0, {"done": [], "failed": []})
    code, out, _ = run(capsys, "host", "stop", "--json")
    assert (code, jsonout.result(out, "host stop")) == (0, {"done": [], "failed": []})


def _dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_host_start_removes_what_a_crash_left_and_keeps_definitions(
        state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A domain nobody answers for whose QEMU is gone (the host went down under it) is removed
    at host start without its on_crash (restart here); its definition stays, shut off."""
    store = StateStore(state)
    record = _record("web1", 1)
    record.state, record.on_crash = "running", "restart"
    record.qemu_pid, record.supervisor_pid = _dead_pid(), _dead_pid()
    store.introduce("web1", lambda domid, paths: record)[1].close()
    Definitions(state).define(Definition("web1", record.uuid, False, source()))
    code, out, err = run(capsys, "host", "start", "--json")
    assert code == 0, err
    assert jsonout.result(out, "host start") == {"done": [
        "web1: removed (its QEMU was gone: the host went down under it)"], "failed": []}
    assert store.names() == [] and Definitions(state).names() == ["web1"]
    code, out, _ = run(capsys, "list", "--all", "--json")
    assert [(r["name"], r["state"]) for r in jsonout.result(out, "list")] == [
        ("web1", "shut off")]


def test_undefine_of_a_running_domain_leaves_it_running_transient(
        state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As virsh undefine: the definition goes, the domain runs on (here a record whose owner
    lock this test holds stands for its supervisor)."""
    store = StateStore(state)
    record = _record("web1", 1)
    record.state = "running"
    _, owner = store.introduce("web1", lambda domid, paths: record)
    try:
        Definitions(state).define(Definition("web1", record.uuid, False, source()))
        code, _, err = run(capsys, "undefine", record.uuid)
        assert code == 0 and err == "domain web1 undefined; it runs on as a transient domain\n"
        assert Definitions(state).names() == [] and store.names() == ["web1"]
        code, _, err = run(capsys, "start", "web1")
        assert code == 1 and "is not defined" in err
    finally:
        owner.close()
        store.release("web1")


def test_the_guest_check_cache_does_not_key_on_the_uuid(tmp_path: Path) -> None:
    """A fresh uuid (and MACs) at each create must not make create's guest check run afresh
    each time (inspect/checkcache.py): the check reads disks, not identities."""
    disk = tmp_path / "root.img"
    disk.write_bytes(b"\0" * 4096)
    text = f'name = "web1"\nbuilder = "hvm"\ndisk = [ "{disk},raw,xvda,w" ]\nvif = [ "" ]\n'
    first, second = (make_plan(config_from_text(text, "web1.cfg")) for _ in range(2))
    assert first.uuid != second.uuid and first.vifs[0].mac != second.vifs[0].mac
    assert checkcache.key(first.to_json()) == checkcache.key(second.to_json())
    other = make_plan(config_from_text(text.replace("xvda", "xvdb"), "web1.cfg"))
    assert checkcache.key(other.to_json()) != checkcache.key(first.to_json())
