"""pvhvm's ``--json`` documents, checked against the package's JSON schema (docs/json.md)
before a test reads them: every test that parses a command's JSON output goes through here."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

SCHEMA_FILE = "pvhvm-1.schema.json"


@cache
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(
        resources.files("pvhvm.cli").joinpath("schema", SCHEMA_FILE).read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def document(text: str) -> dict[str, Any]:
    """The one JSON document of ``text`` (a command's stdout), valid against the schema."""
    doc = json.loads(text)
    errors = sorted(validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
    assert isinstance(doc, dict)
    return doc


def result(text: str, command: str | None = None) -> Any:
    """The ``result`` of a command that succeeded (``command``: the words it must name)."""
    doc = document(text)
    assert doc["ok"] is True, doc.get("error")
    if command is not None:
        assert doc["command"] == command, doc["command"]
    return doc["result"]


def error(text: str, command: str | None = None) -> dict[str, Any]:
    """The ``error`` of a command that failed."""
    doc = document(text)
    assert doc["ok"] is False, doc
    if command is not None:
        assert doc["command"] == command, doc["command"]
    err = doc["error"]
    assert isinstance(err, dict)
    return err
