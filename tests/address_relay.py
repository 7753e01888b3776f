"""A TCP relay that reaches a server from another loopback address.

Every test client connects from 127.0.0.1. A relay listens on 127.0.0.1 (port 0)
and opens each connection to the server from ``source`` (127.0.0.2 by default: all
of 127.0.0.0/8 is loopback on Linux), so that the server sees a second address.
TLS passes through untouched: clients still verify the server's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def relay(port: int, source: str = "127.0.0.2") -> AsyncIterator[int]:
    """Yield the port of a relay to 127.0.0.1:``port`` whose connections come from ``source``."""
    pipes: set[asyncio.Task[None]] = set()

    async def accept(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        server_reader, server = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0)
        )
        for task in (_pipe(client_reader, server), _pipe(server_reader, client)):
            pipe = asyncio.create_task(task)
            pipes.add(pipe)
            pipe.add_done_callback(pipes.discard)

    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(listener.sockets[0].getsockname()[1])
    finally:
        listener.close()
        for pipe in list(pipes):
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await listener.wait_closed()
