"""The save file and migration preamble (runtime/savefile.py), and the checks restore makes
before it starts anything (runtime/save.py, runtime/incoming.py): built without a guest."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.config.source import ConfigSource
from pvhvm.errors import InputError
from pvhvm.runtime.incoming import start_incoming
from pvhvm.runtime.migrate import receiver_command
from pvhvm.runtime.replan import ReplanError, file_problems
from pvhvm.runtime.save import read_save_file, restore
from pvhvm.runtime.savefile import (
    MAGIC,
    PREFIX,
    DomainImage,
    HotplugSpec,
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

UUID = "6f0e7c2a-0000-4000-8000-000000000001"


def image(files: list[SavedFile] | None = None, name: str = "g", text: str = "",
          directory: str = "/") -> DomainImage:
    return DomainImage(
        name=name, uuid=UUID, platform="qemu",
        source=ConfigSource(file="g.cfg", directory=directory, text=text or (
            f'name = "{name}"\nuuid = "{UUID}"\nbuilder = "hvm"\nmemory = 128\n')),
        memory_kib=128 * 1024, vcpus=1, on_poweroff="destroy", on_reboot="restart",
        on_crash="destroy", accel="tcg",
        hotplugged=(HotplugSpec("vif", "devid=1", "hotplug1", 1, mac="00:16:3e:00:00:02",
                                directory="/srv"),),
        media={}, devices=(), files=tuple(files or ()))


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
    (PREFIX.pack(MAGIC, 3, 2) + b"{}", "version 3"),
    (PREFIX.pack(MAGIC, 1, 2) + b"{}", "made by an older pvhvm .format 1.: it carries a QEMU "
                                       "command line, which pvhvm no longer starts"),
    (PREFIX.pack(MAGIC, 2, 2) + b"[]", "not a JSON object"),
    (PREFIX.pack(MAGIC, 2, 3) + b"{\"a", "not JSON"),
    (PREFIX.pack(MAGIC, 2, 2) + b"{}", "no 'name'"),
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


def test_a_stale_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    gone = tmp_path / "gone.img"
    files = [SavedFile("disk xvda", str(disk), 8192), SavedFile("disk xvdb", str(gone), 1)]
    assert file_problems(files) == [
        f"disk xvda: {disk} has changed size (8192 bytes when saved, 4096 now)",
        f"disk xvdb: {gone} does not exist on this host"]
    gone.write_bytes(b"\0")
    text = (f'name = "g"\nuuid = "{UUID}"\nbuilder = "hvm"\nmemory = 128\n'
            'disk = ["disk.img,raw,xvda,w", "gone.img,raw,xvdb,w"]\n')
    img = dataclasses.replace(image(files, text=text, directory=str(tmp_path)),
                              hotplugged=(), devices=("disk xvda 51712", "disk xvdb 51728"))
    gone.unlink()
    store = StateStore(tmp_path / "state")
    # the plan itself finds gone.img missing (the planner checks files, as at create)
    with (pytest.raises(ReplanError, match=r"x.save: .*does not plan here: .*gone.img"),
          start_incoming(store, img, 0, "x.save")):
        pytest.fail("started")
    gone.write_bytes(b"\0")
    with (pytest.raises(ReplanError, match=r"xvda.*changed size"),
          start_incoming(store, img, 0, "x.save")):
        pytest.fail("started")
    assert store.names() == [] and not (tmp_path / "state").exists()


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
