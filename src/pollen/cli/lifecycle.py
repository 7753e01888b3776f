"""Running a long-lived coroutine until SIGINT or SIGTERM asks it to stop."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_until_signalled(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, T]],
    holds_models: bool = False,
    one_run: bool = False,
) -> T:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` so that it can shut down gracefully.

    ``holds_models``: the process builds a model-sized buffer every round (a
    ServerApp, a SuperNode), so freed memory stays with it for the next round.
    ``one_run``: the process ends with its run (a ServerApp), so freed memory
    is never handed back at all.
    """

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await main(stop)

    _quieten_garbage_collector()
    _keep_freed_memory_for_reuse(holds_models, one_run)
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


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SERVICE_ARENAS = 2
_KEEP_FREE_BYTES = 64 * 1024 * 1024
_KEEP_FREE_MODEL_BYTES = 2**31 - 1  # mallopt takes a C int: about 2 GiB
_KEEP_ALL_FREED = -1  # as M_TRIM_THRESHOLD's value: never hand memory back


def _keep_freed_memory_for_reuse(holds_models: bool, one_run: bool = False) -> None:
    """glibc: let chunk-sized buffers reuse memory instead of faulting fresh pages in.

    Every 1 MiB chunk of a streamed blob is a new buffer. With glibc's defaults
    freed memory at the top of the heap goes back to the kernel as soon as 2 MiB
    of it are free, so the next chunks fault fresh zeroed pages in again:
    measured, page faults and page clearing took about a third of the
    ServerApp's CPU in a large-model round. Up to 64 MiB of freed memory per
    heap is kept for reuse instead, and buffers below 32 MiB come from the heap.

    With ``holds_models``, model-sized buffers the main thread allocates (a
    downloaded model, the aggregate) come from the heap too (glibc still maps
    those of other threads), and up to 2 GiB of freed memory is kept: glibc
    unmaps buffers it got by mmap as soon as they are freed, and on this
    project's VM memory handed back is reclaimed by the host, so each round's
    new model-sized buffer was touched fresh, at 1.6 GB/s against 33 GB/s for
    memory in use (measured: the ServerApp's CPU per round at 500 MB fell from
    1.3-1.65 s to 1.07-1.21 s, its peak RSS unchanged).

    A process that ends with its run (``one_run``, the ServerApp) keeps all it
    frees: with a 2.5 GB model the previous round's aggregate, freed at the top
    of the heap, was more than 2 GiB and went back to the kernel every round,
    so the next aggregate faulted 2.5 GB in afresh (measured: half of the
    ServerApp's CPU, 15.5 s per round against 9.9).

    Otherwise (the SuperLink) its threads share two heaps: each heap keeps up
    to 64 MiB of freed memory, and with glibc's default of a heap per busy
    thread the SuperLink's peak RSS with 8 nodes moving a 500 MB model was
    0.58 GB; with two heaps 0.30 GB.

    Elsewhere (musl, macOS), or when MALLOC_* or GLIBC_TUNABLES is set, this does
    nothing.
    """
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return  # the operator tuned malloc: theirs wins
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    keep = _KEEP_FREE_MODEL_BYTES if holds_models else _KEEP_FREE_BYTES
    mallopt(_M_TRIM_THRESHOLD, _KEEP_ALL_FREED if one_run else keep)
    if holds_models:
        mallopt(_M_MMAP_MAX, 0)
    else:
        mallopt(_M_ARENA_MAX, _SERVICE_ARENAS)
