"""A database an earlier Pollen wrote (schema 1: tasks and results; schema 2: messages,
before runs' round reports) is migrated at start.

What the SuperLink knew before the upgrade it still knows after: pending work is
still pending, answered work keeps its reply, a node may still read the blobs it
was sent, and the blob collector keeps the same blobs.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from pollen.errors import ConfigurationError
from pollen.records import fit_evaluate
from pollen.records.config_json import records_to_json
from pollen.records.messages import EVALUATE, TRAIN, BlobRef, Records
from pollen.records.typing import Config
from pollen.superlink import sqlite_schema
from pollen.superlink.sqlite_schema import SCHEMA_VERSION
from pollen.superlink.sqlite_state import SqliteState
from pollen.superlink.state import RoundReport

# Test data: schema 1 as Pollen wrote it (``_SCHEMA`` of sqlite_state.py with
# SCHEMA_VERSION = 1; PRAGMA user_version=1), and the ``owner`` column it later added to ``runs``.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    key_fingerprint TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    run_config TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    node_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    parameters_digest TEXT,
    parameters_size INTEGER,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_node ON tasks(node_id, status);
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT PRIMARY KEY REFERENCES tasks(task_id),
    run_id INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    parameters_digest TEXT,
    parameters_size INTEGER,
    num_examples INTEGER NOT NULL,
    loss REAL NOT NULL,
    metrics TEXT NOT NULL,
    error TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_digest ON tasks(parameters_digest);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    api TEXT NOT NULL,
    event TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    peer TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS blob_holds (
    digest TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    PRIMARY KEY (digest, run_id)
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_uploads (
    node_id INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (node_id, run_id, digest)
);
CREATE INDEX IF NOT EXISTS blob_uploads_by_digest ON blob_uploads(digest);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
PRAGMA user_version=1;
"""
OWNER_COLUMN = "ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''"
"""Added to ``runs`` by the later schema-1 Pollens (operator keys)."""

# Schema 1's own queries, to ask the old database what the SuperLink answered before.
OLD_BLOB_IN_USE = (
    "SELECT 1 FROM blob_holds WHERE digest=? UNION ALL "
    "SELECT 1 FROM tasks JOIN runs USING (run_id) WHERE tasks.parameters_digest=? "
    "AND tasks.status IN ('pending', 'delivered') AND runs.status='running' LIMIT 1"
)
OLD_NODE_CAN_READ_BLOB = "SELECT 1 FROM tasks WHERE node_id=? AND parameters_digest=? LIMIT 1"

RUN = 1
NODE = 7
OTHER_NODE = 8
SUPERLINK_ID = "0123456789abcdef"

MODEL = "3f" * 32  # sent with the fit and the evaluate task; held by the run
UPDATE = "a7" * 32  # the fit result's weights, uploaded by the node; held by the run
OPEN_MODEL = "c4" * 32  # sent with a delivered, still unanswered evaluate task
FAILED_MODEL = "5e" * 32  # sent with a fit task that failed
UNUSED = "90" * 32  # uploaded, never used
SIZES = {MODEL: 1234, UPDATE: 1234, OPEN_MODEL: 2048, FAILED_MODEL: 512, UNUSED: 99}

FIT_CONFIG_JSON = '{"epochs":2,"lr":0.5,"tag":"r1","seed":{"__bytes_base64__":"AQI="}}'
FIT_CONFIG: Config = {"epochs": 2, "lr": 0.5, "tag": "r1", "seed": b"\x01\x02"}
FIT_METRICS_JSON = '{"acc":0.75,"n":3,"ok":true,"who":"me"}'
FIT_METRICS = {"acc": 0.75, "n": 3, "ok": True, "who": "me"}
FAILURE = "ClientApp raised ValueError: boom"


