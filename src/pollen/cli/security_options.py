"""Turning the security options of the commands into TLS credentials, keys and checks."""

from __future__ import annotations

from pathlib import Path

import grpc

from pollen.errors import ConfigurationError
from pollen.superlink.security import SecurityConfig
from pollen.transport import keys
from pollen.transport.request_signing import ClientIdentity
from pollen.transport.tls import ServerTls, channel_credentials

PLAINTEXT_HINT = "pass --insecure to run without TLS (for a trusted network or local testing only)"


def client_credentials(
    insecure: bool, root_certificates: Path | None
) -> grpc.ChannelCredentials | None:
    """TLS trusting ``root_certificates``, or plaintext when --insecure is given explicitly."""
    if insecure and root_certificates is not None:
        raise ConfigurationError("--insecure and --root-certificates contradict; choose one")
    if root_certificates is not None:
        return channel_credentials(root_certificates)
    if not insecure:
        raise ConfigurationError(
            "no --root-certificates given to verify the SuperLink's TLS certificate; pass "
            f"--root-certificates certificates/ca.crt, or {PLAINTEXT_HINT}"
        )
    return None


def client_identity(
    private_key: Path | None,
    public_key: Path | None = None,
    superlink_public_key: Path | None = None,
    tls: bool = True,
) -> ClientIdentity | None:
    """The key pair to join with; the public key, when given, must match the private one."""
    if private_key is None:
        if superlink_public_key is not None:
            raise ConfigurationError("--superlink-public-key needs the node's own keys too")
        return None
    if not tls:
        raise ConfigurationError(
            "authentication keys need TLS; pass --root-certificates instead of --insecure"
        )
    private = keys.load_private_key(private_key)
    if public_key is not None:
        keys.check_pair(private, keys.load_public_key(public_key), private_key, public_key)
    pinned = keys.load_public_key(superlink_public_key) if superlink_public_key else None
    return ClientIdentity(private, pinned)


def _one_of(name: str, short: Path | None, long: Path | None, long_name: str) -> Path | None:
    if short is not None and long is not None and short != long:
        raise ConfigurationError(f"{name} and {long_name} name different files; give one")
    return short or long


def server_security(
    insecure: bool,
    certificates: tuple[Path, Path, Path] | None,
    ssl_files: tuple[Path | None, Path | None, Path | None],
    client_auth: tuple[Path, Path, Path] | None,
    auth_list: Path | None,
    auth_key: Path | None,
    operator_keys: Path | None,
) -> SecurityConfig:
    """The SuperLink's security from its options (the example's spellings and long forms alike)."""
    files = certificates or ssl_files
    if any(files) and not all(files):
        raise ConfigurationError(
            "TLS needs all three of --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile"
        )
    tls = ServerTls(*files) if all(files) else None  # type: ignore[arg-type]
    if tls is not None and insecure:
        raise ConfigurationError("--insecure and TLS certificates contradict; choose one")
    if tls is None and not insecure:
        raise ConfigurationError(
            f"no TLS certificates given (--certificates CA CERT KEY); {PLAINTEXT_HINT}"
        )
    csv, private, public = client_auth or (None, None, None)
    csv = _one_of("--require-client-authentication", csv, auth_list, "--auth-list-public-keys")
    private = _one_of(
        "--require-client-authentication", private, auth_key, "--auth-superlink-private-key"
    )
    server_key = None
    if private is not None:
        server_key = keys.load_private_key(private)
        if public is not None:
            keys.check_pair(server_key, keys.load_public_key(public), private, public)
    if server_key is not None and csv is None:
        raise ConfigurationError(
            "a SuperLink key is only used with client authentication; "
            "add --auth-list-public-keys CSV"
        )
    return SecurityConfig(
        tls=tls, client_keys=csv, server_key=server_key, operator_keys=operator_keys
    )
