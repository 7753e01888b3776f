"""Limiting repeated failed joins without blocking others.

Failures are counted per source address for joins that did not prove possession
of their key (anyone can send those, in anyone's name), and per key and address
only for failures after a valid proof (only the key's holder can cause those).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

UNPROVEN = "unproven"
"""The second half of a per-address key: failures of joins that proved nothing."""

MAX_COUNTED = 100_000
"""Addresses (and key-address pairs) followed at most; the oldest go first."""


def unproven(source: str) -> tuple[str, str]:
    """The limiter key of ``source``'s joins that did not prove possession of a key."""
    return (source, UNPROVEN)


def proven(source: str, fingerprint: str) -> tuple[str, str]:
    """The limiter key of the joins of ``fingerprint``'s holder from ``source``."""
    return (source, fingerprint)


class FailureLimiter:
    """At most ``max_failures`` failures per key within ``window`` seconds."""

    def __init__(self, max_failures: int, window: float, clock: Callable[[], float]) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        # Only the last max_failures times matter: a flood costs one short deque.
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        cutoff = self.clock() - self.window
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, key: tuple[str, str]) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        times = self._recent(key)
        if len(times) < self.max_failures:
            return 0.0
        return max(0.0, times[0] + self.window - self.clock())

    def record_failure(self, key: tuple[str, str]) -> None:
        self._recent(key)
        times = self._failures.pop(key, None) or deque(maxlen=max(1, self.max_failures))
        times.append(self.clock())
        self._failures[key] = times  # last failure last: the oldest go first below
        while len(self._failures) > MAX_COUNTED:
            self._failures.pop(next(iter(self._failures)))
