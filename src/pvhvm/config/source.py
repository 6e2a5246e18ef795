"""A domain's config as ``create`` read it: the file's text and everything else that decided
how it was parsed, so that it can be parsed and planned again (restore, migrate-receive).

A domain record keeps this from ``create`` (runtime/state.py ``DomainRecord.source``), and a
save file or migration preamble carries it instead of a QEMU command line (runtime/
savefile.py, format 2): the receiving side parses the text with the very parser ``create``
uses (same size budgets, same errors), plans it with ``make_plan`` and builds the argv
itself, so nothing in a file decides what runs beyond what a config file could (issue 18).

Kept, as ``xl`` keeps a domain's config in its save image (libxl's ``libxl_domain_config``):
``text`` (the config file or libvirt domain XML, as read), ``file`` (its name, for messages),
``variables`` (the ``VAR=VALUE`` arguments, as typed: they are parsed again the same way),
``dialect`` (``--dialect``), ``skip_unsupported`` and ``directory`` (where relative paths
were resolved: the directory ``create`` ran in).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pvhvm.config.domain import Dialect
from pvhvm.config.lang import MAX_FILE_BYTES, read_config_text

#: ``VAR=VALUE`` arguments one source may hold, and the length of one
MAX_VARIABLES = 1024
MAX_VARIABLE_BYTES = 1 << 16


class SourceFormatError(ValueError):
    """Source data (JSON) that is not a config source; its message names the field."""


@dataclass(frozen=True)
class ConfigSource:
    """What ``create`` parsed; see the module docstring."""

    file: str
    text: str
    variables: tuple[str, ...] = ()
    dialect: str | None = None
    skip_unsupported: bool = False
    directory: str = "/"

    @classmethod
    def read(cls, path: Path, variables: tuple[str, ...] = (), dialect: str | None = None,
             skip_unsupported: bool = False) -> ConfigSource:
        """The source of a ``create``: ``path`` read once, as the parser reads it
        (ConfigError when it cannot be)."""
        return cls(file=str(path), text=read_config_text(path), variables=tuple(variables),
                   dialect=dialect, skip_unsupported=skip_unsupported,
                   directory=os.getcwd())

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["variables"] = list(self.variables)
        return document

    @classmethod
    def from_json(cls, data: object) -> ConfigSource:
        """Checked field by field; SourceFormatError names the first that is wrong. The
        text's and variables' own rules are the parser's, applied when it is parsed."""
        if not isinstance(data, dict):
            raise SourceFormatError("is not a JSON object")
        known = {"file", "text", "variables", "dialect", "skip_unsupported", "directory"}
        for key in data:
            if key not in known:
                raise SourceFormatError(f"has an unknown field {str(key)[:40]!r}")
        for key in known:
            if key not in data:
                raise SourceFormatError(f"has no {key!r}")
        for key in ("file", "text", "directory"):
            if not isinstance(data[key], str):
                raise SourceFormatError(f"field {key!r} is not a string")
        if len(data["text"].encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
            raise SourceFormatError(f"field 'text' is larger than a config file may be "
                                    f"({MAX_FILE_BYTES} bytes)")
        if len(data["file"]) > 4096 or len(data["directory"]) > 4096:
            raise SourceFormatError("field 'file' or 'directory' is longer than a path")
        if not data["directory"].startswith("/"):
            raise SourceFormatError("field 'directory' is not an absolute path")
        variables = data["variables"]
        if (not isinstance(variables, list) or len(variables) > MAX_VARIABLES
                or not all(isinstance(v, str) and len(v) <= MAX_VARIABLE_BYTES
                           for v in variables)):
            raise SourceFormatError("field 'variables' is not a list of VAR=VALUE strings")
        dialects = [dialect.value for dialect in Dialect]
        if data["dialect"] is not None and data["dialect"] not in dialects:
            raise SourceFormatError(f"field 'dialect' is not {', '.join(dialects)} or null")
        if not isinstance(data["skip_unsupported"], bool):
            raise SourceFormatError("field 'skip_unsupported' is not true or false")
        return cls(file=data["file"], text=data["text"], variables=tuple(variables),
                   dialect=data["dialect"], skip_unsupported=data["skip_unsupported"],
                   directory=data["directory"])
