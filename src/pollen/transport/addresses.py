"""``host:port`` addresses, parsed with errors that say how to write them."""

from __future__ import annotations

from dataclasses import dataclass

from pollen.errors import ConfigurationError


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


def parse_address(text: str, option: str = "address") -> Address:
    """Parse ``127.0.0.1:9092``, ``localhost:0`` or ``[::1]:9092``."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigurationError(
            f"{option} {text!r} is not HOST:PORT; write e.g. 127.0.0.1:9092 or [::1]:9092"
        )
    return Address(host, int(port_text))
