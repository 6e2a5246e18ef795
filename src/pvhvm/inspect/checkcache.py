"""What ``create``'s guest check found, remembered while nothing it read has changed.

The check reads the root disk's filesystem and unpacks the initramfs (tens of milliseconds,
most of a warm create's own time). Its findings depend only on the plan and on those files, so
a create of the same plan on the same unchanged files (same device, inode, size, mtime and
ctime) prints what the last check found without reading them again. Only findings that let the
guest be created are kept (notes and cannot-tell findings): a refusal is checked afresh every
time. The checker's own code is part of
the key, so a pvhvm with a different check never reuses an old verdict.

This module imports nothing heavy: a hit costs a few stat calls and one small file read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pvhvm.hostfs import cache_home

#: entries kept; the oldest go first
MAX_ENTRIES = 256
#: the severities a kept check may hold: none of them refuses a create
KEPT = ("note", "cannot-tell")


def cache_dir() -> Path:
    return cache_home() / "check"


def _identity(path: str) -> list[Any] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def key(plan: dict[str, Any]) -> str | None:
    """The cache key of a plan's check (its JSON form), or None when it cannot be keyed."""
    files = [str(d.get("target")) for d in plan.get("disks", []) if d.get("target")]
    boot = plan.get("boot") or {}
    files += [str(boot[k]) for k in ("kernel", "ramdisk") if boot.get(k)]
    checker = sorted(str(p) for p in Path(__file__).parent.glob("*.py"))
    identities = [_identity(f) for f in files] + [_identity(f) for f in checker]
    # the domain's identity (its uuid, and the default MACs derived from it) checks nothing:
    # a fresh uuid at each create must not make every create check afresh
    checked = {k: v for k, v in plan.items() if k != "uuid"}
    checked["vifs"] = [{k: v for k, v in vif.items() if k != "mac"}
                       for vif in plan.get("vifs", []) if isinstance(vif, dict)]
    try:
        text = json.dumps([checked, identities], sort_keys=True, default=str)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def lookup(plan: dict[str, Any]) -> list[dict[str, str]] | None:
    """The findings of a check of this plan on these very files, if one was remembered."""
    name = key(plan)
    if name is None:
        return None
    try:
        found = json.loads((cache_dir() / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(found, list) or not all(isinstance(p, dict) for p in found):
        return None
    if any(p.get("severity") not in KEPT for p in found):
        return None
    return found


def remember(plan: dict[str, Any], problems: list[dict[str, str]]) -> None:
    """Keep a check's findings (only when none refuses the guest); best effort."""
    if any(p.get("severity") not in KEPT for p in problems):
        return
    name = key(plan)
    if name is None:
        return
    directory = cache_dir()
    with contextlib.suppress(OSError):
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(problems), encoding="utf-8")
        os.replace(tmp, directory / f"{name}.json")
        entries = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-MAX_ENTRIES]:
            old.unlink()