def write_schema_1(path: Path, fit_config: str = FIT_CONFIG_JSON, owner: bool = True) -> None:
    """A schema-1 database with one run of every kind of task and result."""
    tasks = [
        # task_id, run_id, node_id, kind, digest, size, config, status, created_at
        ("fit-task", RUN, NODE, "fit", MODEL, SIZES[MODEL], fit_config, "answered", 2.0),
        ("evaluate-task", RUN, NODE, "evaluate", MODEL, SIZES[MODEL], "{}", "answered", 3.0),
        ("open-task", RUN, NODE, "evaluate", OPEN_MODEL, 2048, '{"k":1}', "delivered", 4.0),
        ("failed-task", RUN, NODE, "fit", FAILED_MODEL, 512, "{}", "answered", 5.0),
        ("query-task", RUN, NODE, "get_parameters", None, None, '{"x":"y"}', "pending", 6.0),
    ]
    results = [
        # task_id, run_id, node_id, kind, digest, size, num_examples, loss, metrics, error, at
        ("fit-task", RUN, NODE, "fit", UPDATE, 1234, 128, 0.0, FIT_METRICS_JSON, "", 2.5),
        ("evaluate-task", RUN, NODE, "evaluate", None, None, 64, 0.25, '{"acc":0.5}', "", 3.5),
        ("failed-task", RUN, NODE, "fit", None, None, 0, 0.0, "{}", FAILURE, 5.5),
    ]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(SCHEMA_1)
        if owner:
            db.execute(OWNER_COLUMN)
        db.execute("INSERT INTO meta VALUES ('superlink_id', ?)", (SUPERLINK_ID,))
        db.execute(
            "INSERT INTO runs (run_id, app, run_config, status, created_at) "
            "VALUES (?, 'app:main', '{\"lr\":0.1}', 'running', 1.0)",
            (RUN,),
        )
        db.execute("INSERT INTO nodes VALUES (?, 'online', 1.0, 1.5, NULL)", (NODE,))
        db.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tasks)
        db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", results)
        db.executemany(
            "INSERT INTO blobs VALUES (?, ?, 1.0)", [(d, size) for d, size in SIZES.items()]
        )
        db.executemany("INSERT INTO blob_holds VALUES (?, ?)", [(MODEL, RUN), (UPDATE, RUN)])
        db.executemany(
            "INSERT INTO blob_uploads VALUES (?, ?, ?)", [(NODE, RUN, UPDATE), (NODE, RUN, UNUSED)]
        )


def old_answers(path: Path) -> tuple[dict[str, bool], dict[tuple[int, str], bool]]:
    """blob_in_use and node_can_read_blob as schema 1 answered them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        in_use = {d: bool(db.execute(OLD_BLOB_IN_USE, (d, d)).fetchall()) for d in SIZES}
        readable = {
            (node, d): bool(db.execute(OLD_NODE_CAN_READ_BLOB, (node, d)).fetchall())
            for node in (NODE, OTHER_NODE)
            for d in SIZES
        }
    return in_use, readable


def schema_of(path: Path) -> tuple[int, set[str]]:
    """user_version and table names."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return version, tables


