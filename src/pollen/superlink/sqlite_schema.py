"""The SQLite state's tables, and the migration of a database an earlier Pollen wrote.

Schema 1 kept tasks and results with fixed fit/evaluate columns (a model digest,
``num_examples``, ``loss``); schema 2 keeps messages of records: an instruction's
or a reply's content is JSON (`records_to_json`), and ``message_blobs`` indexes
the blobs each instruction names. Schema 3 adds what ServerApps report of their
runs: ``run_rounds`` (each round's record as JSON), ``run_log`` (a line per round and
per change of a run) and, in ``runs``, ``num_rounds`` and ``output_dir``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pollen.errors import ConfigurationError, StorageError
from pollen.records import fit_evaluate
from pollen.records.config_json import config_from_json, records_to_json
from pollen.records.messages import EVALUATE, TRAIN, BlobRef, Records
from pollen.superlink.state import created_line, ended_line

SCHEMA_VERSION = 3

SCHEMA = """
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
    owner TEXT NOT NULL DEFAULT '',
    num_rounds INTEGER NOT NULL DEFAULT 0,
    output_dir TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS run_rounds (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    round INTEGER NOT NULL,
    record TEXT NOT NULL,
    reported_at REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS run_log (
    line_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    at REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_log_by_run ON run_log(run_id, line_id);
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
CREATE INDEX IF NOT EXISTS replies_by_node ON replies(node_id);
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
"""

_TYPES_OF_KINDS = {
    "get_parameters": fit_evaluate.GET_PARAMETERS,
    "fit": TRAIN,
    "evaluate": EVALUATE,
}
"""Schema 1's task kinds as message types."""


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
    return db.execute(query, (name,)).fetchone() is not None


def _add_column(db: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    """Add ``column`` to a table written before it existed."""
    if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _blob(digest: str | None, size: int | None) -> dict[str, BlobRef]:
    return {fit_evaluate.ARRAYS: BlobRef(digest, int(size or 0))} if digest else {}


def _instruction_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    task_id, run_id, node_id, kind, digest, size, config, status, created_at = row
    content = Records(_blob(digest, size), configs={fit_evaluate.CONFIG: config_from_json(config)})
    message_type = _TYPES_OF_KINDS.get(kind, kind)
    return (task_id, run_id, node_id, message_type, records_to_json(content), status, created_at)


def _reply_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    task_id, run_id, node_id, kind, digest, size, count, loss, metrics, error, created_at = row
    content: Records[BlobRef] = Records(_blob(digest, size))
    if not error and kind in ("fit", "evaluate"):
        scalars = {**config_from_json(metrics), fit_evaluate.NUM_EXAMPLES: count}
        content.metrics[fit_evaluate.METRICS] = scalars
    if not error and kind == "evaluate":
        content.metrics[fit_evaluate.EVALUATION] = {fit_evaluate.LOSS: loss}
    message_type = _TYPES_OF_KINDS.get(kind, kind)
    reply = (uuid.uuid4().hex, run_id, node_id, message_type, records_to_json(content), error)
    return (task_id, *reply, created_at)


def _converted(
    rows: list[tuple[Any, ...]], convert: Callable[[tuple[Any, ...]], tuple[Any, ...]], what: str
) -> list[tuple[Any, ...]]:
    """``rows`` converted one by one; a row that cannot be is named in the error."""
    converted = []
    for row in rows:
        try:
            converted.append(convert(row))
        except Exception as exc:
            raise ValueError(f"{what} {str(row[0])[:80]!r}: {exc}") from exc
    return converted


def _migrate_tasks_and_results(db: sqlite3.Connection) -> None:
    """Schema 1 → 2: tasks become instructions, results replies, with the same content."""
    tasks = db.execute("SELECT * FROM tasks").fetchall()
    db.executemany(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
        _converted(tasks, _instruction_row, "task"),
    )
    db.execute(
        "INSERT INTO message_blobs SELECT task_id, parameters_digest FROM tasks "
        "WHERE parameters_digest IS NOT NULL"
    )
    results = db.execute("SELECT * FROM results").fetchall()
    db.executemany(
        "INSERT INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        _converted(results, _reply_row, "result of task"),
    )
    db.execute("DROP TABLE results")
    db.execute("DROP TABLE tasks")


def _log_existing_runs(db: sqlite3.Connection) -> None:
    """Schema 2 → 3: the runs an earlier Pollen kept get the log lines it did not write
    (created, and finished or failed)."""
    runs = db.execute(
        "SELECT run_id, app, status, message, created_at, finished_at FROM runs ORDER BY run_id"
    ).fetchall()
    lines = []
    for run_id, app, status, message, created_at, finished_at in runs:
        lines.append((run_id, created_at, created_line(run_id, app)))
        if status != "running":
            lines.append((run_id, finished_at or created_at, ended_line(run_id, status, message)))
    db.executemany("INSERT INTO run_log (run_id, at, text) VALUES (?, ?, ?)", lines)


def _not_migrated(path: Path, exc: Exception, schema: int) -> ConfigurationError:
    cause = " ".join(str(exc).split())[:300] or type(exc).__name__
    return ConfigurationError(
        f"--database {path}: could not be migrated from schema {schema} ({cause}); it is left as "
        "it was: keep using it with the Pollen that wrote it, or move it aside and start "
        "with a new --database"
    )


def _migrate_step(
    step: Callable[[sqlite3.Connection], None], db: sqlite3.Connection, path: Path, schema: int
) -> None:
    """One step of a migration from ``schema``; a row it cannot take is a one-line error."""
    try:
        step(db)
    except StorageError:
        raise  # the disk refused: SqliteState says so
    except Exception as exc:  # a row that schema should not have held
        raise _not_migrated(path, exc, schema) from exc


def create_or_migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables; bring a database of an earlier schema up to this one, in one
    transaction (a migration that fails leaves the database as it was, and raises a
    `ConfigurationError` naming ``path`` and the cause)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        runs_without_log = _has_table(db, "runs") and not _has_table(db, "run_log")
        if _has_table(db, "runs"):
            _add_column(db, "runs", "owner", "TEXT NOT NULL DEFAULT ''")
            _add_column(db, "runs", "num_rounds", "INTEGER NOT NULL DEFAULT 0")
            _add_column(db, "runs", "output_dir", "TEXT NOT NULL DEFAULT ''")
        if _has_table(db, "audit"):
            _add_column(db, "audit", "count", "INTEGER NOT NULL DEFAULT 1")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        if _has_table(db, "tasks"):
            _migrate_step(_migrate_tasks_and_results, db, path, 1)
        if runs_without_log:
            _migrate_step(_log_existing_runs, db, path, 2)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
