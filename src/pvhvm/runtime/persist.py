"""Defined (persistent) domains: the configs a host keeps, as xl users keep /etc/xen/NAME.cfg
and ``virsh define`` keeps a domain's definition (issue 21, item 1), and the one resolver of a
domain named by name, domid or UUID (item 6).

Layout under the state directory (runtime/state.py)::

    uuids.json               name → the uuid its first create got (:func:`identity`)
    defined/                 0700
        lock                 flock held by each define, undefine, autostart, config-update
        NAME/                0700; appears whole (staged as ``.NAME.PID.new``, then renamed)
            source.json      the config as the user wrote it (config/source.py: the file's
                             text, VAR=VALUE, --dialect, the directory paths resolve in), 0600
            domain.json      {"uuid": ..., "autostart": ...}, 0600

A definition is only a config and an identity: ``start`` plans its source again, as ``create``
plans a file, with the definition's uuid (so its default MACs stay), and the running domain is
then a domain like a created one (``domains/NAME``). When it shuts down its record goes and
the definition stays: ``list --all`` shows it "shut off". ``undefine`` of a running domain
removes only the definition, and the domain runs on as a transient one, as ``virsh undefine``
does. ``create`` of a file whose name is defined runs it transiently with the definition's
uuid (:func:`identity`); a file whose own ``uuid=`` differs is refused, as libvirt refuses a
second uuid for a defined name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pvhvm.config.domain import name_problem
from pvhvm.config.source import ConfigSource, SourceFormatError
from pvhvm.errors import DomainError, InputError
from pvhvm.private import open_private, private_dir
from pvhvm.runtime.state import (
    STAGING_SUFFIX,
    DomainRecord,
    StateStore,
    pid_alive,
    state_dir,
    write_atomic,
)

DEFINED = "defined"
SOURCE_FILE = "source.json"
DOMAIN_FILE = "domain.json"
#: name → the uuid the first create of that name got, in the state directory
UUIDS_FILE = "uuids.json"
MAX_REMEMBERED = 4096


class IdentityError(InputError):
    """A domain named by something that is no domain's name, domid or UUID, or several's."""


@dataclass(frozen=True)
class Definition:
    """One defined domain: its name, its uuid, whether the host starts it, its config."""

    name: str
    uuid: str
    autostart: bool
    source: ConfigSource

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "uuid": self.uuid, "autostart": self.autostart,
                "config": self.source.file}


def normal_uuid(text: str) -> str | None:
    """``text`` as a canonical lower-case UUID (dashes or not), or None when it is not one."""
    try:
        return str(uuidlib.UUID(text.strip()))
    except ValueError:
        return None


class Definitions:
    """The defined domains of one state directory (see the module docstring)."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = base if base is not None else state_dir()
        self.root = self.base / DEFINED

    def _directory(self, name: str) -> Path:
        problem = name_problem(name)
        if problem is not None:
            raise DomainError(problem)
        return self.root / name

    def _make(self) -> None:
        StateStore(self.base).make_private()
        try:
            private_dir(self.root, tighten=True)
        except OSError as err:
            raise DomainError(f"state directory {self.root}: {err.strerror or err}") from err

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One change of the definitions at a time (define, undefine, autostart, update)."""
        self._make()
        fd = open_private(self.root / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir()
                          if p.is_dir() and not p.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise DomainError(f"state directory {self.root} is unusable: {err}") from err

    def read(self, name: str) -> Definition | None:
        """The definition of ``name``; None when there is none; DomainError when unreadable."""
        directory = self._directory(name)
        try:
            meta = _read_json(directory / DOMAIN_FILE)
            source_data = _read_json(directory / SOURCE_FILE)
        except FileNotFoundError:
            return None
        where = directory / DOMAIN_FILE
        if (not isinstance(meta, dict) or not isinstance(meta.get("uuid"), str)
                or normal_uuid(meta["uuid"]) is None
                or not isinstance(meta.get("autostart"), bool)):
            raise DomainError(f"{where} is not a pvhvm definition (uuid, autostart)")
        try:
            source = ConfigSource.from_json(source_data)
        except SourceFormatError as err:
            raise DomainError(f"{directory / SOURCE_FILE} {err}") from err
        return Definition(name=name, uuid=meta["uuid"], autostart=meta["autostart"],
                          source=source)

    def definitions(self) -> list[Definition]:
        return [d for d in map(self.read, self.names()) if d is not None]

    def define(self, definition: Definition) -> bool:
        """Keep ``definition``: a new one appears whole; an existing one of that name gets
        the new config (its uuid must be the same, as libvirt's define requires) and keeps
        its autostart. True when it was new. Call without :meth:`locked` held."""
        with self.locked():
            old = self.read(definition.name)
            if old is None:
                self._sweep()
                self._introduce(definition)
                return True
            if old.uuid != definition.uuid:
                raise DomainError(
                    f"domain {definition.name!r} is already defined with uuid {old.uuid}, "
                    f"not {definition.uuid}")
            self._write(replace(definition, autostart=old.autostart))
            return False

    def update(self, name: str, source: ConfigSource, config_uuid: str | None) -> Definition:
        """``config-update``/``edit``: a new config for defined domain ``name`` (its uuid and
        autostart kept; a config whose ``uuid=`` differs is refused)."""
        with self.locked():
            old = self.read(name)
            if old is None:
                raise DomainError(f"no defined domain named {name!r}")
            if config_uuid is not None and config_uuid != old.uuid:
                raise DomainError(f"domain {name!r} is defined with uuid {old.uuid}; the new "
                                  f"config says uuid {config_uuid}")
            new = replace(old, source=source)
            self._write(new)
            return new

    def set_autostart(self, name: str, autostart: bool) -> Definition:
        with self.locked():
            old = self.read(name)
            if old is None:
                raise DomainError(f"no defined domain named {name!r} (autostart is kept "
                                  f"with a definition: 'pvhvm define CFG' first)")
            new = replace(old, autostart=autostart)
            self._write(new)
            return new

    def undefine(self, name: str) -> Definition:
        """Remove the definition of ``name`` (a running domain of that name runs on)."""
        with self.locked():
            old = self.read(name)
            if old is None:
                raise DomainError(f"no defined domain named {name!r}")
            directory = self._directory(name)
            gone = self.root / f".{name}.{os.getpid()}.old"
            shutil.rmtree(gone, ignore_errors=True)
            os.rename(directory, gone)  # the definition disappears whole
            shutil.rmtree(gone, ignore_errors=True)
            return old

    def given_uuid(self, name: str, remember: bool = True) -> str:
        """The uuid this state directory gave domain ``name`` at its first create, or a fresh
        one (kept in ``uuids.json`` when ``remember``; at most MAX_REMEMBERED names, the
        oldest forgotten first)."""
        kept = self._given().get(name)
        if kept is not None or not remember:  # a dry run: nothing made
            return kept or str(uuidlib.uuid4())
        fresh = str(uuidlib.uuid4())
        self.remember_uuid(name, fresh)
        return self._given().get(name, fresh)  # another create's, if it came first

    def remember_uuid(self, name: str, uuid: str) -> None:
        """Keep ``uuid`` as the one domain ``name`` got at its first create, unless this state
        directory already keeps one for it (called once a create has succeeded, so a refused
        create leaves nothing)."""
        with self.locked():
            given = self._given()
            if name in given:
                return
            given[name] = uuid
            while len(given) > MAX_REMEMBERED:
                given.pop(next(iter(given)))
            write_atomic(self.base / UUIDS_FILE, json.dumps(given))

    def _given(self) -> dict[str, str]:
        """``uuids.json``; empty when missing or unreadable (an identity is not worth an
        error: the name then gets a fresh uuid)."""
        try:
            data = json.loads((self.base / UUIDS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items()
                if isinstance(k, str) and isinstance(v, str) and normal_uuid(v) == v}

    def _introduce(self, definition: Definition) -> None:
        staging = self.root / f".{definition.name}.{os.getpid()}{STAGING_SUFFIX}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        try:
            self._write(definition, staging)
            os.rename(staging, self._directory(definition.name))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _write(self, definition: Definition, directory: Path | None = None) -> None:
        directory = directory or self._directory(definition.name)
        write_atomic(directory / SOURCE_FILE, json.dumps(definition.source.to_json()))
        write_atomic(directory / DOMAIN_FILE, json.dumps(
            {"uuid": definition.uuid, "autostart": definition.autostart}))

    def _sweep(self) -> None:
        """Staging directories of defines that were killed half-way."""
        for entry in self.root.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(STAGING_SUFFIX):
                pid = entry.name.removesuffix(STAGING_SUFFIX).rpartition(".")[2]
                if not (pid.isdigit() and pid_alive(int(pid))):
                    shutil.rmtree(entry, ignore_errors=True)


def _read_json(path: Path) -> object:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise DomainError(f"{path}: {err.strerror}") from err
    try:
        with os.fdopen(fd, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise DomainError(f"{path} is unreadable: {err}") from err


def identity(name: str, config_uuid: str | None, definitions: Definitions,
             remember: bool = True) -> str:
    """The uuid a domain called ``name`` gets at create (item 6): the config's ``uuid=``;
    else its definition's; else the one this state directory gave the name at its first
    create (``uuids.json``), so re-creating a domain keeps its uuid and MACs on this host;
    else a fresh random one, as xl makes one (so two hosts' ``web1`` differ), kept when
    ``remember`` (a dry run keeps nothing). A config whose ``uuid=`` is not its definition's
    is refused (libvirt: "already defined with uuid")."""
    definition = definitions.read(name)
    if definition is not None:
        if config_uuid is not None and normal_uuid(config_uuid) != definition.uuid:
            raise DomainError(
                f"domain {name!r} is defined with uuid {definition.uuid}, and this config "
                f"says uuid {config_uuid} ('pvhvm start {name}' starts the defined one)")
        return definition.uuid
    if config_uuid is not None:
        known = normal_uuid(config_uuid)
        if known is not None:
            return known
    return definitions.given_uuid(name, remember)


# --- naming a domain: name, domid or UUID (xl: name or id; virsh: id, name or UUID) -------


@dataclass(frozen=True)
class Known:
    """A domain as the resolver sees it: running (a record) or only defined."""

    name: str
    domid: int | None
    uuid: str


def known_domains(records: Iterable[DomainRecord], definitions: Iterable[Definition]
                  ) -> list[Known]:
    running = [Known(r.name, r.domid, r.uuid) for r in records]
    names = {k.name for k in running}
    return running + [Known(d.name, None, d.uuid) for d in definitions if d.name not in names]


def resolve(given: str, known: Iterable[Known]) -> str:
    """The name of the one domain ``given`` names: its name, else (all digits) its domid,
    else its UUID (any case, dashes or not); IdentityError when none or several match."""
    domains = list(known)
    if any(k.name == given for k in domains):
        return given
    matches: list[Known] = []
    if given.isdigit():
        matches = [k for k in domains if k.domid is not None and k.domid == int(given)]
    elif (wanted := normal_uuid(given)) is not None:
        matches = [k for k in domains if normal_uuid(k.uuid) == wanted]
    names = sorted({k.name for k in matches})
    if not names:
        what = f"id {given}" if given.isdigit() else f"uuid {given}"
        raise IdentityError(f"no domain named {given!r}, nor with {what}")
    if len(names) > 1:
        raise IdentityError(f"{given!r} names several domains ({', '.join(names)}): "
                            "name one of them")
    return names[0]
