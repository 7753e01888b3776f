"""The SuperLink's background loops, supervised: none of them stops silently.

Heartbeat expiry, task TTLs, blob sweeps, the allow-list watcher and the idle
transfer cut-off each run a *step* over and over. A step that fails is logged
with its cause and tried again after a backoff; a storage fault (a full disk)
is logged and tried again at the loop's own pace, as it passes by itself. A
loop whose step keeps failing for another reason stops the SuperLink with a
clear message: a SuperLink whose allow-list watcher died would keep admitting
revoked keys while it looked healthy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pollen.errors import StorageError, SuperLinkFailed
from pollen.transport.backoff import Backoff

logger = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None]]
"""One round of a loop: it waits for its own interval, then does its work."""

MAX_FAILURES = 5
"""Failures in a row (no successful step between them) after which the SuperLink stops."""

RETRY_AFTER = (0.5, 30.0)
"""Backoff after a failed step: first and longest wait, in seconds (doubling between)."""


class Supervisor:
    """Runs loops as tasks of one group; `failure` is set when one gives up."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: asyncio.Future[SuperLinkFailed] = asyncio.get_running_loop().create_future()

    def start(self, name: str, step: Step) -> None:
        """Run ``step`` over and over until the supervisor closes."""
        self._tasks.append(asyncio.create_task(self._run(name, step), name=name))

    async def _run(self, name: str, step: Step) -> None:
        backoff = _backoff()
        failures = 0
        while True:
            try:
                await step()
            except StorageError as exc:  # passes once space is freed: the loop goes on
                logger.error("%s: %s", name, exc)
                continue
            except Exception as exc:
                failures += 1
                logger.error(
                    "%s failed (%d of %d in a row): %s: %s",
                    name,
                    failures,
                    MAX_FAILURES,
                    type(exc).__name__,
                    exc,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                if failures >= MAX_FAILURES:
                    self._give_up(name, exc)
                    return
                await asyncio.sleep(backoff.next_delay())
                continue
            failures = 0
            backoff = _backoff()

    def _give_up(self, name: str, exc: Exception) -> None:
        if not self.failure.done():
            self.failure.set_result(
                SuperLinkFailed(
                    f"the SuperLink stopped: {name} failed {MAX_FAILURES} times in a row "
                    f"({type(exc).__name__}: {exc}); it cannot run safely without it. Fix the "
                    "cause (see the log) and start it again: nothing stored is lost"
                )
            )

    async def close(self) -> None:
        """Cancel every loop and wait for them to end."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self.failure.done():
            self.failure.cancel()


def _backoff() -> Backoff:
    first, longest = RETRY_AFTER
    return Backoff(initial=first, maximum=longest)
