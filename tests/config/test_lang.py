"""The safe config language: what it accepts, what it refuses, and that nothing runs."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.config.domain import config_from_text
from pvhvm.config.lang import (
    MAX_FILE_BYTES,
    Position,
    check_path_value,
    parse_cli_variable,
    parse_config,
    path_problem,
    read_config_text,
)
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
     ("disk=['a','b']", ("disk", ["a", "b"])), ("p=/tmp/x", ("p", "/tmp/x")),
     ("memory=0512", ("memory", 330)), ("x=1if 1 else 2", ("x", "1if 1 else 2"))],
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


# --- budgets and hostile files (issue 13) ------------------------------------------------

def _refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "g.cfg")
    assert str(info.value).startswith("g.cfg:")
    return info.value


def test_tuple_of_copies_of_itself_is_refused_before_it_is_hashed() -> None:
    """The 43-line file: hashing t would take 2**40 steps; it is refused where t grows too
    large, long before the dict is built."""
    text = "t = (1,)\n" + "t = (t, t)\n" * 40 + "d = {t: 1}\n"
    err = _refused(text)
    assert err.line is not None and err.line <= 41 and "too large" in err.message


def test_hashing_large_keys_is_a_work_budget() -> None:
    text = "t = (1,)\n" + "t = (t, t)\n" * 17 + "".join(f"d{i} = {{t: {i}}}\n" for i in range(40))
    err = _refused(text)
    assert "too much work" in err.message and err.line is not None and err.line > 19


def test_the_total_size_of_all_values_is_bounded_not_each_value() -> None:
    """300 distinct 1 MiB strings from a 4 KB file: each is within the per-value limit,
    together they are over the file's total."""
    text = "a = '%4096s' % 'x'\n" + "a = a + a\n" * 7 + "".join(
        f"v{i} = a + a\n" for i in range(300))
    assert len(text) < 5000
    err = _refused(text)
    assert "too much data" in err.message and err.line is not None and err.line < 20


def test_values_nested_through_names_are_bounded() -> None:
    err = _refused("a = [1]\n" + "a = [a]\n" * 40)
    assert "nested too deeply" in err.message and (err.line, err.col) == (33, 5)


@pytest.mark.parametrize("text", [
    "x = " + "1 + " * 300 + "1\n",
    "x = " + "- " * 300 + "1\n",
])
def test_deep_expressions_are_refused_with_a_position(text: str) -> None:
    err = _refused(text)
    assert "nested too deeply" in err.message and err.line == 1


def test_too_many_tokens_is_refused_before_parsing() -> None:
    """ast would take about 500 MB for a 1 MiB list of numbers; the token count stops it."""
    text = "x = [" + "1," * 400_000 + "]\n"
    err = _refused(text)
    assert "too many tokens" in err.message and err.line == 1


def test_formatting_a_shared_structure_is_bounded() -> None:
    text = "t = (1,)\n" + "t = (t, t)\n" * 17 + "x = '%s' % (t,)\n" * 40
    assert "too much" in _refused(text).message
    mapping = "d = {'k': '%4000s' % 'a'}\nx = '" + "%(k)s" * 300 + "' % d\n"
    assert "too large to format" in _refused(mapping).message


