"""sidebyside.py in the dom0 of pvhvm's Xen host (issue 19 item 5; not a timed test).

Builds here what dom0 lacks (it has no gcc): ``xsload`` (throughput.py's C client) and the
``nohyp.so`` shim (tests/xen/xlpeer/nohyp.c, against the headers of Debian's Xen 4.17
packages that sidebyside.py unpacks), both for Debian 12 like dom0; copies them with this
directory's scripts to /root/xsbench in dom0 and runs ``sidebyside.py --in-dom0`` there with
the arguments after ``--``. pvhvm's daemon in dom0 is the copy installed in the Xen host image
(this checkout's, when the image was built from it); the Xen daemons are dom0's installed
/usr/lib/xen-4.17/bin/xenstored and oxenstored, started beside dom0's own running xenstored
(left alone) in mount namespaces of their own.

The Xen host is the one ``dev/xenhost`` booted (``--ssh``: the ssh command it printed, as one
argument), or, without ``--ssh``, one booted here for this run and stopped after it. Usage::

    PYTHONPATH=src:. .venv/bin/python benchmarks/xenstore/dom0.py --ssh "ssh -p PORT ..." \\
        -- --only throughput --real --seconds 2 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import sidebyside
import throughput

from pvhvm.guest.xenhost import build_xenhost
from tests.xen.host import booted

HERE = Path(__file__).resolve().parent
#: where the scripts and binaries go in dom0
REMOTE = "/root/xsbench"
#: what dom0 is asked about itself before the run (printed with the figures)
FACTS = ("echo \"dom0: $(nproc) vCPUs, $(free -m | awk '/Mem:/ {print $2}') MiB; "
         "xenstored: $(cat /proc/$(pidof xenstored oxenstored | cut -d' ' -f1)/comm)\"; "
         "xl info | grep -E '^(xen_version|nr_cpus|xen_commandline|virt_caps)'; "
         "python3 -c 'import pvhvm; print(\"pvhvm\", pvhvm.__file__)'")


def payload(tmp: Path) -> bytes:
    """A tar of this directory's scripts and the binaries built here for dom0."""
    sidebyside.unpack()
    binaries = [throughput.compile_xsload(tmp), sidebyside.build_shim(tmp)]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path in [*sorted(HERE.glob("*.py")), *binaries]:
            tar.add(path, arcname=path.name)
    return out.getvalue()


@contextlib.contextmanager
def dom0_ssh(command: str | None) -> Iterator[list[str]]:
    """The ssh argv (without the remote command) of the given Xen host, or of one booted for
    this run."""
    if command is not None:
        yield shlex.split(command)
        return
    image = build_xenhost(progress=lambda message: print(message, file=sys.stderr))
    with booted(image) as host:
        print(f"Xen host ready after {host.ready_after:.0f} s", file=sys.stderr)
        yield host.ssh_argv()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ssh", help="the ssh command dev/xenhost printed (one argument); "
                                      "without it a Xen host is booted for this run")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="-- then sidebyside.py's arguments")
    args = parser.parse_args()
    forwarded = args.args[1:] if args.args[:1] == ["--"] else args.args
    with tempfile.TemporaryDirectory(prefix="xsd0", dir="/tmp") as tmpdir, \
            dom0_ssh(args.ssh) as ssh:
        data = payload(Path(tmpdir))
        subprocess.run([*ssh, f"rm -rf {REMOTE} && mkdir -p {REMOTE} && tar -xz -C {REMOTE}"],
                       input=data, check=True)
        subprocess.run([*ssh, FACTS], check=False)
        command = (f"cd {REMOTE} && python3 sidebyside.py --in-dom0 --xsload ./xsload "
                   f"--shim ./nohyp.so {shlex.join(forwarded)}")
        print(f"dom0# {command}", flush=True)
        code = subprocess.run([*ssh, command], check=False).returncode
        subprocess.run([*ssh, f"rm -rf {REMOTE}"], check=False)
    sys.exit(code)


if __name__ == "__main__":
    main()