def dump(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        return [f"user_version={version}", *db.iterdump()]


@pytest.fixture(params=[True, False], ids=["with-owner", "before-owner"])
def old_db(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "superlink.db"
    write_schema_1(path, owner=request.param)
    return path


def test_pending_work_stays_pending_and_answered_work_keeps_its_reply(old_db: Path) -> None:
    state = SqliteState(old_db)
    try:
        assert state.superlink_id() == SUPERLINK_ID
        run = state.get_run(RUN)
        assert run is not None
        assert (run.app, run.run_config, run.status) == ("app:main", {"lr": 0.1}, "running")
        assert state.run_owner(RUN) == ""

        [pending] = state.pending_messages(NODE)
        assert pending.message_id == "query-task"
        assert pending.message_type == "query.get_parameters"
        assert (pending.run_id, pending.node_id, pending.created_at) == (RUN, NODE, 6.0)
        assert pending.content == fit_evaluate.instruction(None, {"x": "y"})
        assert {m.message_id for m in state.open_messages(NODE)} == {"open-task", "query-task"}
        assert state.node_has_open_message(NODE, RUN)
        assert state.model_size_for(NODE, RUN) == SIZES[OPEN_MODEL]

        fit = state.get_message("fit-task")
        assert fit is not None
        assert fit.message_type == TRAIN
        assert fit.content == fit_evaluate.instruction(BlobRef(MODEL, SIZES[MODEL]), FIT_CONFIG)
        evaluate = state.get_message("evaluate-task")
        assert evaluate is not None
        assert evaluate.message_type == EVALUATE
        assert evaluate.content == fit_evaluate.instruction(BlobRef(MODEL, SIZES[MODEL]), {})

        replies = {r.reply_to: r for r in state.get_replies(["fit-task", "evaluate-task"])}
        fit_reply = replies["fit-task"]
        assert fit_reply.ok and fit_reply.is_reply
        assert (fit_reply.run_id, fit_reply.node_id, fit_reply.message_type) == (RUN, NODE, TRAIN)
        assert fit_reply.created_at == 2.5
        assert fit_reply.content.arrays == {"arrays": BlobRef(UPDATE, 1234)}
        assert fit_evaluate.num_examples(fit_reply.content) == 128
        assert fit_evaluate.metrics_of(fit_reply.content) == FIT_METRICS

        evaluate_reply = replies["evaluate-task"]
        assert evaluate_reply.ok and evaluate_reply.message_type == EVALUATE
        assert evaluate_reply.content.arrays == {}
        assert fit_evaluate.loss_of(evaluate_reply.content) == 0.25
        assert fit_evaluate.num_examples(evaluate_reply.content) == 64
        assert fit_evaluate.metrics_of(evaluate_reply.content) == {"acc": 0.5}

        [failed] = state.get_replies(["failed-task"])
        assert not failed.ok
        assert failed.error == FAILURE
        assert fit_evaluate.model_of(failed.content) is None

        assert state.get_replies(["query-task", "open-task"]) == []
        assert len({r.message_id for r in replies.values()} | {failed.message_id}) == 3
        # an answered instruction stays answered: the first reply still wins
        assert state.add_reply(state.get_message("fit-task").reply(error="late")) is False  # type: ignore[union-attr]
    finally:
        state.close()


def test_blobs_answer_as_before(old_db: Path) -> None:
    in_use_before, readable_before = old_answers(old_db)
    assert in_use_before == {
        MODEL: True,
        UPDATE: True,
        OPEN_MODEL: True,
        FAILED_MODEL: False,
        UNUSED: False,
    }
    assert readable_before[(NODE, MODEL)] and not readable_before[(OTHER_NODE, MODEL)]

    state = SqliteState(old_db)
    try:
        assert state.node_can_read_blob(NODE, MODEL)
        assert {d: state.blob_in_use(d) for d in SIZES} == in_use_before
        assert {
            (node, d): state.node_can_read_blob(node, d) for (node, d) in readable_before
        } == readable_before
        assert all(state.blob_size(d) == size for d, size in SIZES.items())
        assert state.node_uploaded(NODE, RUN, UPDATE)
        assert state.node_stored_bytes(NODE, RUN) == SIZES[UPDATE]  # UNUSED is not held
        assert sorted(state.unheld_blobs(created_before=2.0)) == sorted(
            d for d in SIZES if d not in (MODEL, UPDATE)
        )
        assert state.blob_owners(MODEL) == {""}
    finally:
        state.close()


def test_the_migrated_database_is_of_this_schema_and_opening_it_again_changes_nothing(
    old_db: Path,
) -> None:
    assert schema_of(old_db)[0] == 1
    SqliteState(old_db).close()

    version, tables = schema_of(old_db)
    assert version == SCHEMA_VERSION == 3
    assert {"messages", "message_blobs", "replies"} <= tables
    assert not {"tasks", "results"} & tables
    migrated = dump(old_db)

    state = SqliteState(old_db)
    try:
        [reply] = state.get_replies(["fit-task"])
        assert fit_evaluate.num_examples(reply.content) == 128
    finally:
        state.close()
    assert dump(old_db) == migrated


def test_a_migration_that_fails_part_way_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "superlink.db"
    write_schema_1(path, fit_config="{not json")
    before = dump(path)

    with pytest.raises(ConfigurationError) as info:
        SqliteState(path)

    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "could not be migrated from schema 1" in message
    assert "Traceback" not in message
    version, tables = schema_of(path)
    assert version == 1
    assert {"tasks", "results"} <= tables
    assert not {"messages", "message_blobs", "replies"} & tables
    assert dump(path) == before
    # nothing was left open: a second start says the same, not "in use by another SuperLink"
    with pytest.raises(ConfigurationError, match="could not be migrated"):
        SqliteState(path)


# Test data: schema 2 as Pollen wrote it (``SCHEMA`` of sqlite_schema.py with SCHEMA_VERSION = 2).
SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    key_fingerprint TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    run_config TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    finished_at REAL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    node_id INTEGER NOT NULL,
    message_type TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_node ON messages(node_id, status);
CREATE TABLE IF NOT EXISTS message_blobs (
    message_id TEXT NOT NULL REFERENCES messages(message_id),
    digest TEXT NOT NULL,
    PRIMARY KEY (message_id, digest)
);
CREATE INDEX IF NOT EXISTS message_blobs_by_digest ON message_blobs(digest);
CREATE TABLE IF NOT EXISTS replies (
    reply_to TEXT PRIMARY KEY REFERENCES messages(message_id),
    message_id TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    message_type TEXT NOT NULL,
    content TEXT NOT NULL,
    error TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    api TEXT NOT NULL,
    event TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    peer TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS blob_holds (
    digest TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    PRIMARY KEY (digest, run_id)
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_uploads (
    node_id INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (node_id, run_id, digest)
);
CREATE INDEX IF NOT EXISTS blob_uploads_by_digest ON blob_uploads(digest);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
PRAGMA user_version=2;
"""


EMPTY = records_to_json(Records())


def write_schema_2(path: Path) -> None:
    """A schema-2 database: a running and a failed run, a node with a done and a failed
    task."""
    runs = [
        # run_id, app, run_config, status, message, created_at, finished_at, owner
        (1, "app:main", '{"lr":0.1}', "running", "", 1.0, None, "SHA256:op"),
        (2, "app:other", "{}", "failed", "too few nodes", 2.0, 3.0, ""),
    ]
    messages = [
        ("done", 1, NODE, TRAIN, EMPTY, "answered", 4.0),
        ("broke", 1, NODE, TRAIN, EMPTY, "answered", 5.0),
    ]
    replies = [
        ("done", "r1", 1, NODE, TRAIN, EMPTY, "", 4.5),
        ("broke", "r2", 1, NODE, TRAIN, EMPTY, FAILURE, 5.5),
    ]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(SCHEMA_2)
        db.execute("INSERT INTO meta VALUES ('superlink_id', ?)", (SUPERLINK_ID,))
        db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", runs)
        db.execute("INSERT INTO nodes VALUES (?, 'offline', 1.0, 6.0, 'SHA256:node')", (NODE,))
        db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", messages)
        db.executemany("INSERT INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)", replies)


def test_a_schema_2_database_gains_the_round_reports_and_answers_the_same(
    tmp_path: Path,
) -> None:
    path = tmp_path / "superlink.db"
    write_schema_2(path)
    assert schema_of(path)[0] == 2

    state = SqliteState(path)
    try:
        running = state.get_run(1)
        assert running is not None
        assert (running.app, running.run_config, running.status) == (
            "app:main",
            {"lr": 0.1},
            "running",
        )
        assert state.run_owner(1) == "SHA256:op"
        [done] = state.get_replies(["done"])
        assert done.ok and done.created_at == 4.5
        # the runs as pollen runs ls lists them: nothing reported yet
        runs = state.list_runs()
        assert [(r.run_id, r.status, r.rounds_done, r.num_rounds) for r in runs] == [
            (1, "running", 0, 0),
            (2, "failed", 0, 0),
        ]
        assert [r.run_id for r in state.list_runs(owner="SHA256:op")] == [1]
        # each earlier run's log says what the earlier Pollen knew of it
        assert [line.text for line in state.run_log(1)] == ["run 1 created (app:main)"]
        assert [(line.at, line.text) for line in state.run_log(2)] == [
            (2.0, "run 2 created (app:other)"),
            (3.0, "run 2 failed: too few nodes"),
        ]
        [node] = state.node_summaries()
        assert (node.fingerprint, node.status, node.tasks_done, node.tasks_failed) == (
            "SHA256:node",
            "offline",
            1,
            1,
        )
        # the migrated run takes reports
        state.set_run_plan(1, 3, "/runs/1")
        state.report_round(1, RoundReport(1, '{"round": 1}', 7.0), "round 1/3")
        details = state.run_details(1)
        assert details is not None
        assert (details.output_dir, details.summary.rounds_done) == ("/runs/1", 1)
    finally:
        state.close()

    version, tables = schema_of(path)
    assert version == SCHEMA_VERSION
    assert {"run_rounds", "run_log"} <= tables
    migrated = dump(path)
    SqliteState(path).close()
    assert dump(path) == migrated  # opening it again changes nothing


def test_a_migration_from_schema_2_that_fails_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "superlink.db"
    write_schema_2(path)
    before = dump(path)

    def fail_at_the_second_run(run_id: int, app: str) -> str:
        if run_id == 2:
            raise ValueError("a run it cannot take")
        return f"run {run_id} created"

    # part way: columns added, tables created, the first run's line written
    monkeypatch.setattr(sqlite_schema, "created_line", fail_at_the_second_run)

    with pytest.raises(ConfigurationError, match="could not be migrated from schema 2") as info:
        SqliteState(path)

    assert "\n" not in str(info.value)
    assert dump(path) == before
    assert schema_of(path)[0] == 2
