"""The save file and migration preamble (runtime/savefile.py), and the checks restore makes
before it starts anything (runtime/save.py, runtime/incoming.py): built without a guest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.errors import InputError
from pvhvm.qemu.argv import RunPaths
from pvhvm.runtime.incoming import ImageMismatchError, file_problems, relocate, start_incoming
from pvhvm.runtime.migrate import receiver_command
from pvhvm.runtime.save import read_save_file, restore
from pvhvm.runtime.savefile import (
    MAGIC,
    PREFIX,
    DomainImage,
    NeedMore,
    SavedFile,
    SaveFileError,
    decode_prefix,
    decode_trailer,
    encode_prefix,
    encode_trailer,
    header_bytes,
)
from pvhvm.runtime.state import StateStore


def image(files: list[SavedFile] | None = None, name: str = "g") -> DomainImage:
    return DomainImage(
        name=name, uuid="6f0e7c2a-0000-4000-8000-000000000001", platform="qemu",
        memory_mib=128, vcpus=1, plan={"disks": [], "boot": {}}, argv=["qemu-system-x86_64"],
        on_poweroff="destroy", on_reboot="restart", on_crash="destroy", accel="tcg",
        console=None, hotplugged=[], run_paths={}, files=files or [])


def save_file(path: Path, stream: bytes, img: DomainImage | None = None) -> Path:
    img = img or image()
    digest = hashlib.sha256(header_bytes(img) + stream).digest()
    path.write_bytes(encode_prefix(img) + stream + encode_trailer(len(stream), digest))
    return path


def test_prefix_round_trip_whole_and_byte_by_byte() -> None:
    img = image([SavedFile("disk xvda", "/srv/a.img", 123)])
    data = encode_prefix(img) + b"QEVM stream"
    decoded = decode_prefix(data)
    assert not isinstance(decoded, NeedMore)
    assert decoded == (img, len(encode_prefix(img)))
    fed = b""
    for byte in data:  # one byte at a time: "need more" until the header is whole
        fed += bytes([byte])
        result = decode_prefix(fed)
        if not isinstance(result, NeedMore):
            assert result[0] == img
            break
        assert result.count > len(fed)
    else:
        pytest.fail("never decoded")


@given(st.binary(max_size=64))
def test_prefix_never_crashes_on_junk(data: bytes) -> None:
    try:
        decode_prefix(data)
    except SaveFileError:
        pass


@pytest.mark.parametrize(("data", "words"), [
    (b"hello world, not a save", "no PVHVMSAV magic"),
    (PREFIX.pack(MAGIC, 2, 2) + b"{}", "version 2"),
    (PREFIX.pack(MAGIC, 1, 2) + b"[]", "not a JSON object"),
    (PREFIX.pack(MAGIC, 1, 3) + b"{\"a", "not JSON"),
    (PREFIX.pack(MAGIC, 1, 2) + b"{}", "no 'name'"),
])
def test_bad_prefixes_say_what_is_wrong(data: bytes, words: str) -> None:
    with pytest.raises(SaveFileError, match=words):
        decode_prefix(data)


def test_trailer() -> None:
    digest = bytes(range(32))
    assert decode_trailer(encode_trailer(77, digest)) == (77, digest)
    with pytest.raises(SaveFileError, match="no end marker"):
        decode_trailer(b"x" * 48)


def test_a_whole_file_reads(tmp_path: Path) -> None:
    saved = read_save_file(save_file(tmp_path / "ok.save", b"S" * 5000))
    assert saved.stream_length == 5000 and saved.image.name == "g"


@pytest.mark.parametrize(("damage", "words"), [
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d[:-100] + b"X" + d[-99:], "SHA-256 does not match"),
    (lambda d: d[:-48] + b"padding" + d[-48:], "truncated or padded"),
    (lambda d: b"", "no PVHVMSAV magic"),
])
def test_damaged_files_are_refused(tmp_path: Path, damage: object, words: str) -> None:
    path = save_file(tmp_path / "x.save", b"S" * 5000)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(SaveFileError, match=words) as caught:
        read_save_file(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_restore_of_a_bad_file_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "junk.save"
    path.write_bytes(b"not at all")
    store = StateStore(tmp_path / "state")
    with pytest.raises(InputError):
        restore(path, store)
    assert store.names() == []


def test_a_stale_plan_is_refused_before_anything_starts(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    gone = tmp_path / "gone.img"
    img = image([SavedFile("disk xvda", str(disk), 8192), SavedFile("disk xvdb", str(gone), 1)])
    assert file_problems(img) == [
        f"disk xvda: {disk} has changed size (8192 bytes when saved, 4096 now)",
        f"disk xvdb: {gone} does not exist on this host"]
    store = StateStore(tmp_path / "state")
    with (pytest.raises(ImageMismatchError, match=r"xvda.*changed size.*xvdb.*does not exist"),
          start_incoming(store, img, 0, "x.save")):
        pytest.fail("started")
    assert store.names() == []


def test_relocate_moves_run_paths_only() -> None:
    old = {"qmp_socket": "/a/domains/g/qmp.sock", "control_socket": "/a/domains/g/ctl.sock",
           "console_socket": "/a/domains/g/console.sock", "console_log": "/a/logs/g.log",
           "vnc_secret": None}
    new = RunPaths(Path("/b/domains/g/qmp.sock"), Path("/b/domains/g/ctl.sock"),
                   Path("/b/domains/g/console.sock"), Path("/b/logs/g.log"))
    argv = ["-chardev", "socket,id=qmp,path=/a/domains/g/qmp.sock,server=on",
            "-chardev", "socket,id=serial0,path=/a/domains/g/console.sock,logfile=/a/logs/g.log",
            "-drive", "file=/a/disk.img"]
    assert relocate(argv, old, new) == [
        "-chardev", "socket,id=qmp,path=/b/domains/g/qmp.sock,server=on",
        "-chardev", "socket,id=serial0,path=/b/domains/g/console.sock,logfile=/b/logs/g.log",
        "-drive", "file=/a/disk.img"]


def test_receiver_command_as_xl() -> None:
    assert receiver_command("h", None) == ["ssh", "h", "pvhvm migrate-receive"]
    assert receiver_command("h x", "ssh -p 22") == [
        "/bin/sh", "-c", "ssh -p 22 'h x' pvhvm migrate-receive"]
    assert receiver_command("my-receiver --x", "") == ["/bin/sh", "-c", "my-receiver --x"]


class _ScriptedQmp:
    """QEMU's answers to a migration, as a QEMU that was itself restored gives them (seen
    with QEMU 7.2: its query-migrate says ``{"status": "completed"}`` from the incoming
    migration until the outgoing one has started)."""

    def __init__(self, readings: list[dict[str, object]]) -> None:
        self.readings = readings
        self.commands: list[str] = []

    def send_fd_scm(self, fd: int) -> None:
        self.commands.append("send_fd_scm")

    async def execute(self, command: str, arguments: object = None) -> object:
        self.commands.append(command)
        if command == "query-migrate":
            return self.readings.pop(0)
        return {}


def test_an_earlier_incoming_migration_is_not_taken_for_this_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from pvhvm.runtime import save

    monkeypatch.setattr(save, "POLL", 0)
    done = {"status": "completed", "total-time": 812, "downtime": 40,
            "ram": {"transferred": 1 << 27, "total": 1 << 28, "remaining": 0}}
    client = _ScriptedQmp([
        {"status": "completed"},  # the restore's own incoming migration
        {"status": "active", "ram": {"transferred": 1 << 20, "total": 1 << 28,
                                     "remaining": 1 << 27}},
        done,
    ])
    info = asyncio.run(save.migrate_out(client, 0))  # type: ignore[arg-type]
    assert info.pop("pvhvm-total-ms") >= 0
    assert info == done and not client.readings
