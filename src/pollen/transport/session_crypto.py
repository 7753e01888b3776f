"""The cryptography of sessions, shared by both ends.

Joining: the client asks for a fresh challenge, then signs a transcript binding
the API, its public key, the challenge and an ephemeral X25519 key with its
private key (proof of possession). The server answers with its own ephemeral
key and, when it has ``server_credentials``, a signature over the whole
transcript that a client can pin. Both derive the session key by HKDF over the
X25519 secret: it never travels, not even inside TLS.

Requests: each carries the session id, a timestamp, a nonce and an HMAC-SHA256
under the session key over method, timestamp, nonce and the body's digest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

WINDOW_SECONDS = 30.0
"""A request's timestamp must be within this many seconds of the server's clock."""

AUTH_METHOD_PREFIX = "/pollen.v1.Auth/"
META_AUTH = "pollen-auth"
"""One header per request: ``SESSION_ID.TIMESTAMP_MS.NONCE.MAC``, hex and decimal."""
EMPTY_BODY_DIGEST = hashlib.sha256(b"").hexdigest()

NONCE_BYTES = 12
"""A request nonce is this many random bytes, sent as twice as many lowercase hex digits:
a fixed size, so that the SuperLink's replay memory costs the same for every request."""
_HEX_DIGITS = frozenset("0123456789abcdef")


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def is_nonce(text: str) -> bool:
    """Whether ``text`` has the one form a nonce may have (see `NONCE_BYTES`)."""
    return len(text) == 2 * NONCE_BYTES and _HEX_DIGITS.issuperset(text)


@dataclass(frozen=True)
class SessionKeys:
    """What both ends hold after a join: the session id and the derived MAC key."""

    session_id: bytes
    key: bytes


def join_transcript(
    api: str, public_key: bytes, challenge: bytes, client_ephemeral: bytes
) -> bytes:
    """What the client signs to prove it holds the private key of ``public_key``."""
    parts = [b"pollen-join-v1", api.encode(), public_key, challenge, client_ephemeral]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def server_transcript(join: bytes, server_ephemeral: bytes, session_id: bytes) -> bytes:
    """What the server signs with ``server_credentials`` so that clients can pin it."""
    parts = [b"pollen-accept-v1", join, server_ephemeral, session_id]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def new_ephemeral() -> tuple[x25519.X25519PrivateKey, bytes]:
    private = x25519.X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def derive_session_key(
    private: x25519.X25519PrivateKey, peer_public: bytes, transcript: bytes
) -> bytes:
    """HKDF-SHA256 over the X25519 secret, bound to the whole join transcript."""
    shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
    hkdf = HKDF(
        hashes.SHA256(), 32, salt=hashlib.sha256(transcript).digest(), info=b"pollen-session-key-v1"
    )
    return hkdf.derive(shared)


def request_mac(key: bytes, method: str, timestamp_ms: str, nonce: str, body_digest: str) -> str:
    message = "\n".join(("pollen-request-v1", method, timestamp_ms, nonce, body_digest)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def auth_header(
    session: SessionKeys, method: str, body_digest: str, timestamp_ms: int, nonce: str
) -> str:
    """The ``pollen-auth`` value binding a request to its session, method and body."""
    timestamp = str(timestamp_ms)
    mac = request_mac(session.key, method, timestamp, nonce, body_digest)
    return f"{session.session_id.hex()}.{timestamp}.{nonce}.{mac}"


def parse_auth_header(value: str) -> tuple[bytes, str, str, str]:
    """(session id, timestamp in ms, nonce, mac); ValueError when malformed."""
    session_hex, timestamp, nonce, mac = value.split(".")
    if not timestamp.isdigit():
        raise ValueError("timestamp is not a number")
    return bytes.fromhex(session_hex), timestamp, nonce, mac
