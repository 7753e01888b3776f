"""One retry policy for every client: each status lands in one verdict, and the Driver
client turns what it does not retry into a Pollen error, never gRPC's own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from pollen.errors import CallRefused, PollenError
from pollen.server.driver import DriverClient
from pollen.server.reconnect import Reconnector
from pollen.superlink.server import open_superlink
from pollen.transport.addresses import Address
from pollen.transport.retry_policy import DISPLACED, classify, retry_later
from tests.conftest import superlink_config

Code = grpc.StatusCode


def status(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


VERDICTS = {
    Code.UNAVAILABLE: "away",
    Code.UNAUTHENTICATED: "rejoin",
    Code.INTERNAL: "cut",
    Code.UNKNOWN: "cut",
    Code.RESOURCE_EXHAUSTED: "refused",  # a quota, a size limit: the same again
    Code.CANCELLED: "refused",
    Code.INVALID_ARGUMENT: "refused",
    Code.DEADLINE_EXCEEDED: "refused",
    Code.NOT_FOUND: "refused",
    Code.ALREADY_EXISTS: "refused",
    Code.PERMISSION_DENIED: "refused",
    Code.FAILED_PRECONDITION: "refused",
    Code.ABORTED: "refused",
    Code.OUT_OF_RANGE: "refused",
    Code.UNIMPLEMENTED: "refused",
    Code.DATA_LOSS: "refused",
}


def test_every_status_but_ok_has_a_verdict() -> None:
    assert set(VERDICTS) == set(Code) - {Code.OK}


@pytest.mark.parametrize(("code", "verdict"), VERDICTS.items(), ids=lambda v: str(v))
def test_each_status_lands_in_its_verdict(code: grpc.StatusCode, verdict: str) -> None:
    assert classify(status(code, "why")) == verdict


@pytest.mark.parametrize(
    ("code", "details", "verdict"),
    [
        (Code.RESOURCE_EXHAUSTED, "SuperLink storage full: cannot write /x", "passing"),
        (Code.RESOURCE_EXHAUSTED, "SuperLink out of file descriptors: cannot open", "passing"),
        (Code.RESOURCE_EXHAUSTED, "an upload of 9 bytes is above --max-blob-size", "refused"),
        (Code.UNAUTHENTICATED, f"{DISPLACED} (SHA256:ab), which joined from x", "refused"),
        (Code.ABORTED, f"{DISPLACED} (SHA256:ab), which joined from x", "refused"),
    ],
)
def test_the_details_decide_a_shortage_and_a_displaced_session(
    code: grpc.StatusCode, details: str, verdict: str
) -> None:
    assert classify(status(code, details)) == verdict


def test_a_join_the_superlink_bounds_for_a_while_is_tried_later() -> None:
    bounded = status(Code.RESOURCE_EXHAUSTED, "too many challenges outstanding; retry in 1 s")
    assert classify(bounded, joining=True) == "passing" and retry_later(bounded, joining=True)
    assert not retry_later(bounded)  # the same status for any other call: a quota
    assert not retry_later(status(Code.PERMISSION_DENIED), joining=True)


def failing(*errors: grpc.aio.AioRpcError) -> Callable[[], Awaitable[str]]:
    """An attempt that fails with ``errors`` in turn, then succeeds."""
    pending = list(errors)

    async def attempt() -> str:
        if pending:
            raise pending.pop(0)
        return "done"

    return attempt


def reconnector() -> Reconnector:
    channel: Any = None  # no attempt here needs it: none joins again
    return Reconnector(channel, "127.0.0.1:9091", timeout=5.0)


def test_the_driver_client_retries_away_and_passing_statuses() -> None:
    full = status(Code.RESOURCE_EXHAUSTED, "SuperLink storage full: cannot write /x")
    attempt = failing(status(Code.UNAVAILABLE, "restarting"), full)
    assert asyncio.run(reconnector().call(attempt)) == "done"


@pytest.mark.parametrize(
    "code", [Code.NOT_FOUND, Code.INTERNAL, Code.UNAUTHENTICATED, Code.RESOURCE_EXHAUSTED]
)
def test_the_driver_client_raises_what_it_does_not_retry_as_a_pollen_error(
    code: grpc.StatusCode,
) -> None:
    """Unauthenticated without an operator key to join again with: refused too."""
    with pytest.raises(CallRefused) as refused:
        asyncio.run(reconnector().call(failing(status(code, "the reason"))))
    name = code.name.lower()
    assert refused.value.status == name and refused.value.details == "the reason"
    assert str(refused.value) == f"SuperLink at 127.0.0.1:9091: {name} (the reason)"


def test_a_refused_driver_call_against_a_superlink_is_a_pollen_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path)) as link:
            address = Address("127.0.0.1", link.driver_port)
            driver = await DriverClient.connect(address)
            try:
                with pytest.raises(CallRefused) as resume:
                    await driver.resume_run(999)
                with pytest.raises(CallRefused) as replies:
                    async for _ in driver.replies(999, ["t1"]):
                        pass
            finally:
                await driver.close()
        for refused in (resume.value, replies.value):
            assert isinstance(refused, PollenError)
            assert not isinstance(refused, grpc.aio.AioRpcError)
            assert refused.status == "not_found"
            assert str(refused) == f"SuperLink at {address}: not_found (run 999 does not exist)"

    asyncio.run(scenario())
