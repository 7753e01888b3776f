"""Regression tests for the defects a review of the SuperLink found."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef, Task
from pollen.superlink.blob_gc import BlobCollector
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.dispatch import Dispatcher
from pollen.superlink.sqlite_state import SqliteState


def make(tmp_path: Path) -> tuple[Dispatcher, int]:
    state = SqliteState(tmp_path / "s.db")
    state.add_node(7, 0.0)
    return Dispatcher(state, lambda: 0.0), state.create_run("app", {}, 0.0)


def drain(queue: asyncio.Queue[Task | None]) -> list[Task | None]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_a_replaced_stream_sends_nothing_more_and_the_task_goes_out_once(tmp_path: Path) -> None:
    dispatcher, run_id = make(tmp_path)
    old = dispatcher.subscribe(7)
    dispatcher.push_tasks([Task(run_id, 7, "fit")])
    new = dispatcher.subscribe(7)
    assert drain(old.queue) == [None] and old.closed
    assert len([t for t in drain(new.queue) if t is not None]) == 1


def test_a_task_delivered_on_a_stream_that_broke_unnoticed_is_sent_again(tmp_path: Path) -> None:
    dispatcher, run_id = make(tmp_path)
    first = dispatcher.subscribe(7)
    task = Task(run_id, 7, "fit")
    dispatcher.push_tasks([task])
    assert dispatcher.state.mark_delivered(task.task_id)
    drain(first.queue)
    again = dispatcher.subscribe(7)  # the node reconnected before the old stream was noticed
    assert [t.task_id for t in drain(again.queue) if t is not None] == [task.task_id]


def test_finishing_a_run_fails_its_open_tasks_and_nodes_no_longer_get_them(
    tmp_path: Path,
) -> None:
    dispatcher, run_id = make(tmp_path)
    task = Task(run_id, 7, "fit")
    dispatcher.state.add_tasks([task])
    dispatcher.state.finish_run(run_id, "failed", "", 0.0)
    dispatcher.end_run(run_id, "run ended")
    assert dispatcher.state.get_results([task.task_id])[0].error == "run ended"
    assert drain(dispatcher.subscribe(7).queue) == []


def test_releasing_a_blob_a_run_never_held_deletes_nothing(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "s.db")
    store = BlobStore(tmp_path / "blobs")
    content = b"another run's upload"
    digest = content_digest(content)
    writer = store.writer(BlobRef(digest, len(content)))
    writer.write(0, content)
    writer.commit()
    state.add_blob(digest, len(content), 0.0)
    run_a = state.create_run("a", {}, 0.0)
    assert BlobCollector(state, store, lambda: 0.0).release(run_a, [digest]) == 0
    assert store.stored() == [digest]
