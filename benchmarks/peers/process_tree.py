"""Processes a peer benchmark started, and their descendants: stopping them by PID, peak RSS.

Flower's processes start children of their own (``flower-superexec``, which starts
``flwr-serverapp`` and ``flwr-clientapp``), some in new sessions, so a process
group is not enough: the tree is read from ``/proc`` and every process in it is
signalled by its PID, checked against its start time so that a reused PID is
never hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable

from process_stats import peak_rss

# pid -> (ppid, start time in clock ticks since boot)
Table = dict[int, tuple[int, int]]


def _stat(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie holds no memory and needs no signal
        return None
    return int(fields[1]), int(fields[19])


def process_table() -> Table:
    """Every live process on the machine: pid -> (ppid, start time)."""
    table: Table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            table[int(entry)] = stat
    return table


def descendants(root: int, table: Table) -> list[int]:
    """The children of ``root``, their children, and so on (not ``root`` itself)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def program(pid: int) -> str:
    """The program's name: the basename of the script Python runs, else of the executable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return ""
    names = [os.path.basename(arg.decode(errors="replace")) for arg in argv[:2] if arg]
    if len(names) == 2 and names[0].startswith("python"):
        return names[1]
    return names[0] if names else ""


def _signal_alive(targets: dict[int, int], signum: int) -> list[int]:
    """Send ``signum`` to each target still running with its recorded start time."""
    alive = []
    for pid, started in targets.items():
        stat = _stat(pid)
        if stat is None or stat[1] != started:
            continue
        try:
            os.kill(pid, signum)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def _wait_gone(targets: dict[int, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((s := _stat(pid)) is None or s[1] != started for pid, started in targets.items()):
            return
        time.sleep(0.05)


def _tree(pids: Iterable[int]) -> dict[int, int]:
    """``pids`` still running and all their descendants: pid -> start time."""
    table = process_table()
    return {
        pid: table[pid][1]
        for root in pids
        if root in table
        for pid in [root, *descendants(root, table)]
    }


def stop(processes: Iterable[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """Stop ``processes`` and all their descendants, each by its PID.

    SIGTERM to the started processes first (Flower's shut their children down
    themselves); after ``grace`` seconds, SIGTERM to whatever of the tree is left,
    and SIGKILL two seconds later.
    """
    roots = [p for p in processes if p.poll() is None]
    targets = _tree(p.pid for p in roots)
    _signal_alive({p.pid: targets[p.pid] for p in roots if p.pid in targets}, signal.SIGTERM)
    _wait_gone({p.pid: targets[p.pid] for p in roots if p.pid in targets}, grace)
    # Children started while the tree was stopping (of processes still the ones recorded).
    survivors = [pid for pid, start in targets.items() if (s := _stat(pid)) and s[1] == start]
    targets.update(_tree(survivors))
    _signal_alive(targets, signal.SIGTERM)
    _wait_gone(targets, 2.0)
    _signal_alive(targets, signal.SIGKILL)
    _wait_gone(targets, 2.0)
    for root in roots:
        root.wait(timeout=grace)


class PeakRssSampler:
    """Samples ``VmHWM`` of named process trees every ``interval`` seconds, in a thread.

    ``label(root_name, pid, program)`` names the figure a process counts towards
    (or returns None to skip it); the result keeps the largest value per name.
    ``VmHWM`` is the kernel's own high-water mark, so a sample taken before a
    process exits already holds its peak.
    """

    def __init__(
        self,
        roots: dict[str, int],
        label: Callable[[str, int, str], str | None],
        interval: float = 0.05,
    ) -> None:
        self._roots = roots
        self._label = label
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self._programs: dict[tuple[int, int], str] = {}
        self.peaks: dict[str, int] = {}

    def __enter__(self) -> PeakRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self) -> None:
        table = process_table()
        for root_name, root in self._roots.items():
            if root not in table:
                continue
            for pid in [root, *descendants(root, table)]:
                key = (pid, table[pid][1])
                if key not in self._programs:
                    self._programs[key] = program(pid)
                name = self._label(root_name, pid, self._programs[key])
                if name is not None:
                    self.peaks[name] = max(peak_rss(pid), self.peaks.get(name, 0))
