"""The buffers a SuperNode reuses between messages never change arrays an app still holds."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from pollen.client import ClientApp, NumPyClient
from pollen.records import fit_evaluate
from pollen.records.arrays import buffer_in_use, encode_arrays
from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef, Message
from pollen.supernode.task_runner import TaskRunner


class StoredBlobs:
    """Stands in for the SuperLink's Fleet API: blobs by digest, replies in a list."""

    node_id = 1

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.results: list[Message] = []

    def put(self, arrays: list[np.ndarray]) -> BlobRef:
        data = bytes(encode_arrays(arrays))
        self.blobs[content_digest(data)] = data
        return BlobRef(content_digest(data), len(data))

    async def get_run(self, run_id: int) -> Any:
        return type("Run", (), {"run_id": run_id, "run_config": {}})()

    async def download_blob(self, ref: BlobRef, reuse: bytearray | None = None) -> bytearray:
        return bytearray(self.blobs[ref.digest])

    async def upload_blob(self, buffer: Any, digest: str = "", run_id: int = 0) -> BlobRef:
        data = bytes(buffer)
        self.blobs[content_digest(data)] = data
        return BlobRef(content_digest(data), len(data))

    async def push_reply(self, reply: Message) -> None:
        self.results.append(reply)


def fit(ref: BlobRef) -> Message:
    return Message(
        run_id=1, node_id=1, message_type="train", content=fit_evaluate.instruction(ref, {})
    )


class KeepsItsModel(NumPyClient):
    """Keeps the arrays of every fit it is given, as an app with state may."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.kept: list[list[np.ndarray]] = []

    def fit(self, parameters, config):
        if self.keep:
            self.kept.append(parameters)
        return parameters, 1, {}


async def let_go(runner: TaskRunner) -> None:
    """Wait (up to 5 s) for the worker thread that ran the app to drop its arrays."""
    for _ in range(500):
        if runner._app_buffers and not buffer_in_use(runner._app_buffers[0]):
            return
        await asyncio.sleep(0.01)


def run_two_fits(keep: bool) -> tuple[KeepsItsModel, list[int]]:
    """Two fit tasks; returns the client and the identity of the copy each task's app got."""
    client = KeepsItsModel(keep)
    runner = TaskRunner(ClientApp(client_fn=lambda context: client), {})
    fleet = StoredBlobs()
    first = fleet.put([np.full(1000, 1.0, np.float32)])
    second = fleet.put([np.full(1000, 2.0, np.float32)])

    copies: list[int] = []

    async def scenario() -> None:
        for ref in (first, second):
            await runner.run(fleet, fit(ref))  # type: ignore[arg-type]
            copies.append(id(runner._app_buffers[0]))
            if not keep:
                await let_go(runner)

    asyncio.run(scenario())
    assert [r.error for r in fleet.results] == ["", ""]
    return client, copies


def test_an_app_that_keeps_its_arrays_finds_them_unchanged_after_the_next_task() -> None:
    client, copies = run_two_fits(keep=True)

    assert client.kept[0][0].tolist() == [1.0] * 1000
    assert client.kept[1][0].tolist() == [2.0] * 1000
    assert copies[0] != copies[1]


def test_the_copy_an_app_let_go_of_receives_the_next_model() -> None:
    _, copies = run_two_fits(keep=False)

    assert copies[0] == copies[1]  # no fresh memory for the second model


def test_an_app_that_keeps_one_array_of_its_model_keeps_that_array_intact() -> None:
    kept: list[np.ndarray] = []

    class KeepsOneArray(NumPyClient):
        def fit(self, parameters, config):
            kept.append(parameters[0][10:20])  # a view of a view: one reference in all
            return parameters, 1, {}

    runner = TaskRunner(ClientApp(client_fn=lambda context: KeepsOneArray()), {})
    fleet = StoredBlobs()
    refs = [fleet.put([np.full(1000, float(value), np.float32)]) for value in (1, 2)]

    async def scenario() -> None:
        for ref in refs:
            await runner.run(fleet, fit(ref))  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert kept[0].tolist() == [1.0] * 10
