"""Virtual device numbers (xen-vbd-interface(7))."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.errors import SpecError
from pvhvm.plan.vdev import index_to_letters, letters_to_index, parse_vdev


@pytest.mark.parametrize(
    ("name", "devid"),
    [("hda", 768), ("hdb", 832), ("hdc", 5632), ("hdd", 5696), ("sda", 2048), ("sdb", 2064),
     ("xvda", 51712), ("xvdb", 51728), ("xvdq", 268439552), ("xvda1", 51713),
     ("hda1", 769), ("hdt", (91 << 8) + 64), ("sdp15", 2048 | 15 << 4 | 15),
     ("xvdaa", (1 << 28) | (26 << 8)), ("xvda16", (1 << 28) | 16),
     # libxl's other spellings: d<disk>p<partition> (xvd numbering) and a bare number
     ("d0p0", 51712), ("d1p2", 51730), ("d16p0", (1 << 28) | (16 << 8)), ("51712", 51712),
     ("0xca10", 51728), ("268439552", 268439552)],
)
def test_worked_values(name: str, devid: int) -> None:
    assert parse_vdev(name).devid == devid


@pytest.mark.parametrize(
    "name", ["hdu", "hda64", "sdq", "sda16", "vda", "xvd", "xvda0x", "fd0", "xvdzzzzz", "",
             "d1048576p0", "d0p256", "d01p0", "0", "2147483648", "-1", "0x", "1e3"],
)
def test_refused(name: str) -> None:
    with pytest.raises(SpecError):
        parse_vdev(name)


def test_ide_places() -> None:
    assert [parse_vdev(n).ide_place for n in ("hda", "hdb", "hdc", "hdd", "hde", "hda1")] == [
        (0, 0), (0, 1), (1, 0), (1, 1), None, None,
    ]


@given(st.integers(0, 100_000))
def test_letters_round_trip(index: int) -> None:
    assert letters_to_index(index_to_letters(index)) == index


@given(st.sampled_from(["hd", "sd", "xvd"]), st.integers(0, 300), st.integers(0, 300))
def test_distinct_names_distinct_devids(family: str, a: int, b: int) -> None:
    try:
        first = parse_vdev(f"{family}{index_to_letters(a)}")
        second = parse_vdev(f"{family}{index_to_letters(b)}")
    except SpecError:
        return
    assert (first.devid == second.devid) == (a == b)


def test_numbered_spellings_default_to_pv_and_are_never_ide() -> None:
    assert parse_vdev("d0p0").ide_place is None and parse_vdev("768").ide_place is None
    assert parse_vdev("d0p0").family.value == "xvd"
    assert parse_vdev("768").family.value == "number"
