"""Telling a SuperLink that is away from a SuperLink reached the wrong way.

A client keeps trying while nobody answers at the address (the SuperLink is not
up yet, or restarting): that passes. Some answers say instead that the client's
configuration is wrong, and trying again cannot help: a TLS certificate signed
by another CA, TLS against plaintext, the port of the other API, a SuperLink that
admits only keys the client does not have. Those end the client with one line
that names the mistake and its fix (`ConfigurationError`, exit code 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc

from pollen.errors import ConfigurationError
from pollen.transport.addresses import Address

GRACE_ATTEMPTS = 5
"""Attempts in a row that only suggest a misconfiguration before saying so: a
plaintext connection closed at once is what a TLS server does to it, but a server
going down may do it once or twice too."""

_DEFAULT_PORTS = {"Fleet": 9092, "Driver": 9091}
_ADDRESS_OPTIONS = {"Fleet": "--fleet-api-address", "Driver": "--driver-api-address"}


@dataclass(frozen=True)
class Endpoint:
    """What a client expects at an address: which API, over TLS or not, with a key or not."""

    address: Address
    api: str
    """"Fleet" (SuperNodes) or "Driver" (ServerApps)."""
    tls: bool
    keyed: bool

    @property
    def other_api(self) -> str:
        return "Driver" if self.api == "Fleet" else "Fleet"


@dataclass(frozen=True)
class Fault:
    """A misconfiguration an answer points at; ``certain`` when no passing fault explains it."""

    message: str
    certain: bool = True


def wrong_api(endpoint: Endpoint) -> ConfigurationError:
    """The server at the address does not serve ``endpoint.api``."""
    return ConfigurationError(_wrong_api(endpoint))


def _wrong_api(endpoint: Endpoint) -> str:
    api, other = endpoint.api, endpoint.other_api
    return (
        f"{endpoint.address} does not serve the SuperLink's {api} API (is it the {other} API's "
        f"port?); point --superlink at the {api} API: port {_DEFAULT_PORTS[api]} unless the "
        f"SuperLink was given another {_ADDRESS_OPTIONS[api]}"
    )


def key_not_used(endpoint: Endpoint) -> ConfigurationError:
    """The client has a key, but the API at the address authenticates nobody."""
    if endpoint.api == "Fleet":
        return ConfigurationError(
            f"the SuperLink at {endpoint.address} does not authenticate nodes (it runs without "
            "--require-client-authentication); drop --authentication-keys, or restart the "
            "SuperLink with client authentication"
        )
    return ConfigurationError(
        f"the SuperLink's Driver API at {endpoint.address} takes no operator keys (it runs "
        "without --operator-keys); drop --auth-private-key"
    )


def _key_required(endpoint: Endpoint) -> Fault:
    if endpoint.api == "Fleet":
        return Fault(
            f"the SuperLink at {endpoint.address} admits only nodes with a key in its "
            "allow-list; pass --authentication-keys PRIVATE PUBLIC (a key pair whose public "
            "key its operator added to the allow-list)"
        )
    return Fault(
        f"the SuperLink's Driver API at {endpoint.address} requires an operator key; pass "
        "--auth-private-key KEY (a key in its --operator-keys)"
    )


def _tls_fault(details: str, endpoint: Endpoint) -> Fault | None:
    """What a failed TLS handshake (or a plaintext connection closed at once) says."""
    address = endpoint.address
    if not endpoint.tls:
        if "Socket closed" in details or "Connection reset" in details:
            return Fault(
                f"{address} closed every plaintext connection at once: the SuperLink there "
                "expects TLS; pass --root-certificates certificates/ca.crt (the CA of its "
                "--certificates) instead of --insecure",
                certain=False,
            )
        return None
    if "WRONG_VERSION_NUMBER" in details:
        return Fault(
            f"{address} does not speak TLS (a SuperLink started with --insecure?); pass "
            "--insecure instead of --root-certificates, or restart the SuperLink with "
            "--certificates CA CERT KEY"
        )
    if "Hostname Verification" in details or "Peer name" in details:
        return Fault(
            f"the SuperLink's TLS certificate does not name {address.host}; connect by a name "
            "it covers (pollen keys generate names localhost and 127.0.0.1), or give the "
            f"SuperLink a certificate that names it: pollen keys generate --san {address.host}"
        )
    if "handshake failed" not in details.lower() and "verification" not in details.lower():
        return None
    if "expired" in details:
        return Fault(
            f"the TLS certificate of the SuperLink at {address} has expired; give it new ones "
            "(pollen keys generate --force) and restart it"
        )
    reason = re.search(r"OPENSSL_internal:([A-Z_]+)", details)
    return Fault(
        f"the TLS certificate of the SuperLink at {address} is not signed by the CA in "
        f"--root-certificates ({reason[1] if reason else 'TLS handshake failed'}); pass the "
        "ca.crt that signed the SuperLink's --certificates (pollen keys generate writes them "
        "together)"
    )


def diagnose(exc: grpc.aio.AioRpcError, endpoint: Endpoint) -> Fault | None:
    """The misconfiguration ``exc`` points at; None when trying again may help."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return _tls_fault(details, endpoint)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Fault(_wrong_api(endpoint))
    if code == grpc.StatusCode.UNAUTHENTICATED and not endpoint.keyed:
        return _key_required(endpoint)
    return None


class FaultWatch:
    """Follows one client's failed attempts and ends them once they show a misconfiguration:
    at once when an answer proves it, after `GRACE_ATTEMPTS` in a row when it suggests it."""

    def __init__(self, endpoint: Endpoint, grace: int = GRACE_ATTEMPTS) -> None:
        self.endpoint = endpoint
        self.grace = grace
        self._suggested = 0

    def reset(self) -> None:
        """An attempt got through."""
        self._suggested = 0

    def check(self, exc: grpc.aio.AioRpcError) -> None:
        """Raise `ConfigurationError` if ``exc``, with the attempts before it, shows one."""
        fault = diagnose(exc, self.endpoint)
        if fault is None:
            self._suggested = 0
            return
        self._suggested += 1
        if fault.certain or self._suggested >= self.grace:
            raise ConfigurationError(fault.message)


_REFUSED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT})


async def refused_join(
    channel: grpc.aio.Channel, endpoint: Endpoint, exc: grpc.aio.AioRpcError, probe: str
) -> grpc.aio.AioRpcError:
    """``exc``, a join's failure, if it is a refusal of the key: the caller says so.

    Whoever refused or did not know the join may be the other API (``probe`` is a
    call only the intended API knows): `wrong_api`. A SuperLink that knows no joins
    does not use keys: `key_not_used`. Any other failure is raised as it is.
    """
    if exc.code() not in (*_REFUSED, grpc.StatusCode.UNIMPLEMENTED):
        raise exc
    if not await serves(channel, probe):
        raise wrong_api(endpoint) from None
    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
        raise key_not_used(endpoint) from None
    return exc


async def serves(channel: grpc.aio.Channel, method: str, timeout: float = 10.0) -> bool:
    """Whether the server behind ``channel`` knows ``method`` (``/package.Service/Name``).

    Calls it with an empty request: any answer but UNIMPLEMENTED means it does
    (and so does no answer: the caller's own error then stands).
    """
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    try:
        await call(b"", timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code() != grpc.StatusCode.UNIMPLEMENTED
    return True
