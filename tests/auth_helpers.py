"""Shared pieces of the authentication tests: a generated seed, a movable clock, raw calls.

`Seed` is the layout `pollen keys generate` writes, plus key pairs that no allow-list
holds. `Peer` is one key's view of one API over TLS: a channel whose stubs sign every
request, and a raw channel on which a test sends exact bytes with metadata of its choosing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pollen.errors import CallRefused
from pollen.proto import auth_pb2 as apb
from pollen.proto.auth_pb2_grpc import AuthStub
from pollen.server.driver import DriverClient
from pollen.superlink.security import SecurityConfig
from pollen.superlink.server import SuperLinkConfig
from pollen.supernode.node import SuperNodeConfig, run_supernode
from pollen.transport import keys
from pollen.transport.addresses import Address
from pollen.transport.channels import open_channel
from pollen.transport.keygen import generate
from pollen.transport.request_signing import (
    ClientIdentity,
    SessionHolder,
    open_session,
    request_signers,
)
from pollen.transport.session_crypto import (
    META_AUTH,
    SessionKeys,
    auth_header,
    join_transcript,
    new_ephemeral,
)
from pollen.transport.tls import ServerTls, channel_credentials
from tests.apps import numpy_apps
from tests.conftest import Node, superlink_config

FLEET = "/pollen.v1.Fleet/"
DRIVER = "/pollen.v1.Driver/"
Metadata = tuple[tuple[str, str], ...]


def openssh_private(key: keys.PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def write_key_pair(key: keys.PrivateKey, path: Path) -> Path:
    """``path`` (OpenSSH private key, 0600) and ``path.pub``, as ssh-keygen writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(openssh_private(key))
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_bytes(keys.public_bytes(key.public_key()) + b"\n")
    return path


@dataclass(frozen=True)
class Seed:
    """Generated credentials: CA, server certificate, server and client key pairs, CSV."""

    root: Path
    clients: int

    @classmethod
    def create(cls, root: Path, clients: int = 3, unlisted: int = 3) -> Seed:
        generate(root, clients, [])
        for index in range(1, unlisted + 1):
            write_key_pair(ec.generate_private_key(ec.SECP384R1()), root / f"unlisted/key_{index}")
        write_key_pair(ed25519.Ed25519PrivateKey.generate(), root / "unlisted/ed25519")
        return cls(root, clients)

    @property
    def ca_cert(self) -> Path:
        return self.root / "certificates" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "certificates" / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "certificates" / "server.pem"

    @property
    def server_tls_key(self) -> Path:
        return self.root / "certificates" / "server.key"

    @property
    def csv(self) -> Path:
        return self.root / "keys" / "client_public_keys.csv"

    @property
    def server_credentials(self) -> Path:
        return self.root / "keys" / "server_credentials"

    @property
    def tls(self) -> ServerTls:
        return ServerTls(self.ca_cert, self.server_cert, self.server_tls_key)

    @property
    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.ca_cert)

    def client_key(self, index: int) -> Path:
        return self.root / "keys" / f"client_credentials_{index}"

    def unlisted_key(self, index: int | str) -> Path:
        name = f"key_{index}" if isinstance(index, int) else index
        return self.root / "unlisted" / name

    def identity(self, index: int, pin: keys.PublicKey | None = None) -> ClientIdentity:
        """Client ``index`` of the CSV (1-based)."""
        return ClientIdentity(keys.load_private_key(self.client_key(index)), pin)

    def stranger(self, index: int | str = 1) -> ClientIdentity:
        """A well-formed key pair that no allow-list names."""
        return ClientIdentity(keys.load_private_key(self.unlisted_key(index)))

    def server_private(self) -> keys.PrivateKey:
        return keys.load_private_key(self.server_credentials)

    def server_public(self) -> keys.PublicKey:
        return keys.load_public_key(self.server_credentials.with_suffix(".pub"))

    def allowlist_copy(self, directory: Path, name: str = "allowed.csv") -> Path:
        """A private copy of the seed's CSV that a test may edit."""
        return Path(shutil.copy(self.csv, directory / name))


def allowlist_file(path: Path, *identities: ClientIdentity) -> Path:
    """Write an allow-list in the seed's layout (one line, comma-separated)."""
    path.write_bytes(b",".join(i.public_line for i in identities) + b"\n")
    return path


