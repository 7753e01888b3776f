"""Exponential backoff with jitter for reconnecting to a SuperLink."""

from __future__ import annotations

import random


class Backoff:
    """Delays of ``initial``, doubling up to ``maximum``, each with ±20% jitter."""

    def __init__(self, initial: float = 0.2, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * random.uniform(0.8, 1.2)
