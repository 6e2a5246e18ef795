"""config.values: port specs, VNC listen addresses, interface names and keymaps, typed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.config.domain import config_from_text
from pvhvm.config.values import (
    KEYMAPS,
    Chardev,
    ChardevKind,
    ifname_problem,
    keymap_problem,
    parse_chardev,
    parse_vnc_listen,
)
from pvhvm.errors import ConfigError, SpecError


@pytest.mark.parametrize(("text", "chardev"), [
    ("pty", Chardev(ChardevKind.PTY)),
    ("null", Chardev(ChardevKind.NULL)),
    ("none", Chardev(ChardevKind.NONE)),
    ("file:/var/log/a,b", Chardev(ChardevKind.FILE, path="/var/log/a,b")),
    ("unix:/run/s", Chardev(ChardevKind.UNIX, path="/run/s")),
    ("unix:/run/a,,b,server,nowait", Chardev(ChardevKind.UNIX, path="/run/a,b")),
    ("unix:/run/s,server=on,wait=off", Chardev(ChardevKind.UNIX, path="/run/s")),
    ("tcp::4555", Chardev(ChardevKind.TCP, host="127.0.0.1", port=4555)),
    ("tcp:0.0.0.0:4555,server,nowait", Chardev(ChardevKind.TCP, host="0.0.0.0", port=4555)),
    ("tcp:[::1]:4555", Chardev(ChardevKind.TCP, host="::1", port=4555)),
    ("tcp:host.example:1", Chardev(ChardevKind.TCP, host="host.example", port=1)),
])
def test_port_forms(text: str, chardev: Chardev) -> None:
    assert parse_chardev(text) == chardev
    assert parse_chardev(chardev.spec) == chardev


@pytest.mark.parametrize(("text", "words"), [
    ("stdio", "no terminal"), ("vc", "not supported"), ("unix:", "not supported"),
    ("unix:/s,server=off", "option 'server=off'"), ("unix:/s,reconnect=1", "reconnect"),
    ("tcp:h:0", "port 1-65535"), ("tcp:h:99999", "port 1-65535"), ("tcp:h", "HOST:PORT"),
    ("tcp:a,b:1", "HOST:PORT"), ("tcp:[x]:1", "not an IPv6"), ("tcp:a b:1", "not an IPv4"),
    ("file:/a\nb", "control character"), ("/dev/ttyS0", "not supported"),
])
def test_bad_ports_are_one_line(text: str, words: str) -> None:
    with pytest.raises(SpecError, match=words) as info:
        parse_chardev(text)
    assert "\n" not in str(info.value)


def test_tcp_only_where_asked() -> None:
    with pytest.raises(SpecError, match="not supported"):
        parse_chardev("tcp::1", "parallel", tcp=False)


@settings(deadline=None)
@given(st.sampled_from([ChardevKind.FILE, ChardevKind.UNIX]),
       st.text(min_size=1).filter(lambda t: t.isprintable()))
def test_a_path_reads_back_from_its_spec(kind: ChardevKind, path: str) -> None:
    chardev = Chardev(kind, path=path)
    assert parse_chardev(chardev.spec) == chardev


@pytest.mark.parametrize(("text", "result"), [
    ("127.0.0.1", ("127.0.0.1", None)), ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("::1", ("::1", None)), ("[::1]", ("::1", None)), ("[::1]:5", ("::1", 5)),
    ("vnc.example.org", ("vnc.example.org", None)), ("localhost:3", ("localhost", 3)),
])
def test_vnc_listen_addresses(text: str, result: tuple[str, int | None]) -> None:
    assert parse_vnc_listen(text) == result


@pytest.mark.parametrize("text", [
    "[::1]:0,websocket=0.0.0.0", "0.0.0.0,to=5", "a b", "", ":1", "[::1", "[::1]x",
    "fe80::1%eth0", "1.2.3", "host:99999", "host:-1", "127.0.0.1\n", "h_st",
])
def test_what_is_not_a_listen_address(text: str) -> None:
    with pytest.raises(SpecError, match="vnclisten"):
        parse_vnc_listen(text)


def test_interface_names() -> None:
    for good in ("xenbr0", "br-lan.10", "vif1.0-emu", "a" * 15):
        assert ifname_problem(good) is None
    for bad in ("", ".", "..", "a" * 16, "br 0", "br,0", "a/b", "a:1", "a=b", "br\n"):
        assert ifname_problem(bad) is not None


def test_keymaps_are_qemus() -> None:
    assert all(keymap_problem(k) is None for k in KEYMAPS)
    assert keymap_problem("../../etc/x") is not None and keymap_problem("en-us,x") is not None


@pytest.mark.parametrize(("line", "key"), [
    ('vnclisten = "[::1]:0,websocket=0.0.0.0"', "vnclisten"),
    ('vncdisplay = 70000', "vncdisplay"), ('keymap = "xx"', "keymap"),
    ('vfb = ["type=vnc,keymap=xx"]', "vfb"), ('serial = "tcp::0"', "serial"),
    ('serial = ["pty", "stdio"]', "serial"), ('parallel = "stdio"', "parallel"),
    ('vif = ["bridge=br 0"]', "vif"), ('rtc_timeoffset = "--5"', "rtc_timeoffset"),
    ('rtc_timeoffset = 99999999999', "rtc_timeoffset"), ('name = "g\\n"', "name"),
])
def test_config_keys_refused_at_their_line(line: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_text(f'name = "g"\nbuilder = "hvm"\n{line}\n', "g.cfg")
    message = str(info.value)
    assert message.startswith(("g.cfg:3:", "g.cfg:1:")) and "\n" not in message


def test_xm_listen_display_and_bare_ipv6() -> None:
    config = config_from_text('name="g"\nvnc=1\nvnclisten="0.0.0.0:4"\n', "g.cfg")
    assert (config.vnc_listen, config.vnc_display) == ("0.0.0.0", 4)
    config = config_from_text('name="g"\nvnc=1\nvnclisten="::1"\n', "g.cfg")
    assert (config.vnc_listen, config.vnc_display) == ("::1", None)  # not display 1 of ":"
    config = config_from_text('name="g"\nvnc=1\nvnclisten="0.0.0.0:4"\nvncdisplay=7\n', "g.cfg")
    assert config.vnc_display == 7


@settings(deadline=None)
@given(st.sampled_from([ChardevKind.TCP, ChardevKind.TELNET, ChardevKind.UDP]),
       st.sampled_from(["127.0.0.1", "::1", "host.example", "0.0.0.0"]),
       st.integers(1, 65535), st.one_of(st.none(), st.integers(1, 65535)),
       st.sampled_from([None, "10.0.0.1", "fe80::1"]))
def test_a_network_port_reads_back_from_its_spec(
        kind: ChardevKind, host: str, port: int, local_port: int | None,
        local_host: str | None) -> None:
    """telnet/tcp/udp (issue 20): the xl spelling a Chardev gives is read as that Chardev."""
    udp = kind is ChardevKind.UDP
    chardev = Chardev(kind, host=host, port=port,
                      local_host=local_host if udp and local_port is not None else None,
                      local_port=local_port if udp else None)
    assert parse_chardev(chardev.spec) == chardev


@pytest.mark.parametrize(
    ("text", "chardev"),
    [("telnet:127.0.0.1:9999,listen", Chardev(ChardevKind.TELNET, host="127.0.0.1", port=9999)),
     ("telnet::23,server,nowait", Chardev(ChardevKind.TELNET, host="127.0.0.1", port=23)),
     ("udp:[::1]:5555@:6666", Chardev(ChardevKind.UDP, host="::1", port=5555, local_port=6666)),
     ("udp:10.0.0.2:5555", Chardev(ChardevKind.UDP, host="10.0.0.2", port=5555))],
)
def test_telnet_and_udp_ports(text: str, chardev: Chardev) -> None:
    assert parse_chardev(text) == chardev
    with pytest.raises(SpecError, match="is not supported"):
        parse_chardev(text, tcp=False)
