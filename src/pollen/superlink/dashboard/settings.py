"""Where the dashboard listens and who may read it: the rules checked before it starts."""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from pollen.errors import ConfigurationError
from pollen.transport.addresses import Address

DEFAULT_DASHBOARD_ADDRESS = Address("127.0.0.1", 9093)

MIN_TOKEN_CHARS = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: fits a header, a URL
_MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True)
class DashboardConfig:
    """The dashboard's address and, for one reachable from other machines, its token."""

    address: Address = DEFAULT_DASHBOARD_ADDRESS
    token: str | None = None

    def check(self) -> None:
        """Refuse a dashboard that others could read without a token, or a weak token."""
        if self.token is not None:
            check_token(self.token, "--dashboard-token")
        elif not self.address.is_loopback:
            raise ConfigurationError(
                f"--dashboard-address {self.address} is reachable from other machines; anyone "
                "there could read the federation's nodes, runs and refused keys. Keep it on "
                "127.0.0.1 or add --dashboard-token-file FILE (or --no-dashboard)"
            )


def check_token(token: str, option: str) -> None:
    if len(token) < MIN_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise ConfigurationError(
            f"{option}: a token needs at least {MIN_TOKEN_CHARS} printable characters without "
            f"spaces; make one with {_MAKE_ONE}"
        )


def read_token_file(path: Path) -> str:
    """The token in ``path`` (its first line, surrounding whitespace ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"--dashboard-token-file {path}: cannot read it ({why.lower()}); write the token "
            f"there, e.g. {_MAKE_ONE} > {path}"
        ) from None
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    check_token(token, f"--dashboard-token-file {path}")
    return token


def bind_listener(address: Address) -> socket.socket:
    """A socket listening at ``address`` (port 0: one the OS picks), or a one-line refusal.

    Bound before the gRPC servers start, so that a port in use stops the SuperLink
    before anything else listens.
    """
    try:
        family, kind, _, _, where = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"--dashboard-address {address}: unknown host ({exc.strerror}); write e.g. "
            "127.0.0.1:9093"
        ) from None
    listener = socket.socket(family, kind)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(where)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ConfigurationError(
            f"--dashboard-address {address}: {_why(exc)}; stop what uses it, choose another "
            "--dashboard-address, or turn the dashboard off with --no-dashboard"
        ) from None
    listener.setblocking(False)
    return listener


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "port in use"
    return f"cannot listen there ({(exc.strerror or str(exc)).lower()})"
