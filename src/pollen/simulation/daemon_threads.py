"""`DaemonThreadPool`: an executor whose threads never hold the process open.

`concurrent.futures.ThreadPoolExecutor` (and so asyncio's default executor)
joins its threads when the event loop closes and again when the interpreter
exits: a ClientApp still training when the user presses Ctrl-C would keep the
simulation alive until it returned. These threads are daemons, and `shutdown`
does not wait for them: a stopped simulation ends at once, its abandoned tasks
with it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadPool(Executor):
    """``size`` daemon threads taking work in order of submission."""

    def __init__(self, size: int, name: str = "pollen-sim") -> None:
        self.size = size
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self._closed:
            raise RuntimeError("the simulation's worker threads are shut down")
        future: Future[T] = Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; queued work is cancelled. ``wait`` waits for the threads to
        finish what they run now (never at exit: they are daemons)."""
        self._closed = True
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                work[0].cancel()
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
