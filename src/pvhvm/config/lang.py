"""The xm/xl domain-config language, evaluated safely.

xend ``exec``'d its config files as Python. pvhvm parses them with :mod:`ast` and evaluates a
small, closed subset, so a file can never run code:

* statements: ``name = expr`` (also ``a = b = expr``), ``name += expr``, a bare string (a
  docstring), ``pass``;
* expressions: str/int/float/bool/None literals, lists, tuples, dicts, ``+`` (numbers,
  strings, lists, tuples), ``%`` string formatting, unary ``-``/``+`` on numbers, and names
  assigned earlier in the file or given on the command line.

Anything else (calls, attribute access, subscripts, imports, comprehensions, lambdas,
f-strings, ...) is a :class:`~pvhvm.errors.ConfigError` naming file:line:col.

Budgets (issue 13): no file of at most 1 MiB may cost more than about a second or 100 MB.
`read_config_text` reads at most ``MAX_FILE_BYTES + 1`` bytes; the file may hold at most
``MAX_TOKENS`` tokens (checked by a C-speed scan before :mod:`ast` builds its tree, which
costs about 500 bytes per token); every value is measured as its *expanded* size (a list
holding itself twice counts twice, so ``t = (t, t)`` forty times is refused before it is
ever hashed or formatted) and nesting depth; all values built by the file together may
not exceed ``MAX_TOTAL_SIZE``; and the evaluation work (nodes, formatted and hashed
items) is capped by ``MAX_WORK``. Each refusal names file:line:col.

Numbers as xl reads them: xl's lexer takes ``[0-9][0-9a-fx]*`` and ``xlu_cfg_get_long``
converts with ``strtol(..., 0)``, so ``0512`` is octal (330). Python 3 refuses that
literal; pvhvm reads it as xl does and warns. Python's own warnings and hints never reach
the user: syntax errors are worded here.
"""

from __future__ import annotations

import ast
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvhvm.errors import ConfigError

#: Bounds that keep a hostile file from using unbounded memory through ``+`` or ``%``:
#: the expanded size of one value (characters of a string, plus one per container item).
MAX_VALUE_LEN = 1 << 20
MAX_FORMAT_WIDTH = 4096
MAX_FILE_BYTES = 1 << 20
#: Tokens in one file (names, numbers, strings, operators, brackets).
MAX_TOKENS = 20_000
#: Sum of the sizes of all values one file builds (characters and container items).
MAX_TOTAL_SIZE = 4 << 20
#: Nesting of one value (a list in a list ... ) and of one expression in the source.
MAX_DEPTH = 32
MAX_EXPR_DEPTH = 200
#: Evaluation work per file: nodes evaluated, items hashed as dict keys, and items formatted
#: by ``%`` (each counted ``FORMAT_COST`` times: rendering costs more than hashing).
MAX_WORK = 4 << 20
FORMAT_COST = 4

_FORMAT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d*|\*)(?:\.(\d*|\*))?")


#: the "file" of values given as VAR=VALUE arguments
COMMAND_LINE = "<command line>"


@dataclass(frozen=True)
class Position:
    """Where something is in a config file (1-based line and column), or on the command line
    (no line)."""

    file: str
    line: int | None
    col: int | None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}:{self.col}"

    def error(self, message: str) -> ConfigError:
        """A ConfigError located here."""
        return ConfigError(message, file=self.file, line=self.line, col=self.col)


@dataclass
class ConfigValues:
    """The evaluated assignments of a config file, with where each came from."""

    file: str
    values: dict[str, Any] = field(default_factory=dict)
    #: where each name was (last) assigned
    positions: dict[str, Position] = field(default_factory=dict)
    #: for a name assigned a list/tuple literal: where each element is
    item_positions: dict[str, list[Position]] = field(default_factory=dict)
    #: names that other expressions in the file read: variables, not config keys
    referenced: set[str] = field(default_factory=set)
    #: names given on the command line
    cli_vars: frozenset[str] = frozenset()
    #: command-line names the file reads and then sets itself: name → (value given, where
    #: the file sets it); the file's value is the one that counts
    shadowed: dict[str, tuple[Any, Position]] = field(default_factory=dict)
    #: "file:line:col: text" warnings about how the file was read (octal numbers, escapes)
    warnings: list[str] = field(default_factory=list)
    #: values written as Python expressions xl's parser does not read (``+``, ``%``, names,
    #: tuples, True/None...): what, and where. Evidence of an xm file (config.domain), so an
    #: expression that reads a command-line variable (pvhvm's own templating) is left out
    expressions: list[tuple[str, Position]] = field(default_factory=list)

    def position(self, key: str, index: int | None = None) -> Position:
        """The position of ``key`` (or of its ``index``-th element where known)."""
        if index is not None:
            items = self.item_positions.get(key)
            if items is not None and index < len(items):
                return items[index]
        return self.positions.get(key, Position(self.file, 1, 1))


