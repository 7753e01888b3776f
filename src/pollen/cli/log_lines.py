"""One log line per record: text from the network can never forge another line.

Node error texts, app names, peer addresses and refusal reasons reach the logs
of the SuperLink, the ServerApp and the SuperNodes. A newline or a terminal
escape sequence in them could fake a log line or rewrite the terminal, so
every control character in a message is shown escaped (``\\n``, ``\\x1b``).
Tracebacks, which Pollen writes itself, keep their lines.
"""

from __future__ import annotations

import logging

_ESCAPES = {
    code: repr(chr(code))[1:-1]
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
    if code != 0x09  # a tab cannot start a line
}


def one_line(text: str) -> str:
    """``text`` with its control characters (line breaks included) escaped."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """A `logging.Formatter` whose messages each stay on one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def install(verbose: bool) -> None:
    """Log to stderr, one line per record (the CLI's only handler)."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    # gRPC's Python layer logs a traceback (ExecuteBatchError) for every download a
    # client cancels while flow control holds it: noise anyone could cause, seen with -v.
    if not verbose:
        logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)
