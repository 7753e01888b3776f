"""The SuperLink's durable state.

Every test but the SQLite-specific ones at the end runs against the ``state``
fixture, parametrized by backend: add another `State` implementation to
``BACKENDS`` and it runs the same suite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pollen.errors import ConfigurationError
from pollen.records.messages import BlobRef, Result, Task
from pollen.superlink.sqlite_state import SCHEMA_VERSION, SqliteState
from pollen.superlink.state import NodeRecord, State

Opener = Callable[[], State]

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def _sqlite_opener(tmp_path: Path) -> Opener:
    path = tmp_path / "state.db"
    return lambda: SqliteState(path)


BACKENDS: dict[str, Callable[[Path], Opener]] = {"sqlite": _sqlite_opener}


@pytest.fixture(params=sorted(BACKENDS))
def open_state(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the backend's state; every call opens the same underlying store again."""
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def state(open_state: Opener) -> Iterator[State]:
    store = open_state()
    yield store
    store.close()


@pytest.fixture
def run_id(state: State) -> int:
    return state.create_run("app:main", {"lr": 0.1}, now=1.0)


def fit_task(run_id: int, node_id: int, **kwargs: object) -> Task:
    return Task(run_id, node_id, "fit", **kwargs)  # type: ignore[arg-type]


def result_for(task: Task, **kwargs: object) -> Result:
    return Result(task.task_id, task.run_id, task.node_id, task.kind, **kwargs)  # type: ignore[arg-type]


# --- nodes ----------------------------------------------------------------------------------


def test_added_node_is_online_with_its_times(state: State) -> None:
    state.add_node(7, now=10.0)

    assert state.get_node(7) == NodeRecord(7, "online", 10.0, 10.0)


def test_unknown_node_is_none(state: State) -> None:
    assert state.get_node(404) is None


def test_set_node_status_updates_status_and_last_seen(state: State) -> None:
    state.add_node(7, now=10.0)

    state.set_node_status(7, "offline", now=12.5)

    assert state.get_node(7) == NodeRecord(7, "offline", 10.0, 12.5)


def test_re_adding_a_node_brings_it_back_online_keeping_registration_time(state: State) -> None:
    state.add_node(7, now=10.0)
    state.set_node_status(7, "offline", now=11.0)

    state.add_node(7, now=20.0)

    assert state.get_node(7) == NodeRecord(7, "online", 10.0, 20.0)


def test_node_status_follows_every_change_and_survives_a_reopen(open_state: Opener) -> None:
    state = open_state()
    assert state.node_status(7) is None
    state.add_node(7, now=1.0)
    assert state.node_status(7) == "online"
    state.set_node_status(7, "offline", now=2.0)
    assert state.node_status(7) == "offline"
    state.set_node_status(7, "left", now=3.0)
    state.close()
    again = open_state()
    try:
        assert again.node_status(7) == "left"  # read from the store, then remembered
        again.add_node(7, now=4.0)
        assert again.node_status(7) == "online"
        assert again.node_status(8) is None
    finally:
        again.close()


def test_list_nodes_filters_by_status(state: State) -> None:
    for node_id in (1, 2, 3, 4):
        state.add_node(node_id, now=1.0)
    state.set_node_status(2, "offline", now=2.0)
    state.set_node_status(4, "left", now=2.0)

    assert sorted(state.list_nodes("online")) == [1, 3]
    assert state.list_nodes("offline") == [2]
    assert state.list_nodes("left") == [4]


def test_large_node_ids_are_kept_exactly(state: State) -> None:
    node_id = 2**63 - 1
    state.add_node(node_id, now=1.0)

    assert state.list_nodes("online") == [node_id]
    assert state.get_node(node_id).node_id == node_id  # type: ignore[union-attr]


# --- runs -----------------------------------------------------------------------------------


def test_created_run_is_running_with_its_app_and_config(state: State) -> None:
    config = {"lr": 0.1, "epochs": 3, "name": "x", "fast": True, "seed": b"\x01"}

    run_id = state.create_run("pkg.app:server", config, now=1.0)
    run = state.get_run(run_id)

    assert run is not None
    assert (run.run_id, run.app, run.run_config, run.status) == (
        run_id,
        "pkg.app:server",
        config,
        "running",
    )


def test_each_run_gets_a_new_id(state: State) -> None:
    ids = [state.create_run("a:b", {}, now=1.0) for _ in range(3)]

    assert len(set(ids)) == 3
    assert all(run_id > 0 for run_id in ids)


def test_unknown_run_is_none(state: State) -> None:
    assert state.get_run(12345) is None


def test_finish_run_sets_its_status(state: State, run_id: int) -> None:
    state.finish_run(run_id, "failed", "too few nodes", now=5.0)

    assert state.get_run(run_id).status == "failed"  # type: ignore[union-attr]


# --- tasks ----------------------------------------------------------------------------------


