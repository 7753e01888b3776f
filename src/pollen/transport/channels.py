"""gRPC channels and servers with Pollen's options, plaintext or with credentials."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import grpc

from pollen.errors import ConfigurationError
from pollen.transport.addresses import Address

# Blobs move in chunks well below this; it bounds what one hostile message may cost.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

STREAM_WINDOW_BYTES = 4 * 1024 * 1024
FIXED_WINDOW: list[tuple[str, int]] = [
    # What a stream may have in flight towards a receiver that has not read it yet.
    # gRPC's default grows this window from probes of the link; on loopback the
    # probes overestimated it, and a SuperLink receiving eight 500 MB uploads at
    # once held up to 0.67 GB of them in memory (0.24-0.67 GB from run to run).
    # With a fixed 4 MiB window it held 0.20-0.23 GB, at the same throughput.
    # The SuperLink's server and the ServerApp's channel (beside it) use it; a
    # SuperNode's channel keeps the probes: across a wide-area link a fixed
    # window would cap a download at 4 MiB per round trip.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
]

CLIENT_OPTIONS: list[tuple[str, int]] = [  # what every channel of Pollen is opened with
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]

_SERVER_OPTIONS: list[tuple[str, int]] = [
    *FIXED_WINDOW,
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


def open_channel(
    address: Address,
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    fixed_window: bool = False,
) -> grpc.aio.Channel:
    """An asynchronous channel to ``address``; plaintext when ``credentials`` is None.

    ``fixed_window``: streams toward this side have a fixed flow-control window
    (see `FIXED_WINDOW`), for a peer on the same machine or network.
    """
    target = str(address)
    options = [*FIXED_WINDOW, *CLIENT_OPTIONS] if fixed_window else CLIENT_OPTIONS
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def new_server(options: Sequence[tuple[str, int]] = ()) -> grpc.aio.Server:
    """An asynchronous gRPC server with Pollen's message limits, and ``options``."""
    return grpc.aio.server(options=[*_SERVER_OPTIONS, *options])


def bind(
    server: grpc.aio.Server,
    address: Address,
    option: str,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind ``server`` to ``address`` and return the port (useful with port 0)."""
    target = str(address)
    try:
        if credentials is None:
            port = server.add_insecure_port(target)
        else:
            port = server.add_secure_port(target, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigurationError(
            f"{option} {target}: cannot listen there ({_why_not_bindable(address)}); "
            f"stop what uses it or choose another {option}"
        )
    return port


def _why_not_bindable(address: Address) -> str:
    """Why gRPC could not listen at ``address`` (it tells only its own log): try it here."""
    try:
        family, kind, _, _, where = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind) as probe:
            probe.bind(where)
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    return "address in use or not available"
