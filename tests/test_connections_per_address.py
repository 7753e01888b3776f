"""The cap on connections per address: what the kernel's socket table lists, which
connections the cap closes, and a SuperLink where it is off or cannot work.

Floods against a real SuperLink are in test_connection_floods.py; here, real sockets
on 127.0.0.1:0 (and [::1]:0 where this machine has IPv6) and the cap's rule on
connections written out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollen.superlink import server as server_module
from pollen.superlink.audit import Audit
from pollen.superlink.connection_cap import ConnectionCap, cap_step
from pollen.superlink.server import open_superlink
from pollen.superlink.socket_table import Connection, SocketTable, shut_down
from pollen.superlink.sqlite_state import SqliteState
from pollen.transport.addresses import Address
from tests.conftest import superlink_config, wait_until


@contextlib.contextmanager
def table() -> Iterator[SocketTable]:
    opened = SocketTable()
    try:
        yield opened
    finally:
        opened.close()


@contextlib.contextmanager
def accepted(
    listen: tuple[str, int], sources: list[str], family: int = socket.AF_INET
) -> Iterator[tuple[int, list[socket.socket], list[socket.socket]]]:
    """A listener on ``listen`` and one connection from each of ``sources``: the port,
    the clients' ends and the accepted ends."""
    with socket.socket(family) as listener:
        listener.bind(listen)
        listener.listen()
        port = listener.getsockname()[1]
        clients: list[socket.socket] = []
        ends: list[socket.socket] = []
        try:
            for source in sources:
                client = socket.socket(family)
                clients.append(client)
                client.bind((source, 0))
                client.connect((listen[0] or "127.0.0.1", port))
                ends.append(listener.accept()[0])
            yield port, clients, ends
        finally:
            for sock in clients + ends:
                sock.close()


def test_the_socket_table_lists_each_connection_to_a_port_with_its_remote_end() -> None:
    sources = ["127.0.0.2", "127.0.0.2", "127.0.0.1"]
    with accepted(("127.0.0.1", 0), sources) as (port, clients, ends), table() as sockets:
        listed = sockets.established([port])
        expected = {
            Connection(os.fstat(end.fileno()).st_ino, socket.inet_aton(host), client_port, port)
            for end, (host, client_port) in zip(
                ends, (c.getsockname() for c in clients), strict=True
            )
        }
    assert set(listed) == expected  # the clients' own ends (another local port) are not


def test_the_table_lists_connections_to_any_of_several_ports_and_no_other() -> None:
    with contextlib.ExitStack() as stack, table() as sockets:
        ports = [
            stack.enter_context(accepted(("127.0.0.1", 0), ["127.0.0.2"] * count))[0]
            for count in (1, 2, 3)
        ]
        for chosen in ([ports[0]], [ports[2], ports[0]], ports, [ports[1], 1]):
            listed = sockets.established(chosen)
            assert sorted(c.local_port for c in listed) == sorted(
                port for count, port in enumerate(ports, 1) if port in chosen for _ in range(count)
            )


def ipv6_loopback() -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ipv6_and_ipv4_mapped_connections_are_listed_by_their_address() -> None:
    with (
        accepted(("::1", 0), ["::1"], socket.AF_INET6) as (v6_port, _, _),
        accepted(("::", 0), ["::ffff:127.0.0.2"], socket.AF_INET6) as (dual_port, _, _),
        table() as sockets,
    ):
        (v6,) = sockets.established([v6_port])
        (mapped,) = sockets.established([dual_port])
    assert v6.address == ipaddress.IPv6Address("::1").packed
    assert mapped.address == bytes([127, 0, 0, 2])  # as gRPC names it: ipv4:127.0.0.2


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_listener_as_grpc_opens_it_has_its_ipv4_clients_in_the_ipv6_table() -> None:
    """gRPC listens on an IPv4 address with an IPv6 socket: its connections are found
    among IPv6 ones only."""
    with accepted(("::ffff:127.0.0.1", 0), ["::ffff:127.0.0.2"], socket.AF_INET6) as opened:
        port = opened[0]
        with table() as sockets:
            assert sockets.listening([port]) == (socket.AF_INET6,)
            assert sockets.established([port], (socket.AF_INET,)) == []
            (found,) = sockets.established([port], sockets.listening([port]))
    assert found.address == bytes([127, 0, 0, 2])


def test_shutting_down_by_inode_closes_those_connections_and_no_other() -> None:
    with accepted(("127.0.0.1", 0), ["127.0.0.2"] * 3) as (port, clients, ends):
        inodes = [os.fstat(end.fileno()).st_ino for end in ends]
        assert shut_down({inodes[0], inodes[2], 1}) == {inodes[0], inodes[2]}
        for client in clients:
            client.settimeout(1.0)
        assert clients[0].recv(1) == b""
        assert clients[2].recv(1) == b""
        clients[1].settimeout(0.2)
        with pytest.raises(TimeoutError):
            clients[1].recv(1)  # still open
        with table() as sockets:
            assert {c.inode for c in sockets.established([port])} == {inodes[1]}


