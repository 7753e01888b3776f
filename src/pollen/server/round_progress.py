"""What the round loop says about a round while it runs, for a live progress display.

The round loop reports each phase of a round (its fit, its evaluation): how many
tasks it sent, then after each reply how many succeeded and failed so far. The
default, `NO_PROGRESS`, ignores it all: a run then reports its rounds in the log
only (one summary line per round). The CLI gives a terminal renderer instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pollen.records.messages import Message


@dataclass(frozen=True)
class Phase:
    """One phase of a round: ``name`` (``"fit"`` or ``"evaluate"``) sent ``tasks`` tasks."""

    server_round: int
    num_rounds: int
    name: str
    tasks: int


class RoundProgress:
    """A sink for a run's progress; this base class ignores everything.

    Its methods are called from the round loop, once per phase and once per reply,
    so they must return at once: a renderer stores the counts and draws them later.
    """

    def phase_started(self, phase: Phase) -> None:
        """``phase``'s tasks were sent; none has finished yet."""

    def tasks_finished(self, ok: int, failed: int) -> None:
        """So far in the current phase, ``ok`` tasks succeeded and ``failed`` failed."""

    def phase_ended(self, ok: int, failed: int) -> None:
        """The current phase is over: ``ok`` tasks succeeded, ``failed`` failed (a task
        without a reply in time failed)."""


NO_PROGRESS = RoundProgress()


def counts_told(
    progress: RoundProgress, ok: Callable[[], int], failures: list[str]
) -> Callable[[], None]:
    """What tells ``progress`` the counts now; an `InstructionRound` calls it when an
    error reply fails a task, which `reporting` does not see."""
    return lambda: progress.tasks_finished(ok(), len(failures))


async def reporting(
    progress: RoundProgress,
    phase: Phase,
    replies: AsyncIterator[Message],
    ok: Callable[[], int],
    failures: list[str],
) -> AsyncIterator[Message]:
    """``replies``, telling ``progress`` the counts after the caller has handled each one:
    ``ok()`` results taken, ``failures`` the phase's failures (error replies, rejected
    results and timeouts all land there)."""
    progress.phase_started(phase)
    async for reply in replies:
        yield reply
        progress.tasks_finished(ok(), len(failures))
    progress.phase_ended(ok(), len(failures))
