"""One tokenizer for comma-separated option strings (disk= and vif= specs).

A spec becomes ordered ``(key, value)`` pairs: ``key=value`` gives ``(key, value)``, a bare
word gives ``(None, word)`` (a positional parameter or a flag; the grammar decides). Per
xl-disk-configuration(5), a ``target=`` item eats the rest of the string, commas included.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel = 2
_BRIEF.maxstring = 80
_BRIEF.maxother = 80


def brief(value: object) -> str:
    """A bounded repr for messages (config values can nest deeply)."""
    return _BRIEF.repr(value)


@dataclass(frozen=True)
class Token:
    """One item of an option string."""

    key: str | None
    value: str
    #: 0-based character offset of the item in the spec
    offset: int


def tokenize(spec: str, *, rest_keys: frozenset[str] = frozenset()) -> list[Token]:
    """Split ``spec`` into tokens; a key in ``rest_keys`` takes the rest of the string."""
    tokens: list[Token] = []
    pos = 0
    length = len(spec)
    while pos <= length:
        comma = spec.find(",", pos)
        end = length if comma < 0 else comma
        item = spec[pos:end]
        stripped = item.strip()
        lead = len(item) - len(item.lstrip())
        key, sep, value = stripped.partition("=")
        if sep and key.strip() in rest_keys:
            value_start = spec.index("=", pos) + 1
            tokens.append(Token(key.strip(), spec[value_start:].strip(), pos + lead))
            break
        if sep:
            tokens.append(Token(key.strip(), value.strip(), pos + lead))
        else:
            tokens.append(Token(None, stripped, pos + lead))
        if comma < 0:
            break
        pos = comma + 1
    return tokens