def test_read_config_text_reads_at_most_the_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^/dev/zero: file is too large"):
        read_config_text("/dev/zero")
    exact = tmp_path / "exact.cfg"
    exact.write_text("#" * MAX_FILE_BYTES)
    assert len(read_config_text(exact)) == MAX_FILE_BYTES
    (tmp_path / "over.cfg").write_text("#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="too large"):
        read_config_text(tmp_path / "over.cfg")
    (tmp_path / "latin.cfg").write_bytes(b'name = "g"\nx = "\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin.cfg:2:6: the file is not UTF-8"):
        read_config_text(tmp_path / "latin.cfg")
    with pytest.raises(ConfigError, match="is a directory"):
        read_config_text(tmp_path)


def test_a_nul_byte_in_the_file_names_its_position() -> None:
    err = _refused("x = 1\ny = 2\x00\n")
    assert (err.line, err.col) == (2, 6) and "NUL" in err.message


# --- numbers as xl reads them ---------------------------------------------------------

def test_leading_zero_is_octal_as_in_xl_with_a_warning() -> None:
    raw = parse_config("memory = 0512\nname = '0512' # 0512\nz = [00, 0, 0o17, 1.05, 05.5]\n",
                       "g.cfg")
    assert raw.values["memory"] == 0o512 == 330
    assert raw.values["name"] == "0512" and raw.values["z"] == [0, 0, 15, 1.05, 5.5]
    assert raw.warnings == ["g.cfg:1:10: 0512 is read as octal, 330, as xl reads it "
                            "(Python 3 refuses it); write 330 or 0o512"]
    config = config_from_text('name = "g"\nmemory = 0512\n', "g.cfg")
    assert config.memory == 330 and any("octal" in w for w in config.warnings)


def test_columns_after_an_octal_number_stay_right() -> None:
    err = _refused("x = [0512, 1 2]\n")
    assert (err.line, err.col) == (1, 12)


def test_a_leading_zero_with_8_or_9_is_refused_as_xl_refuses_it() -> None:
    err = _refused("memory = 09\n")
    assert (err.line, err.col) == (1, 10) and "not octal digits" in err.message


# --- nothing of Python's reaches the user -------------------------------------------------

@pytest.mark.parametrize("text", [
    "memory = 1if 1 else 2\n", "memory = 0x1for\n", "memory = 0512\n", "x = 'a\\d'\n",
    "memory = 1_000\n", "x = 1 is 1\n", "memory = 0b12\n",
])
def test_no_python_warning_is_raised_or_printed(text: str, capfd: pytest.CaptureFixture[str]
                                                ) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(ConfigError):
            parse_config(text, "g.cfg")
    assert caught == []
    out, err = capfd.readouterr()
    assert out == err == ""


@pytest.mark.parametrize(("text", "line", "col"), [
    ("if x = 1: pass\n", 1, 4), ("x = 1 = 2\n", 1, 5), ("x = [1 2]\n", 1, 6),
    ("x == = 1\n", 1, 6), ("print 'a'\n", 1, 1), ("x = (1,\n", 1, 5),
    ("memory = 0_5\n", 1, 10), ("memory = 12abc\n", 1, 10),
])
def test_syntax_errors_are_worded_without_python_hints(text: str, line: int, col: int) -> None:
    err = _refused(text)
    assert err.line == line and err.message.startswith("syntax error: ")
    for hint in ("Maybe", "Perhaps", "Did you", "0o prefix", "print("):
        assert hint not in err.message


def test_cli_prints_one_line_and_no_warning(tmp_path: Path) -> None:
    """Through the real CLI in a fresh interpreter with Python's warnings all on."""
    for text in ("name = 'g'\nmemory = 1if 1 else 2\n", "name = 'g'\nmemory = 0x1for\n"):
        cfg = tmp_path / "bad.cfg"
        cfg.write_text(text)
        proc = subprocess.run(
            [sys.executable, "-W", "always", "-m", "pvhvm", "create", str(cfg), "--dry-run"],
            capture_output=True, text=True, check=False)
        assert proc.returncode == 1
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pvhvm: error: {cfg}:2:"), lines
    proc = subprocess.run([sys.executable, "-m", "pvhvm", "create", "/dev/zero", "--dry-run"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr == "pvhvm: error: /dev/zero: file is too large (over 1048576 bytes)\n"


# --- paths ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "problem"), [
    ("unix:/tmp/a\x00b", "a path cannot contain a NUL byte (at character 12)"),
    ("/img/a\nb", "a path cannot contain the control character '\\n' (at character 7)"),
    ("/img/\x1b[31m", "control character '\\x1b'"),
])
def test_impossible_path_characters(value: str, problem: str) -> None:
    assert problem in (path_problem(value) or "")
    where = Position("g.cfg", 3, 10)
    with pytest.raises(ConfigError, match=r"^g.cfg:3:10: serial: a path cannot contain"):
        check_path_value(value, "serial", where)


def test_ordinary_paths_pass() -> None:
    for value in ("/img/a b.img", "unix:/tmp/x,server", "/srv/été/g.img", "pty"):
        assert path_problem(value) is None
        assert check_path_value(value, "kernel", Position("g.cfg", 1, 1)) == value


# --- property: hostile programs end quickly, in values or one error -----------------------

_HOSTILE = st.sampled_from([
    "t = (t, t)", "l = l + l", "s = s + s", "s = '%s%s' % (s, s)", "d = {t: s}",
    "s = '%s' % (l,)", "l = [l, l]", "d = {'k': d, 'j': d}", "s = '%(k)s%(k)s' % {'k': s}",
    "t = (d, l, t)", "x = 0512", "x = 077 + 0o7",
])


@given(st.lists(_HOSTILE, max_size=60))
def test_self_referencing_programs_give_values_or_one_error(lines: list[str]) -> None:
    text = "t = (1,)\nl = [1]\ns = 'ab'\nd = {}\n" + "\n".join(lines) + "\n"
    try:
        parse_config(text, "g.cfg")
    except ConfigError as err:
        assert str(err).startswith("g.cfg:") and "\n" not in str(err)


# --- Python-only values: evidence of an xm file (issue 20) -----------------------------

_xl_literal = st.recursive(
    st.one_of(st.integers(0, 1 << 31), st.text(alphabet="abc/:,= -_.", max_size=12)),
    lambda items: st.lists(items, max_size=4), max_leaves=8)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["memory", "disk", "vif", "extra", "boot"]),
                       _xl_literal, max_size=5))
def test_literals_xl_reads_are_no_python_evidence(values: dict[str, object]) -> None:
    text = "\n".join(f"{key} = {value!r}" for key, value in values.items())
    assert parse_config(text, "g.cfg").expressions == []


@pytest.mark.parametrize(
    ("text", "what"),
    [('a = "x"\nb = a', "the name a"), ('b = "x" + "y"', "'+'"), ('b = "%d" % 3', "'%'"),
     ("b = (1, 2)", "a tuple"), ("b = {'k': 1}", "a dict"), ("b = None", "None"),
     ("b = [True]", "True")],
)
def test_python_only_values_are_noted_where_they_are(text: str, what: str) -> None:
    found = parse_config(text, "g.cfg").expressions
    assert len(found) == 1 and what in found[0][0] and found[0][1].file == "g.cfg"


def test_an_expression_on_a_command_line_variable_is_pvhvms_templating() -> None:
    assert parse_config('disk = ["file:" + d + "/x,hda,w"]', "g.cfg", {"d": "/i"}).expressions == []
    assert parse_config('disk = ["x"]\ndisk += ["y"]', "g.cfg").expressions == []
