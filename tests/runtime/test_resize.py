"""mem-set / vcpu-set: xl's MEM grammar and limits (pure), the record changes, and the xen
platform's XenStore nodes read back with Xen's own xenstore-read from pvhvm's xenstored."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.runtime import resize
from pvhvm.runtime.resize import ResizeError, parse_memory_kib, parse_vcpus
from pvhvm.runtime.state import DomainRecord
from pvhvm.xenstore.daemon import DaemonProcess
from tests.xen.test_xen_platform import ROOT, images, pvhvm, short_dir, xenstored, xs

__all__ = ["images", "short_dir", "xenstored"]  # fixtures used below


def record_of(memory: int = 256, maxmem: int | None = 512, vcpus: int = 1,
              maxvcpus: int | None = 3) -> DomainRecord:
    return DomainRecord(
        name="g", domid=1, uuid="00000000-0000-0000-0000-000000000001", platform="qemu",
        memory_mib=memory, vcpus=vcpus,
        plan={"memory": memory, "maxmem": maxmem, "vcpus": vcpus, "maxvcpus": maxvcpus},
        argv=["qemu", "-m", f"{maxmem or memory}M", "-smp", f"{vcpus},maxcpus={maxvcpus}"],
        on_poweroff="destroy", on_reboot="restart", on_crash="destroy")


@pytest.mark.parametrize(("text", "kib"), [
    ("512", 512 * 1024), ("512m", 512 * 1024), ("512M", 512 * 1024), ("1g", 1 << 20),
    ("1G", 1 << 20), ("2t", 2 << 30), ("300000k", 300000), ("1048576b", 1024), ("0", 0),
])
def test_memory_sizes_as_xl_reads_them(text: str, kib: int) -> None:
    assert parse_memory_kib(text) == kib


@pytest.mark.parametrize("text", ["", "m", "1x", "1mb", "-5", "1.5g", " 512", "512 ", "١٢"])
def test_memory_that_is_not_a_size(text: str) -> None:
    with pytest.raises(ResizeError, match="is not a size"):
        parse_memory_kib(text)


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=1 << 40), st.sampled_from("kKmMgGtTbB"))
def test_memory_suffixes_scale(number: int, suffix: str) -> None:
    shift = {"k": 0, "m": 10, "g": 20, "t": 30}.get(suffix.lower())
    expected = number >> 10 if shift is None else number << shift
    assert parse_memory_kib(f"{number}{suffix}") == expected
    assert parse_memory_kib(str(number)) == number << 10


@settings(deadline=None)
@given(st.text(max_size=8))
def test_any_text_is_a_size_or_one_error(text: str) -> None:
    try:
        kib = parse_memory_kib(text)
    except ResizeError as err:
        assert "\n" not in str(err)
    else:
        assert kib >= 0


def test_vcpus_parse() -> None:
    assert parse_vcpus("2") == 2
    for text in ("", "two", "-1", "1.0", "²"):
        with pytest.raises(ResizeError, match="not a whole number"):
            parse_vcpus(text)


def test_memory_limits_are_xls() -> None:
    record = record_of()
    resize.check_memory(record, 512 * 1024)  # up to maxmem
    resize.check_memory(record, resize.MIN_MEMORY_MIB * 1024)
    with pytest.raises(ResizeError, match="above the domain's maximum, maxmem = 512 MiB"):
        resize.check_memory(record, 512 * 1024 + 1)
    with pytest.raises(ResizeError, match="below the least"):
        resize.check_memory(record, 0)
    # no maxmem: memory is the static maximum
    with pytest.raises(ResizeError, match="maxmem = 256 MiB"):
        resize.check_memory(record_of(maxmem=None), 257 * 1024)


def test_vcpu_limits_are_xls() -> None:
    record = record_of()
    resize.check_vcpus(record, 2, ignore_host=False, host_cpus=2)
    with pytest.raises(ResizeError, match="at least 1"):
        resize.check_vcpus(record, 0, ignore_host=False, host_cpus=2)
    with pytest.raises(ResizeError, match="maxvcpus = 3"):
        resize.check_vcpus(record, 4, ignore_host=True, host_cpus=8)
    with pytest.raises(ResizeError, match="overcommit this host's 2 CPUs"):
        resize.check_vcpus(record, 3, ignore_host=False, host_cpus=2)
    resize.check_vcpus(record, 3, ignore_host=True, host_cpus=2)
    with pytest.raises(ResizeError, match="maxvcpus = 1"):
        resize.check_vcpus(record_of(maxvcpus=None), 2, ignore_host=True)


def test_the_record_keeps_the_new_values_and_the_maximum() -> None:
    record = record_of(maxmem=None, maxvcpus=None, vcpus=2)
    resize.record_memory(record, 200 * 1024 + 512)
    assert (record.memory_mib, record.plan["memory"], record.plan["maxmem"]) == (200, 200, 256)
    assert resize.target_kib(record) == 200 * 1024 + 512
    resize.record_vcpus(record, 1)
    assert (record.vcpus, record.plan["vcpus"], record.plan["maxvcpus"]) == (1, 1, 2)
    # the maximum stays what it was at create
    with pytest.raises(ResizeError, match="maxmem = 256"):
        resize.check_memory(record, 257 * 1024)
    assert resize.smp_argv(["-smp", "1,maxcpus=3"], 2) == ["-smp", "2,maxcpus=3"]
    assert resize.smp_argv(["-smp", "1"], 1) == ["-smp", "1"]


@pytest.mark.skipif(shutil.which("xenstore-read") is None, reason="xenstore-utils missing")
def test_xen_platform_writes_what_xl_writes(
    xenstored: DaemonProcess, images: Path, short_dir: Path
) -> None:
    sock = xenstored.socket_path
    state = short_dir / "state"
    created = pvhvm(state, "create", str(ROOT / "examples" / "pv-only.cfg"),
                    f"imagedir={images}", "--platform", "xen", "--xenstore", str(sock),
                    "maxmem=1024", "maxvcpus=3")
    assert created.returncode == 0, created.stderr
    home = "/local/domain/1"

    done = pvhvm(state, "mem-set", "pv-only", "768m")
    assert done.returncode == 0, done.stderr
    assert xs(sock, "xenstore-read", f"{home}/memory/target").strip() == str(768 * 1024)
    done = pvhvm(state, "vcpu-set", "pv-only", "2")
    assert done.returncode == 0, done.stderr
    assert [xs(sock, "xenstore-read", f"{home}/cpu/{n}/availability").strip()
            for n in range(3)] == ["online", "online", "offline"]
    listed = pvhvm(state, "list", "pv-only").stdout.splitlines()[1].split()
    assert listed[2:4] == ["768", "2"]

    # refusals: one line, exit 1, nothing written
    for argv, words in ((("mem-set", "pv-only", "1025"), "maxmem = 1024 MiB"),
                        (("mem-set", "pv-only", "lots"), "is not a size"),
                        (("vcpu-set", "pv-only", "4"), "maxvcpus = 3"),
                        (("vcpu-set", "pv-only", "0"), "at least 1")):
        refused = pvhvm(state, *argv)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused
        assert words in refused.stderr and "Traceback" not in refused.stderr
    assert xs(sock, "xenstore-read", f"{home}/memory/target").strip() == str(768 * 1024)
    assert xs(sock, "xenstore-read", f"{home}/cpu/2/availability").strip() == "offline"
    assert pvhvm(state, "destroy", "pv-only").returncode == 0
