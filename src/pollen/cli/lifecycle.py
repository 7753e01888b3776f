"""Running a long-lived coroutine until SIGINT or SIGTERM asks it to stop."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` so that it can shut down gracefully."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await main(stop)

    _quieten_garbage_collector()
    return asyncio.run(runner())


def _quieten_garbage_collector() -> None:
    """Long-running processes: move what is loaded so far out of the collector's way.

    Streaming a model allocates a few objects per chunk; with the default
    thresholds the cyclic collector ran often enough to take ~7% of a
    large-model round, mostly re-scanning long-lived objects (numpy, torch,
    grpc). Frozen objects are never scanned again; garbage without cycles is
    still freed at once by reference counting.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
