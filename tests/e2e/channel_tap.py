"""A tap on a migration channel, for the migrate tests: ``python channel_tap.py RATE PIDFILE --
COMMAND...`` runs COMMAND (the receiver, or ssh to it) with its stdin fed from ours at RATE
MiB/s and its stdout left to the channel, and writes COMMAND's pid to PIDFILE. RATE makes a
TCG guest's few hundred MiB take long enough to kill the receiver midway on purpose; the tap
closes its own copy of the channel's stdout, so a killed receiver ends the channel at once,
as a receiver whose sshd closes the session does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def main() -> int:
    rate, pidfile, command = float(sys.argv[1]) * 2**20, sys.argv[2], sys.argv[4:]
    receiver = subprocess.Popen(command, stdin=subprocess.PIPE)
    assert receiver.stdin is not None
    with open(pidfile, "w") as out:
        out.write(f"{receiver.pid}\n")
    os.close(1)
    start, sent = time.monotonic(), 0
    try:
        while chunk := os.read(0, 1 << 16):
            receiver.stdin.write(chunk)
            receiver.stdin.flush()
            sent += len(chunk)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    except BrokenPipeError:
        pass
    finally:
        try:
            receiver.stdin.close()
        except BrokenPipeError:
            pass
    return receiver.wait()


if __name__ == "__main__":
    sys.exit(main())
