"""qemu.opts: the one escaping function and option-string builder (QemuOpts rules)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.errors import PlanError
from pvhvm.qemu.opts import escape, initrd_value, option_string, split_option_string

_KEYS = st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True)


def test_a_comma_is_doubled_and_nothing_else_changes() -> None:
    assert escape("/a,b,,c=d e") == "/a,,b,,,,c=d e"
    assert option_string([("file", "/a,b"), ("readonly", True), ("unit", 1)],
                         head="ide-hd") == "ide-hd,file=/a,,b,readonly=on,unit=1"
    assert option_string([("romfile", ""), ("locking", False)]) == "romfile=,locking=off"


@settings(deadline=None)
@given(st.one_of(st.none(), st.text()),
       st.lists(st.tuples(_KEYS, st.one_of(st.text(), st.integers(), st.booleans()))))
def test_every_value_reads_back_as_one_item(head: str | None,
                                            pairs: list[tuple[str, str | int | bool]]) -> None:
    if head is None and not pairs:
        return
    items = split_option_string(option_string(pairs, head=head))
    expected = [] if head is None else [head]
    expected += [f"{key}={('on' if value else 'off') if isinstance(value, bool) else value}"
                 for key, value in pairs]
    assert items == expected


@pytest.mark.parametrize("key", ["", "a,b", "a=b", "x y", "a\n", ",id"])
def test_a_key_is_never_data(key: str) -> None:
    with pytest.raises(PlanError, match="not an option name"):
        option_string([(key, "v")])


def test_initrd_takes_no_comma() -> None:
    assert initrd_value("/boot/initrd.img") == "/boot/initrd.img"
    with pytest.raises(PlanError, match="splits at commas"):
        initrd_value("/boot/initrd.img,/etc/shadow")
