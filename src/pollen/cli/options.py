"""Options and checks shared by several commands."""

from __future__ import annotations

from pollen.errors import ConfigurationError


def require_insecure(insecure: bool) -> None:
    """Plaintext must be asked for explicitly."""
    if not insecure:
        raise ConfigurationError(
            "refusing to use plaintext connections without --insecure; pass --insecure "
            "to run without TLS (for a trusted network or local testing only)"
        )
