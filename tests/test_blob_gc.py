"""Blob garbage collection: a blob goes once nothing needs it, and never before."""

from __future__ import annotations

from pathlib import Path

from pollen.records import fit_evaluate
from pollen.records.content_address import content_digest
from pollen.records.messages import TRAIN, BlobRef, Message
from pollen.superlink.blob_gc import BlobCollector
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.sqlite_state import SqliteState


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_blob(store: BlobStore, state: SqliteState, content: bytes, now: float) -> str:
    digest = content_digest(content)
    writer = store.writer(BlobRef(digest, len(content)))
    writer.write(0, content)
    writer.commit()
    state.add_blob(digest, len(content), now)
    return digest


def setup(tmp_path: Path) -> tuple[SqliteState, BlobStore, BlobCollector, Clock]:
    clock = Clock()
    state = SqliteState(tmp_path / "s.db")
    store = BlobStore(tmp_path / "blobs")
    return state, store, BlobCollector(state, store, clock), clock


def test_a_released_blob_is_deleted_but_one_another_run_holds_is_kept(tmp_path: Path) -> None:
    state, store, collector, clock = setup(tmp_path)
    run_a = state.create_run("a", {}, clock())
    run_b = state.create_run("b", {}, clock())
    shared = store_blob(store, state, b"same model", clock())
    state.hold_blobs(run_a, [shared])
    state.hold_blobs(run_b, [shared])
    assert collector.release(run_a, [shared]) == 0
    assert store.stored() == [shared]
    assert collector.release(run_b) == 1
    assert store.stored() == [] and not state.has_blob(shared)


def test_a_blob_named_by_an_open_instruction_of_a_running_run_is_kept(tmp_path: Path) -> None:
    state, store, collector, clock = setup(tmp_path)
    run = state.create_run("a", {}, clock())
    state.add_node(7, clock())
    digest = store_blob(store, state, b"model", clock())
    state.add_messages([Message(run, 7, TRAIN, fit_evaluate.instruction(BlobRef(digest, 5), {}))])
    assert collector.collect([digest]) == 0
    state.finish_run(run, "finished", "", clock())
    assert collector.collect([digest]) == 1


def test_orphans_are_swept_after_the_grace_period_and_unknown_files_at_once(
    tmp_path: Path,
) -> None:
    state, store, collector, clock = setup(tmp_path)
    orphan = store_blob(store, state, b"uploaded, never used", clock())
    stray = store_blob(store, state, b"a file the state forgot", clock())
    state.remove_blob(stray)
    assert collector.sweep(grace=600) == 1  # the stray file; the orphan is still young
    assert store.stored() == [orphan]
    clock.now += 601
    assert collector.sweep(grace=600) == 1
    assert store.stored() == []


def test_storing_a_blob_again_restarts_its_grace_period(tmp_path: Path) -> None:
    state, store, collector, clock = setup(tmp_path)
    digest = store_blob(store, state, b"model", clock())
    clock.now += 601
    store_blob(store, state, b"model", clock())  # uploaded again, about to be used
    assert collector.sweep(grace=600) == 0
    assert store.stored() == [digest]


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
