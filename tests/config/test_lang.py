"""The safe config language: what it accepts, what it refuses, and that nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.config.domain import config_from_text
from pvhvm.config.lang import parse_cli_variable, parse_config
from pvhvm.errors import ConfigError, PvhvmError


def values(text: str, **variables: object) -> dict[str, object]:
    return parse_config(text, "g.cfg", variables).values


def test_literals_lists_dicts_and_operators() -> None:
    v = values(
        'name = "web"\nmemory = 256 + 256\nvcpus = -(-2)\nratio = 1.5\nacpi = True\n'
        'x = None\nd = {"a": [1, (2, 3)]}\ndisk = ["a"] + ["b"]\n'
        'path = "/img/%s-%d.img" % (name, 3)\nsuffix = "%(n)s" % {"n": name}\n'
        '"""docstring"""\npass\n'
    )
    assert v["memory"] == 512 and v["vcpus"] == 2 and v["ratio"] == 1.5
    assert v["acpi"] is True and v["x"] is None
    assert v["d"] == {"a": [1, (2, 3)]}
    assert v["disk"] == ["a", "b"]
    assert v["path"] == "/img/web-3.img"
    assert v["suffix"] == "web"


def test_augmented_assignment_and_chained() -> None:
    v = values("disk = ['a']\ndisk += ['b']\na = b = 3\n")
    assert v["disk"] == ["a", "b"] and v["a"] == v["b"] == 3


def test_command_line_variables_are_visible_and_override() -> None:
    raw = parse_config('name = "vm%d" % vmid\nmemory = 128\n', "g.cfg", {"vmid": 3, "memory": 1024})
    assert raw.values["name"] == "vm3"
    assert raw.values["memory"] == 1024  # not read by the file: applied after it
    assert "vmid" not in raw.values


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [("vmid=3", ("vmid", 3)), ("name=web1", ("name", "web1")), ("x='a b'", ("x", "a b")),
     ("disk=['a','b']", ("disk", ["a", "b"])), ("p=/tmp/x", ("p", "/tmp/x"))],
)
def test_cli_variable(assignment: str, expected: tuple[str, object]) -> None:
    assert parse_cli_variable(assignment) == expected


@pytest.mark.parametrize("bad", ["novalue", "=3", "1x=2"])
def test_cli_variable_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_cli_variable(bad)


@pytest.mark.parametrize(
    ("text", "line", "col", "words"),
    [
        ("x = __import__('os').system('touch /tmp/pwned')", 1, 5, "function call"),
        ("import os", 1, 1, "import"),
        ("from os import system", 1, 1, "import"),
        ("name = 'a'\nf = open('/etc/passwd')", 2, 5, "function call"),
        ("x = 'a'.upper", 1, 5, "attribute"),
        ("x = [i for i in range(3)]", 1, 5, "comprehension"),
        ("x = lambda: 1", 1, 5, "lambda"),
        ("x = f'{1}'", 1, 5, "f-string"),
        ("x = [1][0]", 1, 5, "subscript"),
        ("x = undefined_name", 1, 5, "not defined"),
        ("x = 2 * 3", 1, 5, "Mult"),
        ("x = 'a' + 1", 1, 5, "cannot add"),
        ("x = (", 1, 5, "syntax error"),
        ("def f(): pass", 1, 1, "function definition"),
        ("x.y = 1", 1, 1, "plain names"),
        ("x = '%99999999d' % 1", 1, 5, "too large"),
        ("x = '%s %s' % 1", 1, 5, "formatting failed"),
        ("x = b'bytes'", 1, 5, "bytes"),
        ("x = 1 if 1 else 2", 1, 5, "conditional"),
        ("x: int = 1", 1, 1, "annotated"),
    ],
)
def test_refused_with_position(text: str, line: int, col: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "g.cfg")
    err = info.value
    assert (err.file, err.line) == ("g.cfg", line)
    if words != "syntax error":
        assert err.col == col
    assert words in str(err)
    assert str(err).startswith(f"g.cfg:{line}:")


def test_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"x = __import__('os').system('touch {marker}')\n"
    with pytest.raises(ConfigError):
        parse_config(text)
    assert not marker.exists()


def test_doubling_is_bounded() -> None:
    text = "a = 'xx'\n" + "a = a + a\n" * 40
    with pytest.raises(ConfigError, match="too large"):
        parse_config(text)


def test_deep_nesting_is_an_error() -> None:
    with pytest.raises(PvhvmError):
        parse_config("x = " + "[" * 5000 + "]" * 5000)


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_config("import os")


@given(st.text(max_size=200))
def test_any_text_gives_values_or_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError:
        pass


_atoms = st.one_of(
    st.integers(-1000, 1000).map(str), st.sampled_from(["'a'", "\"b%s\"", "None", "True", "x"]),
)
_exprs = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.tuples(inner, st.sampled_from([" + ", " % ", " * ", ".", "("]), inner).map("".join),
        inner.map(lambda s: f"({s},)"),
        inner.map(lambda s: "{'k': " + s + "}"),
    ),
    max_leaves=8,
)


@given(st.lists(_exprs, max_size=5))
def test_expression_soup_gives_values_or_config_error(exprs: list[str]) -> None:
    text = "x = 1\n" + "\n".join(f"v{i} = {e}" for i, e in enumerate(exprs))
    try:
        parse_config(text)
    except ConfigError:
        pass


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"memory": "abc"}, "<command line>: memory must be a whole number, not 'abc'"),
        ({"vcpus": 0}, "<command line>: vcpus = 0 is out of range (1..255)"),
    ],
)
def test_errors_in_command_line_overrides_name_the_command_line(
    variables: dict[str, object], message: str
) -> None:
    """A key the command line overrides is the command line's: its errors point there, not
    at the file's line 1 or at the file's own (overridden) assignment."""
    with pytest.raises(ConfigError) as info:
        config_from_text('name = "g"\nmemory = 256\nvcpus = 1\n', "g.cfg", variables)
    assert str(info.value).startswith(message)


def test_errors_in_the_file_still_name_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_text('name = "g"\nmemory = "abc"\n', "g.cfg", {"vcpus": 2})
    assert str(info.value).startswith("g.cfg:2:1: memory must be a whole number")



def test_command_line_value_the_file_replaces_gets_a_warning() -> None:
    """A command-line name the file reads stays a variable and the file's own assignment
    wins (as in xm); that is said, not silent."""
    config = config_from_text('name = "g"\nmemory = 256\nmaxmem = memory\n', "g.cfg",
                              {"memory": 512})
    assert config.memory == 256 and config.warnings == (
        "g.cfg:2:1: the file sets memory itself, so memory=512 from the command line only "
        "counts before this line",)
    # Keys the file does not read are overridden, with no warning.
    plain = config_from_text('name = "g"\nmemory = 256\n', "g.cfg", {"memory": 512})
    assert plain.memory == 512 and plain.warnings == ()


def test_unknown_key_on_the_command_line_is_warned_like_one_in_the_file() -> None:
    config = config_from_text('name = "g"\nmemory = 256\n', "g.cfg", {"memroy": 512})
    assert config.memory == 256 and config.warnings == (
        "<command line>: unknown key 'memroy' ignored (did you mean 'memory'?)",)
    # A name the file reads is its variable, not a key: no warning.
    assert config_from_text('name = "g" + sfx\n', "g.cfg", {"sfx": "1"}).warnings == ()
