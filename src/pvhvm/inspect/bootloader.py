"""Boot loader configurations: their entries and which one boots by default.

* GRUB 2 ``grub.cfg`` (GRUB manual, "Shell-like scripting"): ``menuentry``/``submenu`` blocks
  with ``linux``/``linux16``/``linuxefi`` and ``initrd`` lines; ``set default=`` names an
  entry by number (``"1>2"`` inside a submenu), title or ``--id`` (grub-mkconfig writes
  ``$menuentry_id_option 'id'``), or ``${saved_entry}``, which ``grubenv`` holds. As
  pygrub does, only these commands are read; nothing is run.
* GRUB legacy ``menu.lst`` (GRUB 0.97 manual): ``default N``, ``title``, ``kernel PATH
  ARGS``, ``initrd PATH``.
* extlinux/syslinux (syslinux.txt): ``DEFAULT``/``ONTIMEOUT`` name a ``LABEL``; ``KERNEL``
  or ``LINUX``, ``INITRD`` (or ``initrd=`` in ``APPEND``), ``APPEND``; keywords in any case;
  ``MENU DEFAULT`` inside a label.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

GRUB2_PATHS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub/grub.cfg",
               "/grub2/grub.cfg")
GRUB1_PATHS = ("/boot/grub/menu.lst", "/boot/grub/grub.conf", "/grub/menu.lst",
               "/grub/grub.conf")
EXTLINUX_PATHS = ("/boot/extlinux/extlinux.conf", "/boot/extlinux.conf", "/extlinux.conf",
                  "/extlinux/extlinux.conf", "/boot/syslinux/syslinux.cfg", "/syslinux.cfg",
                  "/syslinux/syslinux.cfg", "/boot/syslinux.cfg")


@dataclass(frozen=True)
class BootEntry:
    """One bootable entry: paths as the loader names them (on the partition it reads)."""

    title: str
    kernel: str
    initrd: tuple[str, ...]
    cmdline: str

    def arguments(self) -> list[str]:
        return self.cmdline.split()

    def argument(self, key: str) -> str | None:
        """The last ``key=value`` on the command line (the kernel takes the last one)."""
        value = None
        for arg in self.arguments():
            if arg.startswith(key + "="):
                value = arg[len(key) + 1:]
        return value

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "kernel": self.kernel, "initrd": list(self.initrd),
                "cmdline": self.cmdline}


@dataclass(frozen=True)
class BootConfig:
    """A loader's configuration file and its entries; ``default`` indexes ``entries``."""

    loader: str
    path: str
    entries: tuple[BootEntry, ...]
    default: int | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def default_entry(self) -> BootEntry | None:
        if self.default is None or not 0 <= self.default < len(self.entries):
            return None
        return self.entries[self.default]

    def to_json(self) -> dict[str, Any]:
        return {"loader": self.loader, "path": self.path, "default": self.default,
                "entries": [e.to_json() for e in self.entries], "notes": list(self.notes)}


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True, posix=True)
    except ValueError:
        return line.split()


def _substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: variables.get(m.group(1), ""),
                  text)


