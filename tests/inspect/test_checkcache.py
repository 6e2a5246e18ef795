"""create's remembered guest checks: reused only for the same plan on unchanged files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pvhvm.inspect import checkcache

NOTE = {"severity": "note", "subject": "console", "message": "no getty", "fix": ""}
FATAL = {"severity": "fatal", "subject": "disk xvda", "message": "no virtio_blk", "fix": "x"}


@pytest.fixture
def plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("root.img", "initrd"):
        (tmp_path / name).write_bytes(b"x" * 100)
    return {"name": "g", "disks": [{"vdev": "xvda", "target": str(tmp_path / "root.img")}],
            "boot": {"kernel": None, "ramdisk": str(tmp_path / "initrd"), "cmdline": "ro"}}


def test_a_check_that_lets_the_guest_boot_is_reused(plan: dict[str, Any]) -> None:
    assert checkcache.lookup(plan) is None
    checkcache.remember(plan, [NOTE])
    assert checkcache.lookup(plan) == [NOTE]
    checkcache.remember(plan, [])
    assert checkcache.lookup(plan) == []


def test_a_refusal_is_never_remembered(plan: dict[str, Any]) -> None:
    checkcache.remember(plan, [NOTE, FATAL])
    assert checkcache.lookup(plan) is None
    assert not list(checkcache.cache_dir().glob("*.json")) if checkcache.cache_dir().exists() \
        else True


@pytest.mark.parametrize("change", ["image", "ramdisk", "plan"])
def test_a_changed_file_or_plan_is_checked_again(plan: dict[str, Any], change: str) -> None:
    checkcache.remember(plan, [NOTE])
    if change == "plan":
        plan = {**plan, "boot": {**plan["boot"], "cmdline": "ro root=/dev/vda"}}
    else:
        path = Path(plan["disks"][0]["target"] if change == "image" else plan["boot"]["ramdisk"])
        stat = path.stat()
        path.write_bytes(b"y" * 100)  # same size, new content
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert checkcache.lookup(plan) is None


def test_a_replaced_file_is_checked_again(plan: dict[str, Any], tmp_path: Path) -> None:
    """guest prepare commits by renaming a new image into place: a new inode."""
    checkcache.remember(plan, [NOTE])
    target = Path(plan["disks"][0]["target"])
    stat = target.stat()
    fresh = tmp_path / "new.img"
    fresh.write_bytes(target.read_bytes())
    os.utime(fresh, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fresh.replace(target)
    assert checkcache.lookup(plan) is None


def test_damaged_entries_are_ignored(plan: dict[str, Any]) -> None:
    checkcache.remember(plan, [NOTE])
    (entry,) = checkcache.cache_dir().glob("*.json")
    for text in ("{", '{"a": 1}', '[1]', '[{"severity": "fatal"}]'):
        entry.write_text(text)
        assert checkcache.lookup(plan) is None


def test_the_cache_stays_bounded(plan: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkcache, "MAX_ENTRIES", 3)
    for index in range(6):
        checkcache.remember({**plan, "name": f"g{index}"}, [NOTE])
    assert len(list(checkcache.cache_dir().glob("*.json"))) == 3
