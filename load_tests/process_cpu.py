"""Each process's share of a core over an interval, from /proc (Linux), busiest first:
what a load run's CPU went to on a shared host.

    .venv/bin/python load_tests/process_cpu.py 20        # seconds
"""

from __future__ import annotations

import os
import sys
import time


def cpu_ticks() -> dict[int, tuple[int, str]]:
    """pid -> (user + system clock ticks so far, command line)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")[:90]
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(entry)] = (int(fields[11]) + int(fields[12]), command or stat.split()[1])
    return out


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20
    before = cpu_ticks()
    time.sleep(seconds)
    after = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    shares = sorted(
        ((after[p][0] - before[p][0]) / hz / seconds * 100, p, after[p][1])
        for p in after
        if p in before
    )
    for share, pid, command in reversed(shares[-18:]):
        print(f"{share:6.1f}% {pid} {command}")


if __name__ == "__main__":
    main()
