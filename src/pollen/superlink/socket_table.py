"""The SuperLink's TCP connections as the kernel lists them, and closing some of them.

gRPC accepts connections itself and offers no hook between accept and the TLS
handshake. The kernel's socket table still lists every established connection to a
port, with its remote address and the inode of its socket: Linux's ``sock_diag``
netlink interface (what ``ss`` reads), one request per address family,
filtered by the kernel, readable without privileges. ``/proc/self/fd`` maps an
inode to this process's descriptor; shutting that socket down makes gRPC see its
peer gone and close the connection, as when the peer hangs up.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
from collections.abc import Collection, Iterable, Sequence
from typing import NamedTuple

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_ESTABLISHED = 1 << 1  # TCP states, as a mask
_LISTENING = 1 << 10
_INET_DIAG_REQ_BYTECODE = 1
_BC_JMP = 1
_BC_S_GE = 2  # the local port is at least ...
_BC_S_LE = 3  # ... and at most the next operation's number
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_V4_MAPPED = bytes(10) + b"\xff\xff"

FAMILIES = (socket.AF_INET, socket.AF_INET6)

_sequence = itertools.count(1)  # of requests: netlink answers with the request's number


class Connection(NamedTuple):
    """One established connection to a port of this machine."""

    inode: int
    """The inode of its socket (``socket:[INODE]`` in /proc/self/fd)."""
    address: bytes
    """The remote address, packed: 4 bytes for IPv4 (an IPv4-mapped IPv6 address too), 16
    for IPv6."""
    port: int
    """The remote port."""
    local_port: int
    """The port of this machine it was made to."""
    unread: int = 0
    """Bytes it has received that the process holding it has not read yet."""


class SocketTable:
    """The kernel's table of TCP sockets, read through one netlink socket kept open (so
    that reading it needs no new descriptor, even when none is left)."""

    def __init__(self) -> None:
        """Raises OSError where the table cannot be read (not Linux, or netlink refused)."""
        netlink = getattr(socket, "AF_NETLINK", None)
        if netlink is None:
            raise OSError(errno.EAFNOSUPPORT, "it is read through Linux's netlink, not here")
        self._diag = socket.socket(netlink, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
        try:
            self.listening([0])  # refused here, or not
        except OSError:
            self._diag.close()
            raise

    def established(
        self, ports: Collection[int], families: Iterable[int] = FAMILIES
    ) -> list[Connection]:
        """Every established TCP connection whose local port is one of ``ports``, of these
        address families (see `listening`).

        One request per family: the kernel walks its whole table of connections for
        each (about 1.5 ms here, with 262 144 buckets), whatever it lists.
        """
        if not ports:
            return []
        return [c for family in families for c in _dump(self._diag, family, ports, _ESTABLISHED)]

    def listening(self, ports: Collection[int]) -> tuple[int, ...]:
        """The address families of the sockets listening on ``ports``: the only ones their
        connections can have (gRPC listens on IPv4 addresses with an IPv6 socket, its
        IPv4 clients IPv4-mapped). A cheap request: only listeners are walked."""
        if not ports:
            return ()
        return tuple(f for f in FAMILIES if any(_dump(self._diag, f, ports, _LISTENING)))

    def close(self) -> None:
        self._diag.close()


def _request(family: int, ports: Collection[int], states: int, sequence: int) -> bytes:
    bytecode = _any_port(sorted(ports))
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, states)
    body = request + bytes(48) + struct.pack("=HH", 4 + len(bytecode), _INET_DIAG_REQ_BYTECODE)
    body += bytecode
    flags = _NLM_F_REQUEST | _NLM_F_DUMP
    size = _HEADER.size + len(body)
    return _HEADER.pack(size, _SOCK_DIAG_BY_FAMILY, flags, sequence, 0) + body


def _any_port(ports: Sequence[int]) -> bytes:
    """The kernel's filter program for "the local port is one of ``ports``".

    An operation jumps by its "yes" offset when it holds, by "no" when not; the
    program accepts when it ends exactly at its end, rejects at end + 4. One port:
    at least it, then at most it, each failing to end + 4. Several: the first
    port's program, whose end + 4 is now where the rest begins, then a jump (taken
    when the first port matched) over the rest to the end, as ``ss`` compiles an
    "or"; the kernel checks that every target lies on the chain of "yes" jumps.
    """
    first = struct.pack(
        "=BBHBBHBBHBBH", _BC_S_GE, 8, 20, 0, 0, ports[0], _BC_S_LE, 8, 12, 0, 0, ports[0]
    )
    if len(ports) == 1:
        return first
    rest = _any_port(ports[1:])
    return first + struct.pack("=BBH", _BC_JMP, 4, len(rest) + 4) + rest


def _dump(
    diag: socket.socket, family: int, ports: Collection[int], states: int
) -> list[Connection]:
    """One request, read to its end; a reply of an earlier request that was not (one
    that failed half-way) is skipped by its sequence number."""
    sequence = next(_sequence)
    diag.sendto(_request(family, ports, states, sequence), (0, 0))
    listed: list[Connection] = []
    while True:
        data = diag.recv(1 << 17)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, number = _HEADER.unpack_from(data, offset)[:4]
            if number == sequence:
                if kind == _NLMSG_DONE:
                    return listed
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                    raise OSError(code, f"the kernel's socket table: {os.strerror(code)}")
                listed.append(_connection(data, offset + _HEADER.size))
            offset += (length + 3) & ~3


def _connection(data: bytes, at: int) -> Connection:
    """An ``inet_diag_msg`` at ``at``: family at 0, local and remote port at 4, remote
    address at 24, bytes in the receive queue at 56, inode at 68."""
    remote = data[at + 24 : at + 40]
    if data[at] == socket.AF_INET:
        remote = remote[:4]
    elif remote[:12] == _V4_MAPPED:
        remote = remote[12:]
    local_port, port = struct.unpack_from("!HH", data, at + 4)
    (unread,) = struct.unpack_from("=I", data, at + 56)
    (inode,) = struct.unpack_from("=I", data, at + 68)
    return Connection(inode, remote, port, local_port, unread)


def shut_down(inodes: Collection[int]) -> set[int]:
    """Shut down this process's sockets with these inodes (both directions); those shut.

    A descriptor is duplicated and checked to still be that socket before it is shut
    down, so a descriptor closed and reused meanwhile is left alone.
    """
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    done: set[int] = set()
    if not wanted:
        return done
    for fd in _descriptors():
        try:
            inode = wanted.get(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
        if inode is not None and _shut_down(fd, inode):
            done.add(inode)
    return done


def _descriptors() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]


def _shut_down(fd: int, inode: int) -> bool:
    """Shut down socket ``inode`` at ``fd``, through a copy of the descriptor (a copy
    cannot be closed and reused under us); with no descriptor left for a copy, through
    ``fd`` itself, checked just before."""
    try:
        copy = os.dup(fd)
    except OSError:
        return _shut_down_in_place(fd, inode)
    try:
        return _shut_down_in_place(copy, inode)
    finally:
        os.close(copy)


def _shut_down_in_place(fd: int, inode: int) -> bool:
    try:
        if os.fstat(fd).st_ino != inode:
            return False
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()  # the descriptor stays gRPC's
    return True
