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
from pollen.records import fit_evaluate
from pollen.records.messages import EVALUATE, TRAIN, BlobRef, Message, Records
from pollen.records.typing import Metrics
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


def train(
    run_id: int, node_id: int, model: BlobRef | None = None, created_at: float | None = None
) -> Message:
    """A train instruction (the old fit task) to ``node_id``."""
    message = Message(run_id, node_id, TRAIN, fit_evaluate.instruction(model, {}))
    if created_at is not None:
        message.created_at = created_at
    return message


def reply_for(
    instruction: Message,
    *,
    model: BlobRef | None = None,
    num_examples: int = 0,
    loss: float | None = None,
    metrics: Metrics | None = None,
    error: str = "",
    created_at: float | None = None,
) -> Message:
    """``instruction``'s reply in the fit/evaluate layout (an error reply: empty content)."""
    content: Records[BlobRef] = Records()
    if not error:
        if model is not None:
            content.arrays[fit_evaluate.ARRAYS] = model
        content.metrics[fit_evaluate.METRICS] = {
            **(metrics or {}),
            fit_evaluate.NUM_EXAMPLES: num_examples,
        }
        if loss is not None:
            content.metrics[fit_evaluate.EVALUATION] = {fit_evaluate.LOSS: loss}
    reply = instruction.reply(content, error=error)
    if created_at is not None:
        reply.created_at = created_at
    return reply


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


# --- instructions ---------------------------------------------------------------------------


def test_added_instruction_reads_back_equal(state: State, run_id: int) -> None:
    message = Message(
        run_id,
        7,
        EVALUATE,
        fit_evaluate.instruction(BlobRef(DIGEST_A, 1234), {"lr": 0.5, "tag": "t", "raw": b"\x00"}),
        created_at=3.25,
    )

    state.add_messages([message])

    assert state.get_message(message.message_id) == message


def test_instruction_without_a_model_reads_back_none(state: State, run_id: int) -> None:
    message = Message(run_id, 7, fit_evaluate.GET_PARAMETERS, fit_evaluate.instruction(None, {}))
    state.add_messages([message])

    stored = state.get_message(message.message_id)
    assert stored is not None
    assert fit_evaluate.model_of(stored.content) is None


def test_unknown_message_is_none(state: State) -> None:
    assert state.get_message("nope") is None


def test_pending_messages_are_per_node_in_creation_order(state: State, run_id: int) -> None:
    late = train(run_id, 1, created_at=3.0)
    early = train(run_id, 1, created_at=1.0)
    middle = train(run_id, 1, created_at=2.0)
    other = train(run_id, 2, created_at=0.5)
    state.add_messages([late, early, other, middle])

    assert [m.message_id for m in state.pending_messages(1)] == [
        early.message_id,
        middle.message_id,
        late.message_id,
    ]
    assert [m.message_id for m in state.pending_messages(2)] == [other.message_id]
    assert state.pending_messages(3) == []


def test_delivered_instruction_is_no_longer_pending_but_still_open(
    state: State, run_id: int
) -> None:
    first, second = train(run_id, 1), train(run_id, 1)
    state.add_messages([first, second])

    state.mark_delivered(first.message_id)

    assert [m.message_id for m in state.pending_messages(1)] == [second.message_id]
    assert {m.message_id for m in state.open_messages(1)} == {
        first.message_id,
        second.message_id,
    }


def test_open_messages_are_per_node(state: State, run_id: int) -> None:
    mine, theirs = train(run_id, 1), train(run_id, 2)
    state.add_messages([mine, theirs])

    assert [m.message_id for m in state.open_messages(1)] == [mine.message_id]


def test_mark_delivered_on_an_answered_instruction_does_not_reopen_it(
    state: State, run_id: int
) -> None:
    message = train(run_id, 1)
    state.add_messages([message])
    state.add_reply(reply_for(message))

    state.mark_delivered(message.message_id)

    assert state.open_messages(1) == []
    assert state.pending_messages(1) == []


def test_adding_no_messages_is_fine(state: State) -> None:
    state.add_messages([])


# --- replies --------------------------------------------------------------------------------


def test_first_reply_wins(state: State, run_id: int) -> None:
    message = train(run_id, 1)
    state.add_messages([message])
    first = reply_for(message, num_examples=10, loss=0.5, metrics={"acc": 0.9})
    second = reply_for(message, num_examples=99, error="late duplicate")

    assert state.add_reply(first) is True
    assert state.add_reply(second) is False

    assert state.get_replies([message.message_id]) == [first]


def test_answered_instruction_is_no_longer_open_or_pending(state: State, run_id: int) -> None:
    answered, waiting = train(run_id, 1), train(run_id, 1)
    state.add_messages([answered, waiting])
    state.mark_delivered(answered.message_id)

    state.add_reply(reply_for(answered))

    assert [m.message_id for m in state.open_messages(1)] == [waiting.message_id]
    assert [m.message_id for m in state.pending_messages(1)] == [waiting.message_id]


