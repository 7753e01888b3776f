"""gRPC peers (``context.peer()``): the remote address of a call, read once, here.

gRPC names a peer ``ipv4:192.0.2.7:5555`` or, for IPv6, ``ipv6:%5B2001:db8::1%5D:5555``
(a URI: the brackets percent-encoded); an IPv4 client of a dual-stack listener is
named by its IPv4 address.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def endpoint_of(peer: str) -> tuple[IPAddress, int] | None:
    """The remote address and port of a gRPC peer; None for another kind (``unix:``)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = unquote(rest).rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        number = int(port)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, number


def peer_address(peer: str) -> str:
    """A gRPC peer as people read it: ``ipv4:127.0.0.1:53412`` -> ``127.0.0.1:53412``,
    ``ipv6:%5B::1%5D:53412`` -> ``[::1]:53412`` ("" stays "": unknown)."""
    kind, _, rest = peer.partition(":")
    return unquote(rest) if kind in ("ipv4", "ipv6") and rest else peer


def source_of(peer: str) -> str:
    """The address that failures and connections are counted against, from a gRPC peer.

    ``ipv4:192.0.2.7:5555`` -> ``192.0.2.7``; see `source_of_address`.
    """
    endpoint = endpoint_of(peer)
    if endpoint is None:
        kind, _, rest = peer.partition(":")
        return unquote(rest.rsplit(":", 1)[0]) if kind in ("ipv4", "ipv6") else peer
    return source_of_address(endpoint[0])


def source_of_address(address: IPAddress) -> str:
    """The source an address counts as: an IPv4 address itself; an IPv6 one by its /64
    network, which one host typically holds whole (``2001:db8:1:2::/64``); an
    IPv4-mapped one by its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
