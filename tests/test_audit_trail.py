"""The audit trail stays readable and bounded under floods: repeats share a row with a count.

During join floods the audit table grew to 16 971 rows, one per attempt. Now the
same event of the same key from the same source address for the same reason,
within a minute of its first occurrence, adds to that row's ``count``. A database
of an older version (no ``count`` column) is given one at start.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pollen.superlink import audit as audit_module
from pollen.superlink.audit import Audit
from pollen.superlink.peers import peer_address, source_of
from pollen.superlink.sqlite_state import SqliteState
from tests.auth_helpers import Clock

PEER = "ipv4:192.0.2.7:5555"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[SqliteState]:
    opened = SqliteState(tmp_path / "superlink.db")
    yield opened
    opened.close()


def rows(state: SqliteState) -> list[tuple[str, str, str, int]]:
    return [(e.event, e.fingerprint, e.reason, e.count) for e in state.list_audit()]


def test_repeats_within_a_minute_share_one_row_with_their_count(state: SqliteState) -> None:
    clock = Clock()
    audit = Audit(state, clock)
    for port in range(5555, 5560):  # five connections of one address
        audit.record("fleet", "reject", "SHA256:k", f"ipv4:192.0.2.7:{port}", "bad signature")
    audit.record("fleet", "reject", "SHA256:k", PEER, "challenge expired")  # another reason
    audit.record("fleet", "reject", "SHA256:k", "ipv4:192.0.2.8:1", "bad signature")  # address
    audit.record("fleet", "reject", "SHA256:other", PEER, "bad signature")  # another key
    clock.advance(61)
    audit.record("fleet", "reject", "SHA256:k", PEER, "bad signature")  # a minute later
    assert rows(state) == [
        ("reject", "SHA256:k", "bad signature", 5),
        ("reject", "SHA256:k", "challenge expired", 1),
        ("reject", "SHA256:k", "bad signature", 1),
        ("reject", "SHA256:other", "bad signature", 1),
        ("reject", "SHA256:k", "bad signature", 1),
    ]


def test_refusals_for_a_limit_are_counted_without_a_write_each(state: SqliteState) -> None:
    clock = Clock()
    audit = Audit(state, clock)
    for _ in range(1000):
        audit.record("fleet", "throttled", "-", PEER, "too many failed joins")
    assert rows(state) == [("throttled", "-", "too many failed joins", 1)]
    clock.advance(1)
    audit.record("fleet", "throttled", "-", PEER, "too many failed joins")  # writes the count
    assert rows(state) == [("throttled", "-", "too many failed joins", 1001)]
    audit.record("fleet", "throttled", "-", PEER, "too many failed joins")
    audit.flush()
    assert rows(state) == [("throttled", "-", "too many failed joins", 1002)]


def test_allow_list_changes_are_stored_one_by_one(state: SqliteState) -> None:
    audit = Audit(state, Clock())
    for _ in range(2):
        audit.record("fleet", "key-added", "SHA256:k", "allow-list")
        audit.record("fleet", "revoke", "SHA256:k", "-", "key removed from the allow-list")
    assert [(event, count) for event, _, _, count in rows(state)] == [
        ("key-added", 1),
        ("revoke", 1),
        ("key-added", 1),
        ("revoke", 1),
    ]


def test_rows_still_counting_are_bounded(
    state: SqliteState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "MAX_OPEN_ROWS", 10)
    audit = Audit(state, Clock())
    for n in range(50):
        audit.record("fleet", "throttled", "-", f"ipv4:198.51.100.{n}:1", "too many")
        audit.record("fleet", "throttled", "-", f"ipv4:198.51.100.{n}:2", "too many")
    assert len(audit) == 10
    counts = [count for *_, count in rows(state)]
    assert counts[:40] == [2] * 40  # closed early, with its count written
    audit.flush()
    assert [count for *_, count in rows(state)] == [2] * 50


def test_an_audit_table_of_an_older_version_gets_its_count_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SqliteState(path).close()
    with sqlite3.connect(path) as db:  # as an older version left it
        db.execute("DROP TABLE audit")
        db.execute(
            "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
            "api TEXT NOT NULL, event TEXT NOT NULL, fingerprint TEXT NOT NULL, "
            "peer TEXT NOT NULL, reason TEXT NOT NULL)"
        )
        db.execute("INSERT INTO audit VALUES (1, 1.0, 'fleet', 'join', 'SHA256:k', 'p', '')")
    db.close()
    state = SqliteState(path)
    try:
        Audit(state, Clock()).record("fleet", "reject", "SHA256:k", PEER, "bad")
        assert rows(state) == [("join", "SHA256:k", "", 1), ("reject", "SHA256:k", "bad", 1)]
    finally:
        state.close()


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        ("ipv4:192.0.2.7:5555", "192.0.2.7"),
        ("ipv6:[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:5555", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2::1]:6666", "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:192.0.2.7]:5555", "192.0.2.7"),
        # what gRPC sends: the peer is a URI, its brackets percent-encoded
        ("ipv6:%5B2001:db8:1:2::1%5D:6666", "2001:db8:1:2::/64"),
        ("ipv6:%5B::ffff:192.0.2.7%5D:5555", "192.0.2.7"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_failures_count_per_ipv4_address_and_per_ipv6_network(peer: str, source: str) -> None:
    """One host usually holds a whole IPv6 /64: counting per address there would give
    it 2^64 fresh addresses to fail from."""
    assert source_of(peer) == source


def test_a_peer_as_grpc_names_it_over_ipv6_counts_by_its_network() -> None:
    """Real gRPC names an IPv6 peer with percent-encoded brackets; it used to count by that
    whole string, every address of a /64 apart."""
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("this machine has no IPv6 loopback")

    async def peer_of_a_call() -> str:
        peers: list[str] = []

        async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            peers.append(context.peer())
            return request

        server = grpc.aio.server()
        method = grpc.unary_unary_rpc_method_handler(handler)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.T", {"M": method}),)
        )
        port = server.add_insecure_port("[::1]:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"[::1]:{port}") as channel:
                await channel.unary_unary("/t.T/M")(b"x")
        finally:
            await server.stop(None)
        return peers[0]

    peer = asyncio.run(peer_of_a_call())
    assert source_of(peer) == "::/64"
    assert peer_address(peer).startswith("[::1]:")
