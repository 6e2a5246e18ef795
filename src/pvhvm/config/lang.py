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
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pvhvm.errors import ConfigError

#: Bounds that keep a hostile file from using unbounded memory through ``+`` or ``%``.
MAX_VALUE_LEN = 1 << 20
MAX_FORMAT_WIDTH = 4096
MAX_FILE_BYTES = 1 << 20

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


class _Evaluator:
    def __init__(self, file: str, env: dict[str, Any]) -> None:
        self.file = file
        self.env = env
        self.referenced: set[str] = set()

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

    def check_weight(self, node: ast.AST, value: Any) -> None:
        """Refuse a value whose rendering would be too large: nested lists can share
        themselves (``a = [a, a]``), so their printed size can double at every level."""
        budget = MAX_VALUE_LEN
        stack = [value]
        while stack:
            item = stack.pop()
            budget -= len(item) if isinstance(item, str) else 1
            if budget < 0:
                raise self.fail(node, f"value is too large to format (over {MAX_VALUE_LEN})")
            if isinstance(item, list | tuple):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())

    def check_size(self, node: ast.AST, value: Any) -> Any:
        if isinstance(value, str | list | tuple | dict) and len(value) > MAX_VALUE_LEN:
            raise self.fail(node, f"value is too large (over {MAX_VALUE_LEN} items)")
        return value

    def eval(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool | int | float | str) or node.value is None:
                if isinstance(node.value, int) and not isinstance(node.value, bool) and (
                    abs(node.value) >= 1 << 64
                ):
                    raise self.fail(node, "integer is too large")
                return node.value
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
            return self.check_size(node, [self.eval(e) for e in node.elts])
        if isinstance(node, ast.Tuple):
            return self.check_size(node, tuple(self.eval(e) for e in node.elts))
        if isinstance(node, ast.Dict):
            result: dict[Any, Any] = {}
            for key_node, value_node in zip(node.keys, node.values, strict=True):
                if key_node is None:
                    raise self.fail(value_node, "dict unpacking (**) is not allowed")
                key = self.eval(key_node)
                value = self.eval(value_node)
                try:
                    result[key] = value
                except TypeError as err:
                    raise self.fail(key_node, "a dict key must be a string or number") from err
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.eval(node.operand)
            if isinstance(operand, bool) or not isinstance(operand, int | float):
                raise self.fail(node, "unary - and + apply to numbers only")
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.add(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return self.mod(node)
        if isinstance(node, ast.BinOp):
            operator = type(node.op).__name__
            raise self.fail(node, f"operator {operator} is not allowed (only + and %)")
        raise self.not_allowed(node)

    def add(self, node: ast.BinOp) -> Any:
        left, right = self.eval(node.left), self.eval(node.right)
        numbers = (int, float)
        if (
            isinstance(left, numbers) and isinstance(right, numbers)
            and not isinstance(left, bool) and not isinstance(right, bool)
        ):
            return left + right
        same_kind = any(
            isinstance(left, kind) and isinstance(right, kind) for kind in (str, list, tuple)
        )
        if same_kind:
            result: Any = left + right
            return self.check_size(node, result)
        raise self.fail(
            node, f"cannot add {type(left).__name__} and {type(right).__name__}"
        )

    def mod(self, node: ast.BinOp) -> Any:
        left, right = self.eval(node.left), self.eval(node.right)
        if not isinstance(left, str):
            raise self.fail(node, "% is allowed only for string formatting")
        for match in _FORMAT_WIDTH.finditer(left):
            for group in match.groups():
                if group == "*" or (group and int(group) > MAX_FORMAT_WIDTH):
                    raise self.fail(node, "format width or precision is too large")
        self.check_weight(node, right)
        try:
            result = left % right
        except (TypeError, ValueError, KeyError, OverflowError) as err:
            raise self.fail(node, f"string formatting failed: {err}") from err
        return self.check_size(node, result)


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
    if "\x00" in text:
        raise ConfigError("file contains a NUL byte", file=file)
    try:
        module = ast.parse(text, filename=file, mode="exec")
    except SyntaxError as err:
        raise ConfigError(
            f"syntax error: {err.msg}", file=file, line=err.lineno, col=err.offset
        ) from err
    except (ValueError, MemoryError, RecursionError) as err:
        raise ConfigError(f"cannot parse: {err}", file=file) from err

    cli = dict(variables or {})
    env: dict[str, Any] = dict(cli)
    out = ConfigValues(file=file, cli_vars=frozenset(cli))
    evaluator = _Evaluator(file, env)
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
        return
    if isinstance(stmt, ast.AnnAssign):
        raise ev.fail(stmt, "annotated assignments are not allowed")
    raise ev.not_allowed(stmt)


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
        node = ast.parse(raw.strip(), mode="eval").body
        value = _Evaluator(COMMAND_LINE, {}).eval(node)
    except (SyntaxError, ValueError, ConfigError, RecursionError):
        value = raw
    return name, value