def connection(inode: int, address: str, port: int) -> Connection:
    return Connection(inode, ipaddress.ip_address(address).packed, port, 9092)


def test_an_address_over_the_cap_loses_its_newest_connections_that_made_no_call() -> None:
    cap = ConnectionCap(2, grace=0.5)
    first = [connection(10, "192.0.2.7", 1000), connection(11, "192.0.2.7", 1001)]
    assert cap.over([], first, now=0.0) == []
    later = [connection(5, "192.0.2.7", 1002), connection(12, "192.0.2.7", 1003)]
    other = [connection(13, "198.51.100.1", 2000 + n) for n in range(2)]
    assert cap.over([], first + later + other, now=0.2) == []  # within their grace
    # seen later: newer, whatever the inode
    assert cap.over([], first + later + other, now=0.8) == [later[0], later[1]]


def test_connections_that_made_a_call_or_wait_on_the_superlink_do_not_count() -> None:
    cap = ConnectionCap(1, grace=0.0)
    nodes = [connection(n, "192.0.2.7", 1000 + n) for n in range(5)]
    marks = [f"ipv4:192.0.2.7:{1000 + n}" for n in range(5)]
    hellos = [connection(30 + n, "192.0.2.7", 4000 + n)._replace(unread=517) for n in range(3)]
    idle = [connection(20, "192.0.2.7", 3000), connection(21, "192.0.2.7", 3001)]
    assert cap.over(marks, nodes + hellos + idle, now=0.0) == [idle[1]]
    # the marks hold while the connections do
    assert cap.over([], nodes + idle[:1], now=1.0) == []


def test_a_mark_ends_with_its_connection() -> None:
    """A new connection from a port an old one used has made no call yet."""
    cap = ConnectionCap(0, grace=0.0)
    old = connection(1, "192.0.2.7", 1000)
    assert cap.over(["ipv4:192.0.2.7:1000"], [old], now=0.0) == []
    assert cap.over([], [], now=1.0) == []
    again = connection(2, "192.0.2.7", 1000)
    assert cap.over([], [again], now=2.0) == [again]


def test_ipv6_connections_count_by_their_64_network_and_gRPC_peers_match_them() -> None:
    cap = ConnectionCap(1, grace=0.0)
    same_network = [connection(n, f"2001:db8:1:2::{n}", 1000) for n in (1, 2)]
    elsewhere = connection(3, "2001:db8:1:3::1", 1000)
    called = connection(4, "2001:db8:1:2::9", 1000)
    marks = ["ipv6:%5B2001:db8:1:2::9%5D:1000"]
    assert cap.over(marks, [*same_network, elsewhere, called], now=0.0) == [same_network[1]]


def test_a_cap_of_zero_is_no_cap(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            assert link.connection_cap is not None
        config = superlink_config(tmp_path, max_connections_per_address=0)
        async with open_superlink(config) as link:
            assert link.connection_cap is None

    asyncio.run(scenario())


def test_without_a_socket_table_the_superlink_runs_uncapped_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Refused(SocketTable):
        def __init__(self) -> None:
            raise OSError(97, "Address family not supported by protocol")

    monkeypatch.setattr(server_module, "SocketTable", Refused)

    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            assert link.connection_cap is None

    caplog.set_level(logging.WARNING, "pollen.superlink.server")
    asyncio.run(scenario())
    (warning,) = [r.getMessage() for r in caplog.records if "not capped" in r.getMessage()]
    assert "Address family not supported by protocol" in warning
    assert "still close after 5 s" in warning


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_superlink_on_ipv6_caps_connections_from_one_network(tmp_path: Path) -> None:
    config = superlink_config(
        tmp_path,
        fleet_address=Address("::1", 0),
        driver_address=Address("::1", 0),
        max_connections_per_address=4,
    )

    async def scenario() -> None:
        async with open_superlink(config) as link:
            opened = [socket.create_connection(("::1", link.fleet_port)) for _ in range(30)]
            try:
                with table() as sockets:

                    def held() -> int:
                        return len(sockets.established([link.fleet_port]))

                    await wait_until(lambda: held() <= 4, 3.0)
            finally:
                for sock in opened:
                    sock.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("busy", [False, True])
def test_a_scan_that_starts_late_finds_the_superlink_busy_and_closes_nothing(
    tmp_path: Path, busy: bool
) -> None:
    """A busy event loop may hold calls whose handlers have not marked their connections
    yet: 12 of 1000 nodes joining at once lost their join to the cap before this."""
    state = SqliteState(tmp_path / "superlink.db")
    cap = ConnectionCap(0, grace=0.0)

    async def scenario(port: int) -> None:
        with table() as sockets:
            step = cap_step(cap, sockets, {port: "fleet"}, Audit(state, time.time))
            if busy:  # the loop blocked past the scan's time, as by a burst of joins
                asyncio.get_running_loop().call_later(0.5, time.sleep, 0.8)
            await step()

    try:
        with accepted(("127.0.0.1", 0), ["127.0.0.2"] * 3) as (port, _, _):
            asyncio.run(scenario(port))
    finally:
        state.close()
    assert cap.shut == (0 if busy else 3)
