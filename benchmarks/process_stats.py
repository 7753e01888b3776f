"""What the benchmarks read about a live process from /proc (Linux): CPU time and memory."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (fields 14 and 15 of /proc/PID/stat);
    0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss(pid: int) -> int:
    """Peak resident memory of a live process, in bytes (0 once it is gone)."""
    return _status_kib(pid, "VmHWM:") * 1024


def rss_mib(pid: int) -> float:
    """Resident memory now, in MiB."""
    return _status_kib(pid, "VmRSS:") / 1024