def test_reply_to_an_unknown_instruction_is_not_stored(state: State) -> None:
    orphan = Message(1, 1, TRAIN, reply_to="no-such-message")

    assert state.add_reply(orphan) is False
    assert state.get_replies(["no-such-message"]) == []


def test_reply_reads_back_with_every_field(state: State, run_id: int) -> None:
    message = train(run_id, 3)
    state.add_messages([message])
    reply = reply_for(
        message,
        model=BlobRef(DIGEST_B, 4096),
        num_examples=128,
        loss=0.125,
        metrics={"acc": 0.75, "n": 3, "ok": True, "who": "me", "raw": b"\x01\x02"},
        created_at=9.5,
    )
    reply.content.configs["extra"] = {"note": "kept", "raw": b"\x03"}

    state.add_reply(reply)

    assert state.get_replies([message.message_id]) == [reply]


def test_error_reply_keeps_its_error(state: State, run_id: int) -> None:
    message = train(run_id, 3)
    state.add_messages([message])

    state.add_reply(reply_for(message, error="ClientApp raised ValueError: boom"))

    (stored,) = state.get_replies([message.message_id])
    assert not stored.ok
    assert stored.error == "ClientApp raised ValueError: boom"
    assert fit_evaluate.model_of(stored.content) is None


def test_get_replies_skips_ids_without_replies(state: State, run_id: int) -> None:
    answered, waiting = train(run_id, 1), train(run_id, 2)
    state.add_messages([answered, waiting])
    state.add_reply(reply_for(answered))

    replies = state.get_replies([waiting.message_id, answered.message_id, "unknown"])

    assert [r.reply_to for r in replies] == [answered.message_id]


def test_get_replies_of_no_ids_is_empty(state: State) -> None:
    assert state.get_replies([]) == []


def test_get_replies_with_more_than_500_ids(state: State, run_id: int) -> None:
    messages = [train(run_id, n % 7) for n in range(1234)]
    state.add_messages(messages)
    for n, message in enumerate(messages):
        assert state.add_reply(reply_for(message, num_examples=n + 1))

    replies = state.get_replies(m.message_id for m in messages)  # any iterable will do

    assert len(replies) == 1234
    assert {r.reply_to: fit_evaluate.num_examples(r.content) for r in replies} == {
        m.message_id: n + 1 for n, m in enumerate(messages)
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
    answered = Message(
        run_id,
        1,
        TRAIN,
        fit_evaluate.instruction(BlobRef(DIGEST_A, 10), {"epochs": 2}),
        created_at=1.0,
    )
    delivered = Message(run_id, 1, EVALUATE, fit_evaluate.instruction(None, {}), created_at=2.0)
    pending = train(run_id, 1, created_at=3.0)
    first.add_messages([answered, delivered, pending])
    first.mark_delivered(delivered.message_id)
    reply = reply_for(answered, model=BlobRef(DIGEST_B, 20), num_examples=5, loss=0.5)
    first.add_reply(reply)
    first.add_blob(DIGEST_A, 10, now=1.0)
    first.close()

    reopened = open_state()
    try:
        assert reopened.get_node(1) == NodeRecord(1, "online", 1.0, 1.0)
        assert reopened.list_nodes("left") == [2]
        assert reopened.get_run(run_id).run_config == {"lr": 0.1, "raw": b"\xff"}  # type: ignore[union-attr]
        assert reopened.get_run(other_run).status == "completed"  # type: ignore[union-attr]
        assert reopened.get_message(answered.message_id) == answered
        assert [m.message_id for m in reopened.pending_messages(1)] == [pending.message_id]
        assert {m.message_id for m in reopened.open_messages(1)} == {
            delivered.message_id,
            pending.message_id,
        }
        assert reopened.get_replies([answered.message_id]) == [reply]
        assert reopened.add_reply(reply_for(answered)) is False  # first still wins
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

    with pytest.raises(ConfigurationError, match="newer Pollen") as info:
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


def test_idle_running_runs_are_found_by_their_last_message(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "s.db")
    try:
        quiet = state.create_run("a", {}, 0.0)
        busy = state.create_run("b", {}, 0.0)
        state.add_messages([train(quiet, 7, created_at=10.0)])
        state.add_messages([train(busy, 7, created_at=100.0)])
        assert state.idle_running_runs(50.0) == [quiet]
        state.abandon_run(quiet, "abandoned")
        assert state.idle_running_runs(50.0) == []
        assert state.prune_runs(finished_before=50.0) == [quiet]  # it ended when it went quiet
        assert state.get_run(busy) is not None
    finally:
        state.close()