_DESCRIBE: dict[type[ast.AST], str] = {
    ast.Call: "a function call",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripting",
    ast.Lambda: "a lambda",
    ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.JoinedStr: "an f-string",
    ast.Import: "an import",
    ast.ImportFrom: "an import",
    ast.FunctionDef: "a function definition",
    ast.ClassDef: "a class definition",
    ast.If: "an if statement",
    ast.For: "a for loop",
    ast.While: "a while loop",
    ast.IfExp: "a conditional expression",
    ast.BoolOp: "and/or",
    ast.Compare: "a comparison",
    ast.Set: "a set",
    ast.Starred: "unpacking",
    ast.NamedExpr: "an assignment expression",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.With: "a with statement",
    ast.Try: "a try statement",
    ast.Delete: "del",
    ast.Global: "global",
}


def _describe(node: ast.AST) -> str:
    for kind, text in _DESCRIBE.items():
        if isinstance(node, kind):
            return text
    return type(node).__name__


@dataclass(frozen=True, slots=True)
class _Measure:
    """A value's expanded size (what printing, hashing or comparing it costs) and depth."""

    size: int
    depth: int


class _Evaluator:
    def __init__(self, file: str, env: dict[str, Any]) -> None:
        self.file = file
        self.env = env
        self.referenced: set[str] = set()
        #: id(container) -> (its measure, the container itself, kept alive so ids stay unique)
        self._measures: dict[int, tuple[_Measure, Any]] = {}
        self.total = 0
        self.work = 0

    def pos(self, node: ast.AST) -> Position:
        return Position(self.file, getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1)

    def fail(self, node: ast.AST, message: str) -> ConfigError:
        return self.pos(node).error(message)

    def not_allowed(self, node: ast.AST) -> ConfigError:
        return self.fail(
            node,
            f"{_describe(node)} is not allowed in a config file "
            "(only literals, lists, tuples, dicts, names, + and % are)",
        )

    def measure(self, value: Any) -> _Measure:
        """The expanded size and depth of ``value``, in O(1) for values built here; others
        (command-line values) are walked once."""
        if isinstance(value, str):
            return _Measure(len(value), 0)
        if not isinstance(value, list | tuple | dict):
            return _Measure(1, 0)
        known = self._measures.get(id(value))
        if known is not None and known[1] is value:
            return known[0]
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)
        parts = [self.measure(item) for item in items]
        result = _Measure(1 + sum(p.size for p in parts),
                          1 + max((p.depth for p in parts), default=0))
        self._measures[id(value)] = (result, value)
        return result

    def built(self, node: ast.AST, value: Any, items: list[Any] | None = None) -> Any:
        """Account for a value the file builds: its expanded size and depth (from its
        ``items`` when it is a new container), and its own size against the file's total."""
        if isinstance(value, list | tuple | dict):
            parts = [self.measure(item) for item in (items if items is not None else [])]
            if items is None:
                measured = self.measure(value)
            else:
                measured = _Measure(1 + sum(p.size for p in parts),
                                    1 + max((p.depth for p in parts), default=0))
                self._measures[id(value)] = (measured, value)
            own = len(value) + 1
        else:
            measured = self.measure(value)
            own = measured.size
        if measured.size > MAX_VALUE_LEN:
            raise self.fail(node, f"value is too large (over {MAX_VALUE_LEN} items or "
                                  "characters once expanded)")
        if measured.depth > MAX_DEPTH:
            raise self.fail(node, f"value is nested too deeply (over {MAX_DEPTH} levels)")
        self.total += own
        if self.total > MAX_TOTAL_SIZE:
            raise self.fail(node, f"the file builds too much data (over {MAX_TOTAL_SIZE} "
                                  "items and characters in all)")
        return value

    def spend(self, node: ast.AST, amount: int) -> None:
        """Charge ``amount`` to the file's work budget."""
        self.work += amount
        if self.work > MAX_WORK:
            raise self.fail(node, "the file takes too much work to evaluate "
                                  f"(over {MAX_WORK} steps)")

    def eval(self, node: ast.expr, depth: int = 0) -> Any:
        if depth > MAX_EXPR_DEPTH:
            raise self.fail(node, f"expression is nested too deeply (over {MAX_EXPR_DEPTH} "
                                  "levels)")
        self.spend(node, 1)
        inner = depth + 1
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool | int | float | str) or node.value is None:
                if isinstance(node.value, int) and not isinstance(node.value, bool) and (
                    abs(node.value) >= 1 << 64
                ):
                    raise self.fail(node, "integer is too large")
                return self.built(node, node.value)
            raise self.fail(node, f"a {type(node.value).__name__} literal is not allowed")
        if isinstance(node, ast.Name):
            if node.id not in self.env:
                raise self.fail(
                    node,
                    f"name {node.id!r} is not defined (assign it earlier in the file "
                    f"or give it on the command line as {node.id}=VALUE)",
                )
            self.referenced.add(node.id)
            return self.env[node.id]
        if isinstance(node, ast.List):
            items = [self.eval(e, inner) for e in node.elts]
            return self.built(node, items, items)
        if isinstance(node, ast.Tuple):
            items = [self.eval(e, inner) for e in node.elts]
            return self.built(node, tuple(items), items)
        if isinstance(node, ast.Dict):
            result: dict[Any, Any] = {}
            for key_node, value_node in zip(node.keys, node.values, strict=True):
                if key_node is None:
                    raise self.fail(value_node, "dict unpacking (**) is not allowed")
                key = self.eval(key_node, inner)
                value = self.eval(value_node, inner)
                # Hashing a key walks all of it: a tuple of copies of itself is exponential.
                key_size = self.measure(key).size
                if key_size > MAX_VALUE_LEN:
                    raise self.fail(key_node, "dict key is too large")
                self.spend(key_node, key_size)
                try:
                    result[key] = value
                except TypeError as err:
                    raise self.fail(key_node, "a dict key must be a string or number") from err
            return self.built(node, result, [*result.keys(), *result.values()])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.eval(node.operand, inner)
            if isinstance(operand, bool) or not isinstance(operand, int | float):
                raise self.fail(node, "unary - and + apply to numbers only")
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.add(node, inner)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return self.mod(node, inner)
        if isinstance(node, ast.BinOp):
            operator = type(node.op).__name__
            raise self.fail(node, f"operator {operator} is not allowed (only + and %)")
        raise self.not_allowed(node)

    def add(self, node: ast.BinOp, depth: int) -> Any:
        left, right = self.eval(node.left, depth), self.eval(node.right, depth)
        numbers = (int, float)
        if (
            isinstance(left, numbers) and isinstance(right, numbers)
            and not isinstance(left, bool) and not isinstance(right, bool)
        ):
            return left + right
        if isinstance(left, str) and isinstance(right, str):
            if len(left) + len(right) > MAX_VALUE_LEN:
                raise self.fail(node, f"value is too large (over {MAX_VALUE_LEN} characters)")
            return self.built(node, left + right)
        for kind in (list, tuple):
            if isinstance(left, kind) and isinstance(right, kind):
                if len(left) + len(right) > MAX_VALUE_LEN:
                    raise self.fail(node, f"value is too large (over {MAX_VALUE_LEN} items)")
                items = [*left, *right]
                return self.built(node, kind(items), items)
        raise self.fail(
            node, f"cannot add {type(left).__name__} and {type(right).__name__}"
        )

    def mod(self, node: ast.BinOp, depth: int) -> Any:
        left, right = self.eval(node.left, depth), self.eval(node.right, depth)
        if not isinstance(left, str):
            raise self.fail(node, "% is allowed only for string formatting")
        widths = conversions = 0
        for match in _FORMAT_WIDTH.finditer(left):
            conversions += 1
            for group in match.groups():
                if group == "*" or (group and int(group) > MAX_FORMAT_WIDTH):
                    raise self.fail(node, "format width or precision is too large")
                widths += int(group) if group else 0
        # Formatting renders the operand whole (a shared list can double at every level);
        # with a mapping, "%(k)s" may render the same value many times.
        weight = self.measure(right).size
        repeats = conversions if "%(" in left else 1
        bound = len(left) + widths + repeats * weight
        if weight > MAX_VALUE_LEN or bound > MAX_VALUE_LEN:
            raise self.fail(node, f"value is too large to format (over {MAX_VALUE_LEN})")
        self.spend(node, bound * FORMAT_COST)
        try:
            result = left % right
        except (TypeError, ValueError, KeyError, OverflowError) as err:
            raise self.fail(node, f"string formatting failed: {err}") from err
        if len(result) > MAX_VALUE_LEN:
            raise self.fail(node, f"value is too large (over {MAX_VALUE_LEN} characters)")
        return self.built(node, result)


