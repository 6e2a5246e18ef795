"""A libvirt domain XML document read safely into a small tree that knows where each element is.

Parsed with the standard library's expat (``xml.parsers.expat``; defusedxml is not a
dependency of pvhvm): a DOCTYPE is refused outright, so no entity can be declared and only
XML's five predefined entities and character references exist (no entity expansion, no
external entity, no network access). The budgets are the config language's
(:mod:`pvhvm.config.lang`): at most ``MAX_FILE_BYTES`` of text, ``MAX_TOKENS`` elements and
attributes together, elements nested at most ``MAX_DEPTH`` deep. Every refusal is a
:class:`~pvhvm.errors.ConfigError` naming file:line:col.

Each :class:`Node` records which of its attributes and children the reader used, so that
what it did not use can be named in a warning instead of being dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.parsers import expat

from pvhvm.config.lang import MAX_DEPTH, MAX_FILE_BYTES, MAX_TOKENS, Position
from pvhvm.config.optstr import brief
from pvhvm.errors import ConfigError


@dataclass(eq=False)
class Node:
    """One element: its tag, attributes, text (stripped), children and position."""

    tag: str
    attrib: dict[str, str]
    position: Position
    parent: Node | None = None
    text: str = ""
    children: list[Node] = field(default_factory=list)
    #: the reader used this element (its meaning is realised, or deliberately implied)
    used: bool = False
    used_attrs: set[str] = field(default_factory=set)

    def get(self, name: str) -> str | None:
        """Attribute ``name`` (marked used), or None."""
        self.used_attrs.add(name)
        return self.attrib.get(name)

    def use(self, *names: str) -> Node:
        """Mark this element used, with attributes ``names``."""
        self.used = True
        self.used_attrs.update(names)
        return self

    def find(self, tag: str) -> Node | None:
        """The first child ``tag`` (marked used), or None."""
        for child in self.children:
            if child.tag == tag:
                return child.use()
        return None

    def findall(self, tag: str) -> list[Node]:
        """Every child ``tag`` (not marked: the caller decides which it realises)."""
        return [child for child in self.children if child.tag == tag]

    def error(self, message: str) -> ConfigError:
        """A ConfigError at this element's start tag."""
        return self.position.error(message)

    @property
    def label(self) -> str:
        """The tag as messages show it (a hostile document's tags may be long)."""
        return short_name(self.tag)

    def describe(self) -> str:
        """``<tag type='x'>``: how a message names this element."""
        kind = self.attrib.get("type") or self.attrib.get("model") or self.attrib.get("name")
        key = "type" if "type" in self.attrib else "model" if "model" in self.attrib else "name"
        return f"<{self.label}>" if kind is None else f"<{self.label} {key}={brief(kind)}>"


def short_name(name: str) -> str:
    """An element or attribute name for a message: at most 40 characters."""
    return name if len(name) <= 40 else name[:37] + "..."


def parse_xml(text: str, file: str) -> Node:
    """The root element of XML ``text``, or a ConfigError at file:line:col."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"file is too large (over {MAX_FILE_BYTES} bytes)", file=file)
    parser = expat.ParserCreate(encoding="UTF-8")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[Node] = []
    roots: list[Node] = []
    counted = [0]

    def here() -> Position:
        return Position(file, parser.CurrentLineNumber, parser.CurrentColumnNumber + 1)

    def start(tag: str, attrib: dict[str, str]) -> None:
        counted[0] += 1 + len(attrib)
        if counted[0] > MAX_TOKENS:
            raise here().error(f"the document has too many elements and attributes (over "
                               f"{MAX_TOKENS}; a domain XML needs a few hundred)")
        if len(stack) >= MAX_DEPTH:
            raise here().error(f"elements are nested too deeply (over {MAX_DEPTH} levels)")
        node = Node(tag, dict(attrib), here(), stack[-1] if stack else None)
        if stack:
            stack[-1].children.append(node)
        else:
            roots.append(node)
        stack.append(node)

    def end(tag: str) -> None:
        node = stack.pop()
        node.text = node.text.strip()

    def characters(data: str) -> None:
        if stack:
            stack[-1].text += data

    def doctype(*_: object) -> None:
        raise here().error("a DOCTYPE is not allowed in a domain XML (it could declare "
                           "entities); remove it")

    def entity(*_: object) -> None:
        raise here().error("an ENTITY declaration is not allowed in a domain XML")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = entity  # type: ignore[assignment]
    try:
        parser.Parse(text, True)
    except expat.ExpatError as err:
        raise ConfigError(f"not well-formed XML: {expat.ErrorString(err.code)}", file=file,
                          line=err.lineno, col=err.offset + 1) from err
    except UnicodeEncodeError as err:
        raise ConfigError("the file is not UTF-8 text", file=file) from err
    if not roots:
        raise ConfigError("no XML element in the file", file=file)
    return roots[0]