def test_added_task_reads_back_equal(state: State, run_id: int) -> None:
    task = Task(
        run_id,
        7,
        "evaluate",
        BlobRef(DIGEST_A, 1234),
        {"lr": 0.5, "tag": "t", "raw": b"\x00"},
        created_at=3.25,
    )

    state.add_tasks([task])

    assert state.get_task(task.task_id) == task


def test_task_without_parameters_reads_back_none(state: State, run_id: int) -> None:
    task = Task(run_id, 7, "get_parameters")
    state.add_tasks([task])

    assert state.get_task(task.task_id).parameters is None  # type: ignore[union-attr]


def test_unknown_task_is_none(state: State) -> None:
    assert state.get_task("nope") is None


def test_pending_tasks_are_per_node_in_creation_order(state: State, run_id: int) -> None:
    late = fit_task(run_id, 1, created_at=3.0)
    early = fit_task(run_id, 1, created_at=1.0)
    middle = fit_task(run_id, 1, created_at=2.0)
    other = fit_task(run_id, 2, created_at=0.5)
    state.add_tasks([late, early, other, middle])

    assert [t.task_id for t in state.pending_tasks(1)] == [
        early.task_id,
        middle.task_id,
        late.task_id,
    ]
    assert [t.task_id for t in state.pending_tasks(2)] == [other.task_id]
    assert state.pending_tasks(3) == []


def test_delivered_task_is_no_longer_pending_but_still_open(state: State, run_id: int) -> None:
    first, second = fit_task(run_id, 1), fit_task(run_id, 1)
    state.add_tasks([first, second])

    state.mark_delivered(first.task_id)

    assert [t.task_id for t in state.pending_tasks(1)] == [second.task_id]
    assert {t.task_id for t in state.open_tasks(1)} == {first.task_id, second.task_id}


def test_open_tasks_are_per_node(state: State, run_id: int) -> None:
    mine, theirs = fit_task(run_id, 1), fit_task(run_id, 2)
    state.add_tasks([mine, theirs])

    assert [t.task_id for t in state.open_tasks(1)] == [mine.task_id]


def test_mark_delivered_on_an_answered_task_does_not_reopen_it(state: State, run_id: int) -> None:
    task = fit_task(run_id, 1)
    state.add_tasks([task])
    state.add_result(result_for(task))

    state.mark_delivered(task.task_id)

    assert state.open_tasks(1) == []
    assert state.pending_tasks(1) == []


def test_adding_no_tasks_is_fine(state: State) -> None:
    state.add_tasks([])


# --- results --------------------------------------------------------------------------------


def test_first_result_wins(state: State, run_id: int) -> None:
    task = fit_task(run_id, 1)
    state.add_tasks([task])
    first = result_for(task, num_examples=10, loss=0.5, metrics={"acc": 0.9})
    second = result_for(task, num_examples=99, error="late duplicate")

    assert state.add_result(first) is True
    assert state.add_result(second) is False

    assert state.get_results([task.task_id]) == [first]


def test_answered_task_is_no_longer_open_or_pending(state: State, run_id: int) -> None:
    answered, waiting = fit_task(run_id, 1), fit_task(run_id, 1)
    state.add_tasks([answered, waiting])
    state.mark_delivered(answered.task_id)

    state.add_result(result_for(answered))

    assert [t.task_id for t in state.open_tasks(1)] == [waiting.task_id]
    assert [t.task_id for t in state.pending_tasks(1)] == [waiting.task_id]


def test_result_for_an_unknown_task_is_not_stored(state: State) -> None:
    orphan = Result("no-such-task", 1, 1, "fit")

    assert state.add_result(orphan) is False
    assert state.get_results(["no-such-task"]) == []


def test_result_reads_back_with_every_field(state: State, run_id: int) -> None:
    task = fit_task(run_id, 3)
    state.add_tasks([task])
    result = result_for(
        task,
        parameters=BlobRef(DIGEST_B, 4096),
        num_examples=128,
        loss=0.125,
        metrics={"acc": 0.75, "n": 3, "ok": True, "who": "me", "raw": b"\x01\x02"},
        created_at=9.5,
    )

    state.add_result(result)

    assert state.get_results([task.task_id]) == [result]


def test_error_result_keeps_its_error(state: State, run_id: int) -> None:
    task = fit_task(run_id, 3)
    state.add_tasks([task])

    state.add_result(result_for(task, error="ClientApp raised ValueError: boom"))

    (stored,) = state.get_results([task.task_id])
    assert not stored.ok
    assert stored.error == "ClientApp raised ValueError: boom"
    assert stored.parameters is None


def test_get_results_skips_ids_without_results(state: State, run_id: int) -> None:
    answered, waiting = fit_task(run_id, 1), fit_task(run_id, 2)
    state.add_tasks([answered, waiting])
    state.add_result(result_for(answered))

    results = state.get_results([waiting.task_id, answered.task_id, "unknown"])

    assert [r.task_id for r in results] == [answered.task_id]