#: One token of the config language, for the pre-scan: strings and comments are skipped
#: whole so that nothing inside them is read as a number. Strings are matched with
#: possessive, unrolled loops: a 1 MiB literal costs one pass, no backtracking state.
_TOKEN = re.compile(
    r"""(?P<space>[ \t\f\r\n\\]+)
      | (?P<comment>\#[^\r\n]*)
      | (?P<string>[rRbBuUfF]{0,2}
          (?:'''[^'\\]*+(?:(?:\\.|'(?!''))[^'\\]*+)*+(?:'''|\Z)
            | \"\"\"[^"\\]*+(?:(?:\\.|"(?!""))[^"\\]*+)*+(?:\"\"\"|\Z)
            | '[^\\'\r\n]*+(?:\\.[^\\'\r\n]*+)*+'?
            | "[^\\"\r\n]*+(?:\\.[^\\"\r\n]*+)*+"? ))
      | (?P<number>\.?[0-9](?:[0-9a-zA-Z_.]|(?<=[eE])[-+])*)
      | (?P<name>[^\W\d]\w*)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_LEGACY_OCTAL = re.compile(r"0[0-9]+")
#: Python's hints name Python constructs; the user wrote a config file.
_PYTHON_HINT = re.compile(r"(?:\.|;)\s*(?:Maybe|Perhaps|Did you|use an 0o prefix)[^\n]*$")


def _where(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _prescan(text: str, file: str, found: list[str]) -> str:
    """Count tokens against MAX_TOKENS and rewrite xl's octal numbers (``0512``) to their
    decimal value, padded to the same width so that every column stays where it was."""
    pieces: list[str] = []
    done = 0
    tokens = 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind in ("space", "comment"):
            continue
        tokens += 1
        if tokens > MAX_TOKENS:
            line, col = _where(text, match.start())
            raise ConfigError(f"the file has too many tokens (over {MAX_TOKENS}; a domain "
                              "config needs a few hundred)", file=file, line=line, col=col)
        word = match.group()
        if kind != "number" or not _LEGACY_OCTAL.fullmatch(word) or not word.strip("0"):
            continue
        line, col = _where(text, match.start())
        if set(word) - set("01234567"):
            raise ConfigError(
                f"{word} is not a number: a leading 0 makes it octal, as xl reads it, and "
                "8 and 9 are not octal digits", file=file, line=line, col=col)
        decimal = str(int(word, 8))
        found.append(f"{file}:{line}:{col}: {word} is read as octal, {decimal}, as xl reads "
                     f"it (Python 3 refuses it); write {decimal} or 0o{word.lstrip('0')}")
        pieces.append(text[done:match.start()])
        pieces.append(decimal.ljust(len(word)))
        done = match.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _syntax_message(err: SyntaxError) -> str:
    """A syntax error in our words: Python's hints about Python are left out."""
    message = _PYTHON_HINT.sub("", err.msg or "invalid syntax")
    if message.startswith(("invalid decimal literal", "invalid hexadecimal literal",
                           "invalid octal literal", "invalid binary literal",
                           "invalid digit")):
        return f"{message}: a number must be followed by a space, an operator or a bracket"
    if message.startswith("leading zeros"):
        return "a number cannot start with 0 followed by other digits and _"
    return message


def _parse_module(text: str, file: str, found: list[str]) -> ast.Module:
    """ast.parse with Python's warnings caught, never printed; invalid escapes become
    pvhvm warnings (Python keeps the backslash, as xm's Python 2 did)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            module = ast.parse(text, filename=file, mode="exec")
        except SyntaxError as err:
            raise ConfigError(f"syntax error: {_syntax_message(err)}", file=file,
                              line=err.lineno, col=err.offset) from err
        except RecursionError as err:
            raise ConfigError("an expression is nested too deeply to parse", file=file) \
                from err
        except (ValueError, MemoryError) as err:
            raise ConfigError(f"cannot parse: {err}", file=file) from err
    for warning in caught:
        text_ = str(warning.message)
        if text_.startswith("invalid escape sequence"):
            found.append(f"{file}:{warning.lineno}: {text_} in a string: read as a backslash "
                         "and the character after it (write \\\\ for a backslash)")
    return module


def parse_config(
    text: str, file: str = "<config>", variables: Mapping[str, Any] | None = None
) -> ConfigValues:
    """Evaluate config ``text`` safely; ``variables`` are names given on the command line.

    Command-line variables are visible to the file; those that the file does not read are
    also applied after it, so ``memory=1024`` on the command line overrides the file (as xl's
    ``KEY=VALUE`` arguments do).
    """
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"file is too large (over {MAX_FILE_BYTES} bytes)", file=file)
    nul = text.find("\x00")
    if nul >= 0:
        line, col = _where(text, nul)
        raise ConfigError("the file contains a NUL byte", file=file, line=line, col=col)
    found: list[str] = []
    module = _parse_module(_prescan(text, file, found), file, found)

    cli = dict(variables or {})
    env: dict[str, Any] = dict(cli)
    out = ConfigValues(file=file, cli_vars=frozenset(cli), warnings=found)
    evaluator = _Evaluator(file, env)
    for value in cli.values():
        evaluator.measure(value)
    try:
        for stmt in module.body:
            _statement(evaluator, stmt, out)
    except RecursionError as err:
        raise ConfigError("expression is nested too deeply", file=file) from err
    out.referenced = evaluator.referenced
    for name, value in cli.items():
        if name in evaluator.referenced and out.values.get(name, value) != value:
            out.shadowed[name] = (value, out.positions[name])
        if name not in evaluator.referenced:
            out.values[name] = value
            out.positions[name] = Position(COMMAND_LINE, None, None)
            out.item_positions.pop(name, None)
    return out


def _statement(ev: _Evaluator, stmt: ast.stmt, out: ConfigValues) -> None:
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(
        stmt.value.value, str
    ):
        return  # a docstring
    if isinstance(stmt, ast.Pass):
        return
    if isinstance(stmt, ast.Assign):
        for target in stmt.targets:
            if not isinstance(target, ast.Name):
                raise ev.fail(target, "only plain names can be assigned (NAME = value)")
        value = ev.eval(stmt.value)
        for target in stmt.targets:
            assert isinstance(target, ast.Name)
            _bind(ev, out, target, value, stmt.value)
            _note_expression(ev, out, target.id, stmt.value)
        return
    if isinstance(stmt, ast.AugAssign):
        if not isinstance(stmt.target, ast.Name):
            raise ev.fail(stmt.target, "only plain names can be assigned (NAME += value)")
        if not isinstance(stmt.op, ast.Add):
            raise ev.fail(stmt, "only += is allowed as an augmented assignment")
        synthetic = ast.BinOp(
            left=ast.Name(id=stmt.target.id, ctx=ast.Load()), op=ast.Add(), right=stmt.value
        )
        ast.copy_location(synthetic, stmt)
        ast.copy_location(synthetic.left, stmt.target)
        value = ev.eval(synthetic)
        ev.referenced.discard(stmt.target.id)
        old_items = out.item_positions.get(stmt.target.id, [])
        _bind(ev, out, stmt.target, value, stmt.value)
        if isinstance(stmt.value, ast.List | ast.Tuple):
            out.item_positions[stmt.target.id] = old_items + [ev.pos(e) for e in stmt.value.elts]
        _note_expression(ev, out, stmt.target.id, stmt.value)  # xl reads += of a literal
        return
    if isinstance(stmt, ast.AnnAssign):
        raise ev.fail(stmt, "annotated assignments are not allowed")
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        # xend's xmexample.hvm starts with "import os, re" to pick arch_libdir for
        # device_model; pvhvm never runs code, so say how to make such a file readable
        raise ev.fail(stmt, "an import is not allowed in a config file (pvhvm reads it, never "
                            "runs it); in a copy of xmexample.hvm, delete the import and the "
                            "arch/arch_libdir lines: they only choose device_model, which "
                            "pvhvm does not use")
    raise ev.not_allowed(stmt)


def python_only(node: ast.expr, cli: frozenset[str]) -> tuple[str, ast.AST] | None:
    """The first part of ``node`` that xl's config parser (libxlutil: strings, numbers,
    lists) does not read, and what it is; None for a literal, or when the expression reads
    a command-line variable (pvhvm's templating, not the file's toolstack)."""
    found: tuple[str, ast.AST] | None = None
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in cli:
            return None
        if found is not None:
            continue
        if isinstance(sub, ast.BinOp):
            found = ("'%' formatting" if isinstance(sub.op, ast.Mod) else "'+'"), sub
        elif isinstance(sub, ast.Name):
            found = f"the name {sub.id}", sub
        elif isinstance(sub, ast.Tuple | ast.Dict):
            found = ("a tuple" if isinstance(sub, ast.Tuple) else "a dict"), sub
        elif isinstance(sub, ast.UnaryOp):
            # libxlutil's lexer has unsigned numbers only: xl refuses "rtc_timeoffset = -3600"
            found = "a signed number", sub
        elif isinstance(sub, ast.Constant) and (sub.value is None or isinstance(sub.value, bool)):
            found = repr(sub.value), sub
    return found


def _note_expression(ev: _Evaluator, out: ConfigValues, name: str, node: ast.expr) -> None:
    found = python_only(node, out.cli_vars)
    if found is not None:
        what, where = found
        out.expressions.append((f"{name} = ... uses {what}", ev.pos(where)))


def _bind(ev: _Evaluator, out: ConfigValues, target: ast.Name, value: Any, node: ast.expr) -> None:
    ev.env[target.id] = value
    out.values[target.id] = value
    out.positions[target.id] = ev.pos(target)
    if isinstance(node, ast.List | ast.Tuple):
        out.item_positions[target.id] = [ev.pos(e) for e in node.elts]
    else:
        out.item_positions.pop(target.id, None)


def parse_cli_variable(assignment: str) -> tuple[str, Any]:
    """Parse a command-line ``NAME=VALUE``.

    VALUE is read as a literal of the config language (``vmid=3`` is the integer 3,
    ``disk=['...']`` a list); anything that is not a literal is taken as a plain string
    (``name=web1``).
    """
    name, sep, raw = assignment.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ConfigError(
            f"command-line variable {assignment!r} is not NAME=VALUE", file=COMMAND_LINE
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            node = ast.parse(_prescan(raw.strip(), COMMAND_LINE, []), mode="eval").body
        value = _Evaluator(COMMAND_LINE, {}).eval(node)
    except (SyntaxError, ValueError, ConfigError, RecursionError):
        value = raw
    return name, value


def read_config_text(path: str | os.PathLike[str]) -> str:
    """Read a config file as text, reading at most ``MAX_FILE_BYTES + 1`` bytes, so a huge
    file (or ``/dev/zero``) is refused after 1 MiB instead of read whole."""
    file = str(path)
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError as err:
        raise ConfigError("config file not found", file=file) from err
    except IsADirectoryError as err:
        raise ConfigError("is a directory, not a config file", file=file) from err
    except OSError as err:
        raise ConfigError(f"cannot read config file: {err.strerror or err}", file=file) from err
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"file is too large (over {MAX_FILE_BYTES} bytes)", file=file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[:err.start].decode("utf-8", "replace")
        line, col = _where(before, len(before))
        raise ConfigError("the file is not UTF-8 text", file=file, line=line,
                          col=col) from err


#: Characters no host path may hold (NUL ends a C string) or that only a hostile file puts
#: in one: the other C0 controls and DEL (they would also reach terminals raw).
_IMPOSSIBLE_IN_PATH = re.compile(r"[\x00-\x1f\x7f]")


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot be a host path (a NUL byte or a control character), or None."""
    bad = _IMPOSSIBLE_IN_PATH.search(value)
    if bad is None:
        return None
    char = bad.group()
    what = "a NUL byte" if char == "\x00" else f"the control character {char!r}"
    return f"a path cannot contain {what} (at character {bad.start() + 1})"


def check_path_value(value: str, key: str, where: Position) -> str:
    """Return ``value``, or raise a ConfigError at ``where`` naming ``key`` when it holds a
    character no path can (see `path_problem`). Call it where a path-valued key is read."""
    problem = path_problem(value)
    if problem is not None:
        raise where.error(f"{key}: {problem}")
    return value