class Clock:
    """Wall time plus an offset that a test moves: time-window tests without sleeping."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def secure_config(
    tmp_path: Path,
    seed: Seed,
    *,
    clock: Clock | None = None,
    client_keys: Path | None = None,
    **security: Any,
) -> SuperLinkConfig:
    """TLS, client authentication against a private copy of the seed's CSV, a server key."""
    settings: dict[str, Any] = {
        "tls": seed.tls,
        "client_keys": client_keys or seed.allowlist_copy(tmp_path),
        "server_key": seed.server_private(),
        **security,
    }
    return superlink_config(
        tmp_path, security=SecurityConfig(**settings), clock=clock or Clock(), heartbeat_interval=30
    )


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    """The status a call ends with (``OK`` when it succeeds); a DriverClient call's
    refusal (`CallRefused`) by its status's name."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    except CallRefused as exc:
        return grpc.StatusCode[exc.status.upper()]
    return grpc.StatusCode.OK


def signed_metadata(
    session: SessionKeys,
    method: str,
    body: bytes,
    *,
    timestamp_ms: int | None = None,
    nonce: str | None = None,
) -> Metadata:
    """What a legitimate client sends with ``body`` on ``method``."""
    timestamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    nonce = nonce or secrets.token_hex(12)
    digest = hashlib.sha256(body).hexdigest()
    return ((META_AUTH, auth_header(session, method, digest, timestamp, nonce)),)


def open_session_request(
    claimed: ClientIdentity,
    challenge: bytes,
    signer: keys.PrivateKey,
    api: str = "fleet",
) -> apb.OpenSessionRequest:
    """A join for ``claimed``'s public key, its transcript signed by ``signer``."""
    _, ephemeral_public = new_ephemeral()
    transcript = join_transcript(api, claimed.public_line, challenge, ephemeral_public)
    return apb.OpenSessionRequest(
        public_key=claimed.public_line.decode(),
        challenge=challenge,
        client_ephemeral=ephemeral_public,
        signature=keys.sign(signer, transcript),
    )


class Peer:
    """One key pair talking to one API: signed stubs on ``channel``, raw calls on ``raw``."""

    def __init__(
        self,
        seed: Seed,
        port: int,
        identity: ClientIdentity,
        api: str = "fleet",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.api = api
        self.holder = SessionHolder()
        address = Address("127.0.0.1", port)
        self.channel = open_channel(address, seed.credentials, request_signers(self.holder, clock))
        self.raw = open_channel(address, seed.credentials)
        self.auth = AuthStub(self.raw)  # type: ignore[no-untyped-call]

    @property
    def session(self) -> SessionKeys:
        assert self.holder.session is not None, "join first"
        return self.holder.session

    async def join(self) -> SessionKeys:
        return await open_session(self.raw, self.identity, self.api, self.holder)

    async def challenge(self, identity: ClientIdentity | None = None) -> bytes:
        claimed = identity or self.identity
        request = apb.ChallengeRequest(public_key=claimed.public_line.decode())
        return bytes((await self.auth.Challenge(request)).challenge)

    def sign(self, method: str, body: bytes, **options: Any) -> Metadata:
        return signed_metadata(self.session, method, body, **options)

    async def unary(self, method: str, body: bytes, metadata: Metadata = ()) -> bytes:
        """One unary call with exactly these bytes and this metadata."""
        call = self.raw.unary_unary(method)
        return bytes(await call(body, metadata=metadata, timeout=5))

    async def first(self, method: str, body: bytes, metadata: Metadata = ()) -> bytes:
        """The first message of a server stream, sent with exactly these bytes and metadata."""
        call = self.raw.unary_stream(method)(body, metadata=metadata, timeout=5)
        try:
            message = await call.read()
            return b"" if message is grpc.aio.EOF else bytes(message)
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()
        await self.raw.close()


@contextlib.asynccontextmanager
async def peer(
    seed: Seed,
    port: int,
    identity: ClientIdentity,
    api: str = "fleet",
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Peer]:
    client = Peer(seed, port, identity, api, clock)
    try:
        yield client
    finally:
        await client.close()


def node_config(seed: Seed, port: int, identity: ClientIdentity | None) -> SuperNodeConfig:
    return SuperNodeConfig(
        superlink=Address("127.0.0.1", port),
        credentials=seed.credentials,
        identity=identity,
        max_backoff=0.2,
    )


def start_secure_node(seed: Seed, port: int, identity: ClientIdentity) -> Node:
    """An in-process SuperNode joining with ``identity`` over TLS."""
    stop = asyncio.Event()
    config = node_config(seed, port, identity)
    return Node(asyncio.create_task(run_supernode(numpy_apps.app, config, stop)), stop)


async def stop_nodes(*nodes: Node) -> None:
    for node in nodes:
        node.stop.set()
    await asyncio.wait_for(asyncio.gather(*(n.task for n in nodes), return_exceptions=True), 10)


@contextlib.asynccontextmanager
async def driver_client(
    seed: Seed, port: int, identity: ClientIdentity | None = None
) -> AsyncIterator[DriverClient]:
    """A ServerApp's connection to the Driver API over TLS, with an operator key if given."""
    driver = await DriverClient.connect(Address("127.0.0.1", port), seed.credentials, 5, identity)
    try:
        yield driver
    finally:
        await driver.close()
