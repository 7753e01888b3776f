"""When a client calls the SuperLink again after a failure, and how long it waits.

Every client reads a failed call's status through `classify`, so that a status
means the same thing to the ServerApp's Driver client, to a SuperNode, to a
blob download and to a node offering its result; what differs between them is
only which verdicts each acts on and its `Pace`:

========== ================================== =====================================
verdict    statuses                           who tries again
========== ================================== =====================================
away       `AWAY`                             every client, with backoff, until a deadline
passing    `PASSING` with a shortage's text   every client, with backoff, until a deadline
           (any `PASSING` for a join)
rejoin     `REJOIN`                           the Driver client (once); a node's next session
cut        `CUT`                              a download, resumed `DOWNLOAD_RESUMES` times
refused    every other status, and a          nobody: the same call gets the same answer
           session `displaced` by another
========== ================================== =====================================

A SuperNode opens a new session after any failure but a displacement or a
misconfiguration (`connection_faults`): that registers it again, it does not
repeat the refused call, and the SuperLink has already failed the tasks it cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import grpc

from pollen.errors import OUT_OF_DESCRIPTORS, STORAGE_FULL, CallRefused
from pollen.transport.backoff import Backoff

logger = logging.getLogger(__name__)

T = TypeVar("T")

Verdict = Literal["away", "passing", "rejoin", "cut", "refused"]
"""What a failed call's status tells its client about calling again (see the module)."""

AWAY = frozenset({grpc.StatusCode.UNAVAILABLE})
"""The SuperLink is not there (restarting, or the connection broke): call again with
backoff until a deadline; a SuperLink that comes back has kept everything."""

PASSING = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})
"""A shortage that may pass: call again with backoff. Only when the details say it will
(`SHORTAGES`), or for a join, which the SuperLink bounds per address and key for a while;
any other (a message over the size limit, a quota) would fail again the same way."""

SHORTAGES = (STORAGE_FULL, OUT_OF_DESCRIPTORS)
"""How a passing shortage's details start: the SuperLink's disk is full, or it has no
file descriptor left; the same call succeeds once space is freed or other transfers end."""

REJOIN = frozenset({grpc.StatusCode.UNAUTHENTICATED})
"""The SuperLink does not know the session (it restarted and forgot it): join again with
the same key, then call again. A join refused in turn is a refusal."""

CUT = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
"""A call that broke without the SuperLink saying why (a stream reset mid-way). A
download resumes from the last byte it has, a few times: it changes nothing, and the
digest check over the whole blob catches a bad resume. Any other call is not repeated:
it may have taken effect."""

DISPLACED = "replaced by another process with the same key"
"""How the SuperLink's answer starts when a newer session of a node's key ended this
one's: joining again would only displace that one in turn, so it is a refusal."""

DOWNLOAD_RESUMES = 3
"""Attempts of one blob download whose stream is cut: resumed at once from its offset
(the SuperLink is there: it sent the first part)."""


@dataclass(frozen=True)
class Pace:
    """The backoff of one kind of client: the first wait and the longest, in seconds."""

    initial: float
    maximum: float

    def backoff(self) -> Backoff:
        return Backoff(self.initial, self.maximum)


DRIVER_PACE = Pace(0.1, 2.0)
"""A ServerApp waits for the SuperLink beside it: short waits, a restart is seconds."""

NODE_PACE = Pace(0.2, 10.0)
"""A SuperNode reconnects from afar, with many others: longer waits, spread by jitter
(`SuperNodeConfig.max_backoff` may change the longest)."""

RESULT_PACE = Pace(0.5, 10.0)
"""A node offering its result to a SuperLink short of disk space or descriptors."""

RESULT_PATIENCE = 600.0
"""Seconds a node keeps offering a result while the shortage lasts: a result is not
thrown away for want of disk space."""


def storage_full(exc: grpc.aio.AioRpcError) -> bool:
    """The SuperLink's disk is full, or it is out of file descriptors (`SHORTAGES`)."""
    details = exc.details() or ""
    return exc.code() in PASSING and details.startswith(SHORTAGES)


def displaced(exc: grpc.aio.AioRpcError) -> bool:
    """Another process joined with this node's key and took its place (the Fleet API
    admits one session per key)."""
    details = exc.details() or ""
    ended = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ABORTED)
    return exc.code() in ended and details.startswith(DISPLACED)


def classify(exc: grpc.aio.AioRpcError, joining: bool = False) -> Verdict:
    """What ``exc`` tells its client about calling again; ``joining``: it ended a join
    (or the probe that goes with one), where every `PASSING` status passes."""
    code = exc.code()
    if displaced(exc):
        return "refused"
    if code in AWAY:
        return "away"
    if code in PASSING and (joining or storage_full(exc)):
        return "passing"
    if code in REJOIN:
        return "rejoin"
    if code in CUT:
        return "cut"
    return "refused"


def retry_later(exc: grpc.aio.AioRpcError, joining: bool = False) -> bool:
    """Whether the same call may succeed after a wait: the SuperLink is away, or short."""
    return classify(exc, joining) in ("away", "passing")


def refusal(superlink: object, exc: grpc.aio.AioRpcError) -> CallRefused:
    """``exc`` as the `CallRefused` the SuperLink at ``superlink`` gave: one line for the CLI."""
    return CallRefused(superlink, exc.code().name.lower(), exc.details() or "")


async def until_stored(
    send: Callable[[], Awaitable[T]],
    patience: float = RESULT_PATIENCE,
    pace: Pace = RESULT_PACE,
) -> T:
    """``await send()``, again while the SuperLink says its shortage passes, for up to
    ``patience`` seconds; then, or for any other failure, its `grpc.aio.AioRpcError`."""
    backoff = pace.backoff()
    deadline = time.monotonic() + patience
    while True:
        try:
            return await send()
        except grpc.aio.AioRpcError as exc:
            if classify(exc) != "passing" or time.monotonic() > deadline:
                raise
            delay = backoff.next_delay()
            logger.warning("%s; offering the result again in %.1f s", exc.details(), delay)
            await asyncio.sleep(delay)
