"""One node never ends a run: whatever goes wrong while the ServerApp takes one node's
result (its download, its decoding, its shapes, the memory for it), that result is
rejected with its reason and the round goes on with the others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from pollen.errors import BlobError, CallRefused, ConnectionFailed
from pollen.records.messages import BlobRef
from pollen.records.typing import NDArrays
from pollen.server.driver import DriverClient
from pollen.server.global_model import GlobalModel
from pollen.server.history import RoundRecord
from pollen.server.round_loop import RoundLoop
from pollen.transport.addresses import Address
from tests.apps import numpy_apps
from tests.conftest import federation


class FirstResultFails(DriverClient):
    """Raises ``failure`` on the first download (in a fit round: the first result's)."""

    failure: BaseException

    async def download_arrays(self, ref: BlobRef) -> NDArrays:
        if getattr(self, "failure", None) is not None:
            failure, self.failure = self.failure, None  # type: ignore[assignment]
            raise failure
        return await super().download_arrays(ref)


async def _fit_round(tmp_path: Path, failure: BaseException) -> RoundRecord:
    async with federation(tmp_path, numpy_apps.app, [{}, {}]) as (link, _):
        driver = await FirstResultFails.connect(Address("127.0.0.1", link.driver_port))
        assert isinstance(driver, FirstResultFails)
        driver.failure = failure
        try:
            app = numpy_apps.make_server_app(num_rounds=1, min_fit=1, fraction_evaluate=0.0)
            run_id, _ = await driver.create_run("numpy_apps:server_app", {})
            model = GlobalModel(driver, run_id, [a.copy() for a in numpy_apps.INITIAL])
            record = RoundRecord(1)
            new_model = await RoundLoop(app, driver, run_id).fit(1, model, record)
            np.testing.assert_array_equal((await new_model.arrays())[0], np.ones((2, 3)))
            return record
        finally:
            await driver.close()


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (MemoryError(), "could not allocate the memory to take it (MemoryError)"),
        (CallRefused("127.0.0.1:1", "not_found", "blob gone"), "not_found (blob gone)"),
        (BlobError("blob 12ab: content does not match its digest"), "does not match"),
        (ValueError("cannot reshape array"), "ValueError: cannot reshape array"),
    ],
)
def test_a_result_that_cannot_be_taken_is_rejected_and_the_round_goes_on(
    tmp_path: Path, failure: BaseException, reason: str
) -> None:
    record = asyncio.run(_fit_round(tmp_path, failure))

    assert record.fit_results == 1
    [rejected] = record.fit_failures
    assert "result rejected: " in rejected and reason in rejected


def test_a_superlink_that_is_gone_still_ends_the_round(tmp_path: Path) -> None:
    with pytest.raises(ConnectionFailed):
        asyncio.run(_fit_round(tmp_path, ConnectionFailed("SuperLink gone")))
