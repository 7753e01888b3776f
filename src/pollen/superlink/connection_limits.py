"""What a TCP connection may cost the SuperLink before it is of any use.

Anyone can open connections to the Fleet API, and each one holds a file
descriptor: 1024 idle connections used to exhaust a default soft limit, and
then no node could join. Three bounds hold instead:

- the soft limit on open files is raised to the hard limit at start (at most
  `OPEN_FILES_CAP`), so connections and blob files have the room the system grants;
- a connection that has not finished its TLS handshake and HTTP/2 preface within
  `HANDSHAKE_SECONDS` of being accepted is closed (an idle TCP connection, a
  stalled TLS hello, a TLS session that never speaks HTTP/2);
- a connection with no call open for `IDLE_SECONDS` is closed; a client's
  channel reconnects by itself on its next call, and a SuperNode always has its
  task stream open.

Connections one source address holds before they make a call are capped
beside these, by `connection_cap`.
"""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 5.0
"""Seconds from accept to a finished TLS handshake and HTTP/2 preface."""

IDLE_SECONDS = 10.0
"""Seconds a connection may stay open with no call before it is closed."""

OPEN_FILES_CAP = 1 << 20
"""The soft limit on open files is raised to the hard limit, at most this."""


def connection_options(handshake: float, idle: float) -> list[tuple[str, int]]:
    """gRPC server options that close connections that finish no handshake, or sit idle."""
    return [
        ("grpc.server_handshake_timeout_ms", _milliseconds(handshake)),
        ("grpc.max_connection_idle_ms", _milliseconds(idle)),
    ]


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def raise_open_files_limit(cap: int = OPEN_FILES_CAP) -> int:
    """Raise this process's soft limit on open files to its hard limit (at most
    ``cap``); the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft == resource.RLIM_INFINITY or soft >= target:
        logger.debug("open-file limit: %d (hard limit %d)", soft, hard)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.debug("open-file limit stays %d, raising it to %d failed: %s", soft, target, exc)
        return soft
    logger.debug("open-file limit raised from %d to %d (hard limit %d)", soft, target, hard)
    return target
