"""tests/hosts.py for real: a network namespace with its own address and hostname, a real
OpenSSH server in it reached over the veth link, and nothing left once it is closed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.hosts import NetnsHost, namespace_pids, namespaces

needs_sshd = pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(),
                                reason="openssh-server is missing: run dev/setup")


def _host_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                          check=True).stdout


def test_namespace_has_its_own_address_and_state(second_host: NetnsHost) -> None:
    assert second_host.name in namespaces()
    inside = second_host.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True)
    assert inside.returncode == 0
    assert f"inet {second_host.address}/30" in inside.stdout
    assert second_host.host_address not in inside.stdout
    outside = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True,
                             check=True).stdout
    assert f"inet {second_host.host_address}/30" in outside
    assert f"inet {second_host.address}/" not in outside
    assert second_host.run(["hostname"], capture_output=True, text=True).stdout.strip() \
        == second_host.hostname
    env = second_host.run(["sh", "-c", "echo $PVHVM_STATE_DIR"], capture_output=True,
                          text=True).stdout.strip()
    assert env == str(second_host.state_dir) and second_host.state_dir.is_dir()


@needs_sshd
def test_ssh_into_the_second_host(second_host: NetnsHost) -> None:
    second_host.start_sshd()
    done = subprocess.run(
        [*second_host.ssh_argv(), "hostname; ip -o -4 addr; echo $PVHVM_STATE_DIR; "
         "echo $SSH_CONNECTION"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    hostname, *lines = done.stdout.splitlines()
    assert hostname == second_host.hostname
    assert any(f"inet {second_host.address}/30" in line for line in lines)
    assert str(second_host.state_dir) in lines
    # the client came from the host's end of the link, to the namespace's address
    client, _, server, port = lines[-1].split()
    assert (client, server, port) == (second_host.host_address, second_host.address, "22")
    # the shell-string form, as xl's `migrate -s` takes it
    via_shell = subprocess.run(f"{second_host.ssh_command} root@{second_host.address} "
                               "pvhvm --help", shell=True, capture_output=True, text=True,
                               timeout=60, check=False)
    assert via_shell.returncode == 0 and "Usage" in via_shell.stdout, via_shell.stderr
    # only the key made for it gets in
    stranger = second_host.root / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, timeout=60)
    argv = second_host.ssh_argv()
    argv[argv.index("-i") + 1] = str(stranger)
    refused = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr


@needs_sshd
def test_close_leaves_nothing() -> None:
    host = NetnsHost()
    with host:
        host.start_sshd()
        sshd_pid = host.sshd.pid if host.sshd else 0
        stray = host.popen(["sleep", "600"])  # something a test forgot in the namespace
        # `ip netns exec` enters the namespace a moment after it starts: wait for it there
        deadline = time.monotonic() + 10
        while stray.pid not in namespace_pids(host.name) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stray.pid in namespace_pids(host.name)
        links = _host_links()
        assert host.host_ifname in links
    stray.wait(timeout=10)
    assert host.name not in namespaces()
    assert host.host_ifname not in _host_links()
    assert not host.root.exists()
    assert not Path(f"/proc/{sshd_pid}").exists()
    assert not os.path.exists(f"/run/netns/{host.name}")


def test_a_failed_start_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    host = NetnsHost()
    monkeypatch.setattr(host, "_wait_link", lambda: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"), host:
        pass
    assert host.name not in namespaces()
    assert host.host_ifname not in _host_links()
    assert not host.root.exists()


def test_two_hosts_at_once_get_different_networks() -> None:
    with NetnsHost() as first, NetnsHost() as second:
        assert first.network != second.network
        assert len({first.address, second.address, first.host_address,
                    second.host_address}) == 4
        reached = first.run(["ip", "-j", "route"], capture_output=True, text=True)
        routes = [route["dst"] for route in json.loads(reached.stdout)]
        assert routes == [first.network]  # the second host cannot see the other one
