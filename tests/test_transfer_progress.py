"""Progress of blobs over 50 MB: a live line with rate and ETA on a terminal, one
summary line otherwise, nothing for small blobs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from pollen.cli.progress_line import OffTerminal, ProgressLine, describe_transfers
from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef
from pollen.server.driver import DriverClient
from pollen.superlink.server import open_superlink
from pollen.transport.addresses import Address
from pollen.transport.blob_stream import download_blob, iter_chunks
from pollen.transport.transfer_progress import LARGE_BLOB_BYTES, Tracked, Transfer
from tests.conftest import superlink_config
from tests.test_blob_stream import server
from tests.test_round_progress import FakeTerminal

MB = 1_000_000


class Recorded:
    def __init__(self) -> None:
        self.started: list[Transfer] = []
        self.ended: list[tuple[str, int, int]] = []

    def transfer_started(self, transfer: Transfer) -> None:
        self.started.append(transfer)

    def transfer_ended(self, transfer: Transfer) -> None:
        self.ended.append((transfer.what, transfer.done, transfer.total))


def test_a_large_download_is_reported_from_start_to_end_and_a_small_one_not_at_all() -> None:
    large = bytearray(LARGE_BLOB_BYTES + 123)
    ref = BlobRef(content_digest(large), len(large))
    progress = Recorded()

    received = asyncio.run(download_blob(server(large, ref, [10]), ref, progress=progress))

    assert received == large  # resumed after the cut at chunk 10, reported as one transfer
    assert progress.ended == [(f"download of blob {ref.digest[:12]}", len(large), len(large))]

    small = bytearray(LARGE_BLOB_BYTES - 1)
    small_ref = BlobRef(content_digest(small), len(small))
    asyncio.run(download_blob(server(small, small_ref, []), small_ref, progress=progress))
    assert len(progress.started) == 1


def test_an_upload_tells_how_far_it_got_as_its_chunks_are_taken() -> None:
    buffer = bytearray(60 * MB)
    progress = Recorded()
    tracked = Tracked(progress, "upload of the result", len(buffer))
    seen = []
    for _ in iter_chunks(buffer, BlobRef("", len(buffer)), tracked=tracked):
        seen.append(tracked.transfer.done)
    tracked.ended()
    assert seen[0] == 0 and seen == sorted(seen) and seen[-1] > 58 * MB
    assert progress.started[0].what == "upload of the result"


def test_off_a_terminal_a_large_transfer_ends_with_one_summary_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transfer = Transfer("download of blob 3fa2c81d09be", 512 * MB)
    transfer.done = 512 * MB
    with caplog.at_level(logging.INFO, logger="pollen.transport.transfer_progress"):
        OffTerminal().transfer_started(transfer)
        OffTerminal().transfer_ended(transfer)
    (line,) = caplog.messages
    assert line.startswith("download of blob 3fa2c81d09be: 512.0 MB in ")
    assert line.endswith(" MB/s") or line.endswith(" GB/s")


def test_on_a_terminal_the_line_shows_rate_and_eta_and_goes_when_it_ends() -> None:
    stream = FakeTerminal()
    line = ProgressLine(stream, interval=3600)  # redrawn by hand below
    transfer = Transfer("download of blob 3fa2c81d09be", 100 * MB)
    transfer.started -= 2.0  # two seconds in, 40 MB done: 20 MB/s, 3 s to go
    transfer.done = 40 * MB
    line.transfer_started(transfer)
    line.redraw()
    drawn = stream.getvalue().split("\r")[-1]
    assert drawn.startswith("download of blob 3fa2c81d09be 40.0 MB of 100.0 MB, 20.0 MB/s")
    assert "ETA 3.0 s" in drawn
    line.transfer_ended(transfer)
    assert stream.getvalue().endswith("\r\x1b[K")  # cleared: nothing left to show


def test_several_transfers_at_once_are_summed() -> None:
    transfers = [Transfer(f"download {i}", 100 * MB) for i in range(3)]
    for transfer in transfers:
        transfer.done = 50 * MB
    text = describe_transfers(transfers)
    assert text.startswith("3 transfers 150.0 MB of 300.0 MB, ")


def test_a_serverapps_large_model_reports_its_upload_and_download(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str, int, int]]:
        async with open_superlink(superlink_config(tmp_path)) as link:
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port))
            progress = Recorded()
            driver.transfers = progress
            run_id, _ = await driver.create_run("large", {})
            model = [np.ones(60 * MB // 4, np.float32)]
            ref = await driver.upload_arrays(model, run_id)
            (back,) = await driver.download_arrays(ref)
            assert back.shape == model[0].shape
            await driver.close()
            return progress.ended

    upload, download = asyncio.run(scenario())
    assert upload[0] == "upload of the model" and upload[1] == upload[2] > 60 * MB
    assert download[0].startswith("download of blob ") and download[1] == download[2]