def test_get_results_of_no_ids_is_empty(state: State) -> None:
    assert state.get_results([]) == []


def test_get_results_with_more_than_500_ids(state: State, run_id: int) -> None:
    tasks = [fit_task(run_id, n % 7) for n in range(1234)]
    state.add_tasks(tasks)
    for n, task in enumerate(tasks):
        assert state.add_result(result_for(task, num_examples=n + 1))

    results = state.get_results(t.task_id for t in tasks)  # any iterable will do

    assert len(results) == 1234
    assert {r.task_id: r.num_examples for r in results} == {
        t.task_id: n + 1 for n, t in enumerate(tasks)
    }


# --- blobs ----------------------------------------------------------------------------------


def test_added_blob_is_known(state: State) -> None:
    assert not state.has_blob(DIGEST_A)

    state.add_blob(DIGEST_A, 100, now=1.0)

    assert state.has_blob(DIGEST_A)
    assert not state.has_blob(DIGEST_B)


def test_adding_a_blob_twice_is_fine(state: State) -> None:
    state.add_blob(DIGEST_A, 100, now=1.0)
    state.add_blob(DIGEST_A, 100, now=2.0)

    assert state.has_blob(DIGEST_A)


# --- durability -----------------------------------------------------------------------------


def test_everything_survives_closing_and_reopening(open_state: Opener) -> None:
    first = open_state()
    first.add_node(1, now=1.0)
    first.add_node(2, now=1.0)
    first.set_node_status(2, "left", now=2.0)
    run_id = first.create_run("app:x", {"lr": 0.1, "raw": b"\xff"}, now=1.0)
    other_run = first.create_run("app:y", {}, now=1.0)
    first.finish_run(other_run, "completed", "", now=3.0)
    answered = Task(run_id, 1, "fit", BlobRef(DIGEST_A, 10), {"epochs": 2}, created_at=1.0)
    delivered = Task(run_id, 1, "evaluate", created_at=2.0)
    pending = Task(run_id, 1, "fit", created_at=3.0)
    first.add_tasks([answered, delivered, pending])
    first.mark_delivered(delivered.task_id)
    result = result_for(answered, parameters=BlobRef(DIGEST_B, 20), num_examples=5, loss=0.5)
    first.add_result(result)
    first.add_blob(DIGEST_A, 10, now=1.0)
    first.close()

    reopened = open_state()
    try:
        assert reopened.get_node(1) == NodeRecord(1, "online", 1.0, 1.0)
        assert reopened.list_nodes("left") == [2]
        assert reopened.get_run(run_id).run_config == {"lr": 0.1, "raw": b"\xff"}  # type: ignore[union-attr]
        assert reopened.get_run(other_run).status == "completed"  # type: ignore[union-attr]
        assert reopened.get_task(answered.task_id) == answered
        assert [t.task_id for t in reopened.pending_tasks(1)] == [pending.task_id]
        assert {t.task_id for t in reopened.open_tasks(1)} == {delivered.task_id, pending.task_id}
        assert reopened.get_results([answered.task_id]) == [result]
        assert reopened.add_result(result_for(answered)) is False  # first still wins
        assert reopened.has_blob(DIGEST_A)
        assert reopened.create_run("app:z", {}, now=4.0) not in (run_id, other_run)
    finally:
        reopened.close()


# --- SQLite-specific: refusing files it cannot use -------------------------------------------


def test_database_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(ConfigurationError, match="newer") as info:
        SqliteState(path)

    assert str(path) in str(info.value)


def test_database_of_the_current_schema_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteState(path).close()

    with sqlite3.connect(path) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
    db.close()
    assert version == SCHEMA_VERSION
    SqliteState(path).close()


def test_database_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "state.db"

    with pytest.raises(ConfigurationError, match="does not exist"):
        SqliteState(path)

    assert not path.parent.exists()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not a database, just some text\n" * 50, id="text"),
        pytest.param(bytes(range(256)) * 16, id="binary"),
    ],
)
def test_file_that_is_not_sqlite_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)

    with pytest.raises(ConfigurationError, match="not a usable SQLite database"):
        SqliteState(path)


def test_idle_running_runs_are_found_by_their_last_task_or_result(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "s.db")
    try:
        quiet = state.create_run("a", {}, 0.0)
        busy = state.create_run("b", {}, 0.0)
        state.add_tasks([Task(quiet, 7, "fit", created_at=10.0)])
        state.add_tasks([Task(busy, 7, "fit", created_at=100.0)])
        assert state.idle_running_runs(50.0) == [quiet]
        state.abandon_run(quiet, "abandoned")
        assert state.idle_running_runs(50.0) == []
        assert state.prune_runs(finished_before=50.0) == [quiet]  # it ended when it went quiet
        assert state.get_run(busy) is not None
    finally:
        state.close()
