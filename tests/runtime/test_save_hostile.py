"""Hostile save files and migration preambles (issue 18): nothing in a file decides what
runs. A forged file starts nothing and touches nothing; restore and migrate-receive start
only what their own planner makes of the config a file carries (runtime/replan.py).

No guest here: every file below is refused before a QEMU or a supervisor would start (the
end-to-end restore and migration of a real guest are tests/e2e/test_save_migrate.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.cli.main import main
from pvhvm.config.source import ConfigSource
from pvhvm.errors import InputError, PvhvmError
from pvhvm.guest.kit import Kit
from pvhvm.plan.plan import Plan
from pvhvm.qemu.argv import qemu_argv
from pvhvm.runtime import hotplug, lifecycle, migrate, resize
from pvhvm.runtime.incoming import image_of, realise
from pvhvm.runtime.replan import ReplanError, check_savable, plan_source, replan
from pvhvm.runtime.save import check_restorable, read_save_file, restore
from pvhvm.runtime.savefile import (
    MAGIC,
    PREFIX,
    DomainImage,
    HotplugSpec,
    SavedFile,
    SaveFileError,
    decode_header,
    decode_prefix,
    encode_prefix,
    encode_trailer,
    header_bytes,
)
from pvhvm.runtime.state import DomainRecord, StateStore

UUID = "6f0e7c2a-0000-4000-8000-0000000000aa"
STREAM = b"QEVM" + bytes(4092)


@pytest.fixture
def state() -> Iterator[Path]:
    """A state directory short enough for socket paths, not yet made."""
    parent = Path(tempfile.mkdtemp(prefix="pvh-", dir="/tmp"))
    yield parent / "state"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def trap(tmp_path: Path) -> dict[str, Path]:
    """A script that leaves a mark when anything runs it, and that mark."""
    mark = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {mark}\n")
    script.chmod(0o755)
    return {"script": script, "mark": mark}


def processes_of(directory: Path) -> list[int]:
    """Processes (QEMU, supervisors, a shell) whose command line names ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(directory).encode() in (
                    proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def nothing_happened(state: Path, trap: dict[str, Path]) -> None:
    assert not state.exists(), "a state directory was made"
    assert processes_of(state.parent) == []
    assert not trap["mark"].exists(), "the script ran"


def with_trailer(prefix: bytes, header: bytes, stream: bytes = STREAM) -> bytes:
    digest = hashlib.sha256(header + stream).digest()
    return prefix + header + stream + encode_trailer(len(stream), digest)


def raw_file(path: Path, version: int, document: object) -> Path:
    """A save file holding ``document`` as its header, with a trailer that checks out
    (anyone can compute it: it is a checksum, not a signature)."""
    header = json.dumps(document, sort_keys=True).encode()
    path.write_bytes(with_trailer(PREFIX.pack(MAGIC, version, len(header)), header))
    path.chmod(0o600)
    return path


def save_file(path: Path, image: DomainImage) -> Path:
    path.write_bytes(with_trailer(encode_prefix(image)[:PREFIX.size], header_bytes(image)))
    path.chmod(0o600)
    return path


def config_text(disk: Path, extra: str = "") -> str:
    return (f'name = "g"\nuuid = "{UUID}"\nbuilder = "hvm"\nmemory = 128\nmaxmem = 256\n'
            f'vcpus = 1\nmaxvcpus = 2\ndisk = ["{disk},raw,xvda,w,type=xenbus"]\n'
            f'vif = ["type=xenbus"]\n{extra}')


def good_image(tmp_path: Path, **changes: Any) -> DomainImage:
    """What ``pvhvm save`` writes for a domain created from :func:`config_text`."""
    disk = tmp_path / "root.img"
    if not disk.exists():
        disk.write_bytes(bytes(8192))
    source = ConfigSource(file="g.cfg", text=config_text(disk), directory=str(tmp_path))
    plan = plan_source(source)
    image = DomainImage(
        name="g", uuid=UUID, platform="qemu", source=source, memory_kib=128 * 1024, vcpus=1,
        on_poweroff="destroy", on_reboot="restart", on_crash="destroy", accel="tcg",
        hotplugged=(), media={},
        devices=("disk xvda 51712", f"vif 0 {plan.vifs[0].mac}"),
        files=(SavedFile("disk xvda", str(disk), 8192),))
    return dataclasses.replace(image, **changes)


# --- the reproduction: a forged file with a command line ----------------------------------


def forged_argv(trap: dict[str, Path]) -> list[list[str]]:
    return [
        ["/bin/sh", "-c", f"{trap['script']}"],
        ["qemu-system-x86_64", "-netdev", f"tap,id=n0,script={trap['script']}",
         "-device", "virtio-net-pci,netdev=n0", "-drive", "file=/etc/shadow,format=raw"],
    ]


def format1_document(argv: list[str]) -> dict[str, Any]:
    """A header exactly as pvhvm's format 1 wrote it (every field, keys sorted, so its
    trailer checks out there too): a plan and an argv, which format 1 started."""
    return {
        "name": "g", "uuid": UUID, "platform": "qemu", "memory_mib": 128, "vcpus": 1,
        "plan": {"disks": [{"vdev": "xvda", "target": "/etc/shadow"}], "boot": {}},
        "argv": argv, "on_poweroff": "destroy", "on_reboot": "restart",
        "on_crash": "destroy", "accel": "tcg", "console": None, "hotplugged": [],
        "run_paths": {}, "files": [{"what": "disk xvda", "path": "/etc/shadow",
                                    "size": os.stat("/etc/shadow").st_size}],
        "qemu_version": "7.2.0", "saved_from": "elsewhere", "vncpasswd": None,
        "saved_at": 0.0, "extra": {},
    }


@pytest.mark.parametrize("which", [0, 1])
def test_a_forged_format1_file_starts_nothing(tmp_path: Path, state: Path,
                                              trap: dict[str, Path], which: int) -> None:
    argv = forged_argv(trap)[which]
    path = raw_file(tmp_path / "forged.save", 1, format1_document(argv))
    with pytest.raises(SaveFileError) as caught:
        restore(path, StateStore(state))
    message = str(caught.value)
    assert message.startswith(f"{path}: made by an older pvhvm (format 1): it carries a QEMU "
                              "command line, which pvhvm no longer starts")
    assert "\n" not in message
    nothing_happened(state, trap)


def test_a_format2_header_with_an_argv_is_refused(tmp_path: Path, state: Path,
                                                  trap: dict[str, Path]) -> None:
    document = {**good_image(tmp_path).to_json(), "argv": forged_argv(trap)[0]}
    path = raw_file(tmp_path / "forged.save", 2, document)
    with pytest.raises(SaveFileError, match="carries a QEMU command line"):
        restore(path, StateStore(state))
    document = {**good_image(tmp_path).to_json(), "qemu_binary": "/bin/sh"}
    path = raw_file(tmp_path / "forged.save", 2, document)
    with pytest.raises(SaveFileError, match="a field this pvhvm does not know: 'qemu_binary'"):
        restore(path, StateStore(state))
    nothing_happened(state, trap)


def test_the_cli_says_one_line(tmp_path: Path, state: Path, trap: dict[str, Path],
                               capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVHVM_STATE_DIR", str(state))
    path = raw_file(tmp_path / "forged.save", 1, format1_document(forged_argv(trap)[1]))
    with pytest.raises(SystemExit) as exited:
        main(["restore", str(path)])
    err = capsys.readouterr().err
    assert exited.value.code == 1
    assert err.count("\n") == 1 and err.startswith("pvhvm: error: ") and "older pvhvm" in err
    nothing_happened(state, trap)


# --- a forged config: only what a config file could do -------------------------------------


@pytest.mark.parametrize(("text", "words"), [
    ('name = "g"\nimport os\n', r"g.cfg:2:1: .*import"),
    ('name = __import__("os").system("touch /tmp/pvhvm-pwned")\n', r"g.cfg:1:8: .*call"),
    ('name = "g"\nmemory = [[[[\n', r"g.cfg:2"),
    ("<domain type='kvm'><name>g</name><devices><emulator>/bin/sh</emulator>"
     "<disk type='file'><source file='/etc/shadow'/>", r"g.cfg"),
])
def test_a_config_that_does_not_parse_starts_nothing(
        tmp_path: Path, state: Path, trap: dict[str, Path], text: str, words: str) -> None:
    image = good_image(tmp_path, source=ConfigSource(file="g.cfg", text=text,
                                                     directory=str(tmp_path)))
    path = save_file(tmp_path / "g.save", image)
    with pytest.raises(ReplanError, match=f"{path}: the saved domain's config does not plan "
                                          f"here: {words}") as caught:
        restore(path, StateStore(state))
    assert "\n" not in str(caught.value)
    assert not Path("/tmp/pvhvm-pwned").exists()
    nothing_happened(state, trap)


def test_a_device_model_or_vif_script_in_the_config_runs_nothing(
        tmp_path: Path, trap: dict[str, Path], state: Path) -> None:
    """device_model and a vif's script= are Xen's; on QEMU nothing runs them: the argv a
    restore makes for such a config has neither (the plan decides, not the file)."""
    disk = tmp_path / "root.img"
    disk.write_bytes(bytes(8192))
    text = config_text(disk, f'device_model = "{trap["script"]}"\n').replace(
        'vif = ["type=xenbus"]', f'vif = ["script={trap["script"]}"]')
    image = good_image(tmp_path, source=ConfigSource(file="g.cfg", text=text,
                                                     directory=str(tmp_path)))
    replanned = replan(image, "g.save")
    store = StateStore(state)
    record = realise(image, replanned, 1, store.paths("g"), store)
    assert record.argv[0] == "qemu-system-x86_64"
    assert not [a for a in record.argv if str(trap["script"]) in a or "tap" in a]
    assert "-netdev" in record.argv and "user,id=net0" in record.argv
    nothing_happened(state, trap)


def test_a_file_another_user_could_have_written_is_refused(
        tmp_path: Path, state: Path, trap: dict[str, Path]) -> None:
    """A local user's forged file names /etc/shadow as a disk: a config could say that, so
    the file's owner decides. Restore takes only files of the invoking user or root that no
    one else may write (as OpenSSH's StrictModes)."""
    shadow = good_image(tmp_path, source=ConfigSource(
        file="g.cfg", directory=str(tmp_path),
        text=f'name = "g"\nuuid = "{UUID}"\nbuilder = "hvm"\nmemory = 128\n'
             'disk = ["/etc/shadow,raw,xvda,w"]\n'),
        devices=("disk xvda 51712",),
        files=(SavedFile("disk xvda", "/etc/shadow", os.stat("/etc/shadow").st_size),))
    path = save_file(tmp_path / "g.save", shadow)
    path.chmod(0o666)
    with pytest.raises(SaveFileError, match=r"writable by other users \(mode 0666\)"):
        restore(path, StateStore(state))
    path.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        with pytest.raises(SaveFileError, match="owned by uid 65534, not by you"):
            restore(path, StateStore(state))
        with pytest.raises(SaveFileError, match="owned by uid 65534"):
            read_save_file(path)
    nothing_happened(state, trap)


# --- what the image adds to the plan: each change checked as it was when made ------------


@pytest.mark.parametrize(("changes", "words"), [
    ({"memory_kib": 8 * 1024}, r"memory target 8192 KiB is outside the domain's limits "
                               r"\(16 MiB to maxmem = 256 MiB\)"),
    ({"memory_kib": 257 * 1024}, "outside the domain's limits"),
    ({"vcpus": 0}, r"0 vCPUs is outside the domain's limits \(1 to maxvcpus = 2\)"),
    ({"vcpus": 64}, "64 vCPUs is outside"),
    ({"name": "other"}, "the image says name 'other', its config plans name 'g'"),
    ({"on_crash": "preserve"}, "on_crash 'preserve'"),
    ({"devices": ("disk xvda 51712",)}, "are not the devices the saved state belongs to"),
    ({"files": ()}, "the files its plan opens are not the files the image lists"),
    ({"files": (SavedFile("disk xvda", "/etc/shadow", 1),)}, "are not the files"),
    ({"media": {"xvda": "/etc/shadow"}}, "'xvda', which is not a CD drive"),
    ({"hotplugged": (HotplugSpec("disk", "/etc/shadow,raw,xvdb,w", "hotplug1", 51728,
                                 vdev="xvdb", queues=1),)},
     "devices its config and hot-plugged specs plan"),
    ({"hotplugged": (HotplugSpec("disk", "x,raw,xvdb,w,junk=1", "hotplug1", 51728,
                                 vdev="xvdb", queues=1),)},
     r"hot-plugged disk 'x,raw,xvdb,w,junk=1': disk spec"),
    ({"hotplugged": (HotplugSpec("disk", "/nonexistent.img,raw,xvdb,w", "hotplug1", 51728,
                                 vdev="xvdb", queues=1),)}, "does not exist"),
    ({"hotplugged": (HotplugSpec("disk", "root.img,raw,hdb,w", None, 832, vdev="hdb"),)},
     "names slot None, which is not a free hotplug port"),
    ({"hotplugged": (HotplugSpec("vif", "devid=1", "pcie.0", 1, mac="00:16:3e:00:00:01"),)},
     "names slot 'pcie.0'"),
    ({"hotplugged": (HotplugSpec("vif", "devid=1,type=ioemu", "hotplug1", 1,
                                 mac="00:16:3e:00:00:01"),)}, "emulated NIC cannot be"),
    ({"hotplugged": (HotplugSpec("vif", "devid=1,mac=00:16:3e:00:00:09", "hotplug1", 1,
                                 mac="00:16:3e:00:00:01"),)}, "not as the devid 1 MAC"),
])
def test_an_image_that_disagrees_with_its_plan_starts_nothing(
        tmp_path: Path, state: Path, trap: dict[str, Path], changes: dict[str, Any],
        words: str) -> None:
    path = save_file(tmp_path / "g.save", good_image(tmp_path, **changes))
    with pytest.raises(ReplanError, match=words) as caught:
        restore(path, StateStore(state))
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
    nothing_happened(state, trap)


def test_a_receiver_refuses_a_forged_preamble_in_one_line(
        tmp_path: Path, state: Path, trap: dict[str, Path]) -> None:
    """migrate-receive: the sender's preamble is planned on the receiving host as a save
    file is; a refusal is said on the channel and nothing is started."""
    for data in (
        encode_prefix(good_image(tmp_path, vcpus=9)),
        PREFIX.pack(MAGIC, 1, 2) + b"{}",
    ):
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        os.write(stdin_w, data)
        os.close(stdin_w)
        channel = migrate.ReceiverChannel(stdin_r, stdout_w)

        def receive(image: DomainImage, channel: migrate.ReceiverChannel = channel) -> str:
            return migrate.receive(image, channel, StateStore(state))

        with pytest.raises(PvhvmError):
            migrate.serve(channel, receive)
        os.close(stdout_w)
        said = os.read(stdout_r, 4096).decode()
        for fd in (stdin_r, stdout_r):
            os.close(fd)
        assert said.count("\n") == 1 and said.startswith("error: ")
        assert "older pvhvm" in said or "vCPUs is outside" in said
    nothing_happened(state, trap)


# --- the round trip: what create made, a restore makes again ------------------------------


def test_replan_makes_the_argv_create_and_the_verbs_made(tmp_path: Path, state: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A record as create and the hotplug and resize verbs leave it, saved and planned
    again: the same argv (hot-plugged devices included, in attach order; -smp as vcpu-set
    left it), plan and memory target."""
    monkeypatch.setattr(lifecycle, "host_bridges", lambda: frozenset())
    image = good_image(tmp_path)
    store = StateStore(state)
    paths = store.paths("g")
    plan: Plan = plan_source(image.source)
    options = lifecycle.argv_options(plan, lifecycle.CreateOptions(accel="tcg"), store)
    (tmp_path / "data.img").write_bytes(bytes(4096))
    created = DomainRecord(
        name="g", domid=1, uuid=UUID, platform="qemu", memory_mib=128, vcpus=1,
        plan=plan.to_json(), argv=qemu_argv(plan, lifecycle.run_paths(paths), options),
        on_poweroff="destroy", on_reboot="restart", on_crash="destroy")
    paths.directory.mkdir(parents=True)
    lifecycle.write_source(paths.directory, image.source)  # as create keeps it
    # what block-attach, network-attach and mem-set record (runtime/hotplug.py, resize.py)
    disk = hotplug.disk_to_attach(str(tmp_path / "data.img") + ",raw,xvdb,w", created)
    disk_argv = hotplug.disk_argv(disk, 1, "hotplug1")
    created.plan["disks"].append(hotplug.disk_json(disk))
    created.argv = hotplug.before_tail(created.argv, disk_argv)
    created.hotplugged.append({"kind": "disk", "vdev": "xvdb", "devid": disk.devid,
                               "slot": "hotplug1", "argv": disk_argv, "queues": 1,
                               "spec": str(tmp_path / "data.img") + ",raw,xvdb,w",
                               "directory": "/"})
    vif = hotplug.vif_to_attach("", created)
    vif_argv = hotplug.vif_argv(vif, "hotplug2", frozenset())
    created.plan["vifs"].append(hotplug.vif_json(vif))
    created.argv = hotplug.before_tail(created.argv, vif_argv)
    created.hotplugged.append({"kind": "vif", "devid": vif.devid, "mac": vif.mac,
                               "slot": "hotplug2", "argv": vif_argv, "directory": "/",
                               "spec": hotplug.recorded_vif_spec("", vif)})
    resize.record_memory(created, 100 * 1024)
    resize.record_vcpus(created, 2)  # vcpu-set 2: the record and -smp, as resize.vcpu_set
    created.argv = resize.smp_argv(created.argv, 2)
    saved = image_of(created, paths)
    assert '"argv"' not in json.dumps(saved.to_json())
    again = decode_header(header_bytes(saved))
    assert again == saved
    replanned = replan(again, "g.save")
    restored = realise(again, replanned, 2, paths, store)
    assert restored.argv == created.argv
    assert restored.memory_mib == 100 and resize.target_kib(restored) == 100 * 1024
    assert restored.vcpus == 2 and "-smp" in restored.argv
    assert restored.argv[restored.argv.index("-smp") + 1] == "2,maxcpus=2"
    assert "num-queues=1" in " ".join(restored.argv)  # the queues the disks were made with
    assert restored.plan == created.plan
    assert [e["spec"] for e in restored.hotplugged] == [e["spec"] for e in created.hotplugged]
    # the vncpasswd a config may hold stays out of record.json, in the 0600 source.json
    assert (paths.directory / "source.json").stat().st_mode & 0o777 == 0o600
    assert "source" not in restored.to_json()


def test_a_domain_of_an_older_pvhvm_cannot_be_saved(tmp_path: Path) -> None:
    record = DomainRecord(
        name="g", domid=1, uuid=UUID, platform="qemu", memory_mib=128, vcpus=1, plan={},
        argv=["qemu-system-x86_64"], on_poweroff="destroy", on_reboot="restart",
        on_crash="destroy")
    with pytest.raises(ReplanError, match="created by an older pvhvm, whose record keeps no "
                                          "config to plan it from: it cannot be saved"):
        check_savable(record, tmp_path, "saved")
    lifecycle.write_source(tmp_path, ConfigSource(file="g.cfg", text=""))
    assert check_savable(record, tmp_path, "saved").file == "g.cfg"
    record.hotplugged = [{"kind": "vif", "devid": 1, "slot": "hotplug1", "argv": ["-netdev"]}]
    with pytest.raises(ReplanError, match="hot-plugged by an older pvhvm"):
        check_savable(record, tmp_path, "migrated")
    record.hotplugged = []
    record.releasing = [{"device": "vif-1", "slot": "hotplug1", "command": "netdev_del",
                         "arguments": {"id": "net1"}}]
    with pytest.raises(ReplanError, match="detached with --force that the guest has not "
                                          "released yet: it cannot be saved"):
        check_savable(record, tmp_path, "saved")


# --- the header decoder never fails in another way ----------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=6),
    max_leaves=30)


def near_image() -> dict[str, Any]:
    return DomainImage(
        name="g", uuid=UUID, platform="qemu",
        source=ConfigSource(file="g.cfg", text='name = "g"\n'), memory_kib=131072, vcpus=1,
        on_poweroff="destroy", on_reboot="restart", on_crash="destroy", accel="tcg",
        hotplugged=(HotplugSpec("vif", "devid=1", "hotplug1", 1, mac="00:16:3e:00:00:01"),),
        media={"hdc": ""}, devices=("vif 1 00:16:3e:00:00:01",),
        files=(SavedFile("disk xvda", "/x", 1),)).to_json()


@settings(deadline=None)
@given(st.one_of(
    JSON,
    st.dictionaries(st.sampled_from(sorted(near_image())), JSON, max_size=20),
    st.builds(lambda key, value: {**near_image(), key: value},
              st.sampled_from(sorted(near_image())), JSON),
    st.builds(lambda key, value: {**near_image(), "source": {**near_image()["source"],
                                                             key: value}},
              st.sampled_from(sorted(near_image()["source"])), JSON),
    st.builds(lambda key, value: {**near_image(), "hotplugged": [
        {**near_image()["hotplugged"][0], key: value}]},
              st.sampled_from(sorted(near_image()["hotplugged"][0])), JSON),
))
def test_the_header_decoder_gives_an_image_or_one_error(document: object) -> None:
    try:
        header = json.dumps(document, sort_keys=True).encode()
    except (ValueError, OverflowError):
        return
    try:
        image = decode_header(header)
    except SaveFileError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(image, DomainImage)
    assert decode_header(header_bytes(image)) == image
    decoded = decode_prefix(encode_prefix(image))
    assert not isinstance(decoded, type(None)) and decoded[0] == image  # type: ignore[index]


def test_an_image_round_trips_and_refuses_what_it_does_not_know() -> None:
    document = near_image()
    assert decode_header(json.dumps(document).encode()).to_json() == document
    for key, value, words in [
        ("vcpus", True, "'vcpus' is not a whole number"),
        ("accel", "qemu", "'accel' is not one of kvm, tcg"),
        ("source", {**document["source"], "directory": "relative"}, "not an absolute"),
        ("source", {**document["source"], "text": "x" * (1 << 21)}, "larger than a config"),
        ("hotplugged", [{"kind": "pci", "spec": "", "slot": None, "devid": 0}], "kind 'pci'"),
        ("files", [{"what": "k", "path": "/x", "size": -1}], "not {what, path, size}"),
    ]:
        with pytest.raises(InputError, match=words):
            decode_header(json.dumps({**document, key: value}).encode())


def test_relative_paths_resolve_where_create_ran(tmp_path: Path) -> None:
    """A config's relative paths mean what they meant to create: resolved against the
    directory it ran in, or against nothing where that directory is not on this host."""
    cwd = os.getcwd()
    image = good_image(tmp_path)
    relative = dataclasses.replace(image, source=dataclasses.replace(
        image.source, text=image.source.text.replace(str(tmp_path / "root.img"), "root.img")))
    assert replan(relative, "g.save").plan.disks[0].target == str(tmp_path / "root.img")
    elsewhere = dataclasses.replace(relative, source=dataclasses.replace(
        relative.source, directory=str(tmp_path / "not-here")))
    with pytest.raises(ReplanError, match=r"does not plan here: .*root\.img"):
        replan(elsewhere, "g.save")
    assert os.getcwd() == cwd


def test_a_pygrub_guest_is_planned_with_the_kernel_pygrub_finds_again(
        kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pygrub runs again, as at create: the kernel and initrd come from the guest's disk
    into a new folder of pvhvm's own cache, never from a path in the file, and are checked
    by size against what the image says it had."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = ConfigSource(file="pg.cfg", directory="/", text=(
        f'name = "pg"\nbootloader = "pygrub"\nmemory = 256\n'
        f'disk = [ "file:{kit.directory / "boot.img"},xvda,w" ]\n'))
    plan = plan_source(source)
    assert plan.kernel is not None and plan.ramdisk is not None
    files = tuple(SavedFile(what, path, os.path.getsize(path)) for what, path in [
        ("disk xvda", str(kit.directory / "boot.img")), ("kernel", plan.kernel),
        ("ramdisk", plan.ramdisk)])
    image = DomainImage(
        name="pg", uuid=plan.uuid, platform="qemu", source=source, memory_kib=256 * 1024,
        vcpus=1, on_poweroff="destroy", on_reboot="restart", on_crash="destroy",
        accel="tcg", hotplugged=(), media={}, devices=("disk xvda 51712",), files=files)
    again = replan(image, "pg.save").plan
    assert again.kernel != plan.kernel and not Path(plan.kernel).exists()  # a new copy
    assert again.kernel is not None and again.kernel.startswith(str(tmp_path / "cache"))
    assert again.cmdline == plan.cmdline
    # what the file says of the kernel is a size to check, not a path to open
    forged = dataclasses.replace(image, files=(files[0], SavedFile("kernel", "/etc/shadow",
                                                                   files[1].size), files[2]))
    assert replan(forged, "pg.save").plan.kernel != "/etc/shadow"
    bigger = dataclasses.replace(image, files=(files[0], dataclasses.replace(
        files[1], size=files[1].size + 1), files[2]))
    with pytest.raises(ReplanError, match=r"kernel: .* has changed size"):
        replan(bigger, "pg.save")


def test_a_save_that_restore_would_refuse_is_refused_before_the_guest_stops(
        tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save (which destroys the domain) first plans it again as restore will: a domain whose
    disk was moved since create keeps running instead of becoming a file nothing restores."""
    monkeypatch.setattr(lifecycle, "host_bridges", lambda: frozenset())
    image = good_image(tmp_path)
    store = StateStore(state)
    paths = store.paths("g")
    plan = plan_source(image.source)
    record = DomainRecord(
        name="g", domid=1, uuid=UUID, platform="qemu", memory_mib=128, vcpus=1,
        plan=plan.to_json(), argv=["qemu-system-x86_64"], on_poweroff="destroy",
        on_reboot="restart", on_crash="destroy")
    paths.directory.mkdir(parents=True)
    lifecycle.write_source(paths.directory, image.source)
    check_restorable(record, store)  # as created: restore would take it
    (tmp_path / "root.img").rename(tmp_path / "moved.img")
    (tmp_path / "root.img").mkdir()  # image_of sizes it; the plan's file checks refuse it
    with pytest.raises(ReplanError, match=r"^domain 'g' is not saved, as restore would "
                                          r"refuse the file: domain 'g': ") as refused:
        check_restorable(record, store)
    assert "root.img" in str(refused.value) and "\n" not in str(refused.value)