def parse_grubenv(text: str) -> dict[str, str]:
    """grub-editenv's file: ``key=value`` lines padded with ``#``."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


@dataclass
class _Block:
    """An open ``{ ... }`` block of a grub.cfg while it is parsed."""

    kind: str
    title: str = ""
    entry_id: str = ""
    number: int = 0
    menu_path: str = ""
    kernel: str | None = None
    initrd: list[str] = field(default_factory=list)
    args: str = ""


def parse_grub2(text: str, path: str, grubenv: dict[str, str] | None = None) -> BootConfig:
    """Entries of a grub.cfg, flattened in menu order, and the default one."""
    variables = dict(grubenv or {})
    entries: list[BootEntry] = []
    #: (menu path like "1>0", entry id, title) of each flattened entry
    keys: list[tuple[str, str, str]] = []
    stack: list[_Block] = []
    counters = [0]
    default_expr: str | None = None
    current: _Block | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = _words(line)
        if not words:
            continue
        head = words[0]
        if head in ("menuentry", "submenu"):
            entry_id = ""
            for flag in ("--id", "$menuentry_id_option", "${menuentry_id_option}"):
                if flag in words and words.index(flag) + 1 < len(words):
                    entry_id = words[words.index(flag) + 1]
            entry_id = next((w.split("=", 1)[1] for w in words if w.startswith("--id=")),
                            entry_id)
            number = counters[-1]
            counters[-1] += 1
            prefix = ">".join(str(b.number) for b in stack if b.kind == "submenu")
            block = _Block(head, words[1] if len(words) > 1 else "", entry_id, number,
                           f"{prefix}>{number}" if prefix else str(number))
            stack.append(block)
            if head == "submenu":
                counters.append(0)
            else:
                current = block
            continue
        if line == "}":
            if stack:
                block = stack.pop()
                if block.kind == "submenu":
                    counters.pop()
                elif block.kind == "menuentry":
                    if block.kernel is not None:
                        entries.append(BootEntry(block.title, block.kernel,
                                                 tuple(block.initrd), block.args))
                        keys.append((block.menu_path, block.entry_id, block.title))
                    current = None
            continue
        if line.endswith("{"):  # function NAME { ... }: a block that is not an entry
            stack.append(_Block("other"))
            continue
        if head == "set" and len(words) > 1 and "=" in words[1]:
            key, _, value = words[1].partition("=")
            if current is None:
                if key == "default":
                    default_expr = value
                variables[key] = _substitute(value, variables)
            continue
        if current is not None and head in ("linux", "linux16", "linuxefi", "kernel"):
            if len(words) > 1:
                current.kernel = _substitute(words[1], variables)
                current.args = _substitute(" ".join(words[2:]), variables)
        elif current is not None and head in ("initrd", "initrd16", "initrdefi"):
            current.initrd = [_substitute(w, variables) for w in words[1:]]
    default = _grub2_default(default_expr, variables, keys)
    notes = []
    if default_expr is not None and default is None and entries:
        notes.append(f"set default={default_expr!r} names no entry; GRUB boots entry 0")
    if default is None and entries:
        default = 0
    return BootConfig("grub2", path, tuple(entries), default, tuple(notes))


def _grub2_default(
    expr: str | None, variables: dict[str, str], keys: list[tuple[str, str, str]]
) -> int | None:
    if expr is None:
        return 0 if keys else None
    value = _substitute(expr, variables).strip()
    if not value:
        value = variables.get("saved_entry", "0") if "saved_entry" in expr else "0"
    for index, (menu_path, entry_id, title) in enumerate(keys):
        if value in (menu_path, entry_id, title):
            return index
    # "1" may name a submenu whose first entry boots, or a title path "Advanced>Debian..."
    for index, (menu_path, _entry_id, _title) in enumerate(keys):
        if menu_path.startswith(value + ">"):
            return index
    if ">" in value:
        titles = value.split(">")
        for index, (_p, _i, title) in enumerate(keys):
            if title == titles[-1]:
                return index
    return None


def parse_grub1(text: str, path: str) -> BootConfig:
    """Entries of a GRUB legacy menu.lst and its ``default``."""
    entries: list[BootEntry] = []
    title: str | None = None
    kernel: str | None = None
    args = ""
    initrd: list[str] = []
    default = 0
    notes: list[str] = []

    def close() -> None:
        if title is not None and kernel is not None:
            entries.append(BootEntry(title, kernel, tuple(initrd), args))

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword = re.split(r"[\s=]", line, maxsplit=1)[0]
        rest = line[len(keyword):].strip().lstrip("=").strip()
        keyword = keyword.lower()
        if keyword == "title":
            close()
            title, kernel, args, initrd = rest, None, "", []
        elif keyword == "default" and title is None:
            if rest.isdigit():
                default = int(rest)
            else:
                notes.append(f"default {rest!r} (saved) read as 0")
        elif keyword == "kernel" and title is not None:
            parts = rest.split(None, 1)
            kernel = _strip_grub_device(parts[0]) if parts else None
            args = parts[1] if len(parts) > 1 else ""
        elif keyword == "initrd" and title is not None:
            initrd = [_strip_grub_device(p) for p in rest.split()]
    close()
    return BootConfig("grub1", path, tuple(entries), default if entries else None, tuple(notes))


def _strip_grub_device(path: str) -> str:
    """``(hd0,0)/vmlinuz`` → ``/vmlinuz`` (the partition is the entry's ``root``)."""
    return re.sub(r"^\([^)]*\)", "", path)


def parse_extlinux(text: str, path: str) -> BootConfig:
    """Entries of an extlinux.conf/syslinux.cfg; paths relative to its directory made absolute."""
    base = path.rsplit("/", 1)[0] or "/"
    labels: list[dict[str, Any]] = []
    default_name: str | None = None
    menu_default: int | None = None
    global_append = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if "\t" in keyword:
            keyword, _, more = keyword.partition("\t")
            rest = (more + " " + rest).strip()
        keyword = keyword.lower()
        rest = rest.strip()
        if keyword == "label":
            labels.append({"name": rest, "kernel": None, "initrd": [], "append": None,
                           "title": rest})
        elif keyword in ("default", "ontimeout") and not labels:
            if keyword == "default" or default_name is None:
                default_name = rest.split()[0] if rest else None
        elif keyword == "menu" and rest.lower() == "default" and labels:
            menu_default = len(labels) - 1
        elif keyword == "menu" and rest.lower().startswith("label ") and labels:
            labels[-1]["title"] = rest[6:].strip()
        elif keyword in ("kernel", "linux") and labels:
            labels[-1]["kernel"] = rest.split()[0] if rest else None
        elif keyword == "initrd" and labels:
            labels[-1]["initrd"] = rest.split(",")
        elif keyword == "append":
            if labels:
                labels[-1]["append"] = rest
            else:
                global_append = rest
    entries: list[BootEntry] = []
    names: list[str] = []
    for label in labels:
        if label["kernel"] is None:
            continue
        args = label["append"] if label["append"] is not None else global_append
        initrd = list(label["initrd"])
        kept = []
        for arg in args.split():
            if arg.startswith("initrd="):
                initrd += arg[7:].split(",")
            else:
                kept.append(arg)
        entries.append(BootEntry(
            label["title"], _absolute(base, label["kernel"]),
            tuple(_absolute(base, i) for i in initrd if i), " ".join(kept),
        ))
        names.append(label["name"])
    default: int | None = None
    if menu_default is not None and labels[menu_default]["name"] in names:
        default = names.index(labels[menu_default]["name"])
    elif default_name is not None and default_name in names:
        default = names.index(default_name)
    elif entries:
        default = 0
    return BootConfig("extlinux", path, tuple(entries), default)


def _absolute(base: str, path: str) -> str:
    if path.startswith("/"):
        return path
    return (base.rstrip("/") + "/" + path) if base != "/" else "/" + path


def parse_bls(entries: dict[str, str], path: str, grubenv: dict[str, str] | None = None,
              ) -> BootConfig:
    """Boot Loader Specification entries (``/boot/loader/entries/*.conf``), which Fedora's
    and RHEL's grub.cfg load with ``blscfg``: keys ``title version linux initrd options``;
    ``$kernelopts`` in options comes from grubenv; the default is grubenv's ``saved_entry``
    (an entry's file name without ``.conf``), else the highest version, as blscfg sorts."""
    env = dict(grubenv or {})
    parsed: list[tuple[str, dict[str, list[str]]]] = []
    for name, text in entries.items():
        keys: dict[str, list[str]] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition(" ")
            keys.setdefault(key, []).append(value.strip())
        if "linux" in keys:
            parsed.append((name.removesuffix(".conf"), keys))
    parsed.sort(key=lambda item: _version_key(item[1].get("version", [item[0]])[0]),
                reverse=True)
    boot_entries = tuple(
        BootEntry(
            keys.get("title", [entry_id])[0], keys["linux"][0],
            tuple(i for value in keys.get("initrd", []) for i in value.split()),
            _substitute(" ".join(keys.get("options", [])), env),
        )
        for entry_id, keys in parsed
    )
    default: int | None = 0 if boot_entries else None
    saved = env.get("saved_entry")
    ids = [entry_id for entry_id, _ in parsed]
    if saved in ids:
        default = ids.index(saved)
    return BootConfig("grub2-bls", path, boot_entries, default)


def _version_key(version: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+_~]", version)]
