"""`State` in one SQLite file (WAL mode): the SuperLink's embedded default."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import IO, Any, cast

from pollen.errors import ConfigurationError, StorageError, StorageFull
from pollen.records.config_json import (
    config_from_json,
    config_to_json,
    records_from_json,
    records_to_json,
)
from pollen.records.messages import Message, RunInfo
from pollen.records.typing import UserConfig
from pollen.superlink.sqlite_run_reports import SqliteRunReports
from pollen.superlink.sqlite_schema import SCHEMA_VERSION, create_or_migrate
from pollen.superlink.state import (
    AuditEvent,
    NodeRecord,
    NodeStatus,
    created_line,
    ended_line,
    resumed_line,
)
from pollen.superlink.storage_faults import as_storage_faults, disk_full, unwritable

_SQLITE_FULL = 13
_SQLITE_UNWRITABLE = {8, 10, 14}  # READONLY, IOERR, CANTOPEN (a folder it cannot write)


def _storage_fault(exc: sqlite3.OperationalError, where: Path) -> StorageError | None:
    """The storage fault behind an SQLite error, or None when it is something else."""
    code = exc.sqlite_errorcode & 0xFF  # the primary code of an extended one
    if code == _SQLITE_FULL:
        return disk_full(where, str(exc))
    if code in _SQLITE_UNWRITABLE:
        return unwritable(where, str(exc))
    return None


class _Connection(sqlite3.Connection):
    """An SQLite connection whose refused writes say which file and why."""

    path = Path()

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self._checked(sqlite3.Connection.execute, sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        return self._checked(sqlite3.Connection.executemany, sql, parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        return self._checked(
            lambda db, script, _: sqlite3.Connection.executescript(db, script), sql_script, None
        )

    def _checked(self, call: Any, sql: str, parameters: Any) -> sqlite3.Cursor:
        try:
            return cast(sqlite3.Cursor, call(self, sql, parameters))
        except sqlite3.OperationalError as exc:
            fault = _storage_fault(exc, self.path)
            if fault is None:
                raise
            raise fault from exc


def _unwritable_at_start(path: Path, detail: str) -> ConfigurationError:
    return ConfigurationError(
        f"--database {path}: cannot write there ({detail}); make the file and its folder "
        "writable, or choose another --database"
    )


def _full_at_start(path: Path, detail: str) -> ConfigurationError:
    return ConfigurationError(
        f"--database {path}: the disk is full ({detail}); free space there, "
        "or choose another --database"
    )


def _refused_at_start(path: Path, fault: StorageError) -> ConfigurationError:
    """The one-line refusal for a storage fault met while opening the database."""
    cause = fault.__cause__
    detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    refusal = _full_at_start if isinstance(fault, StorageFull) else _unwritable_at_start
    return refusal(path, detail)


def _damaged(path: Path, detail: str) -> ConfigurationError:
    return ConfigurationError(
        f"--database {path} is damaged ({detail}); restore it from a backup, "
        "or move it aside and start with a new file"
    )


def _lock_exclusively(path: Path) -> IO[str]:
    """One SuperLink per database: a second one would hand out the same messages twice."""
    lock = path.with_name(path.name + ".lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise ConfigurationError(
            f"--database {path} is in use by another SuperLink ({owner}); "
            "stop it, or give this one its own --database"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}")
    lock.flush()
    return lock


class SqliteState(SqliteRunReports):
    """SQLite-backed `State`. Use from one thread (the SuperLink's event loop)."""

    _db: _Connection

    def __init__(self, path: Path) -> None:
        self._statuses: dict[int, NodeStatus] = {}
        if not path.parent.is_dir():
            raise ConfigurationError(
                f"--database {path}: directory {path.parent} does not exist; create it first"
            )
        try:
            with as_storage_faults(path):
                self._lock = _lock_exclusively(path)
        except StorageError as exc:
            raise _refused_at_start(path, exc) from None
        except OSError as exc:
            raise _unwritable_at_start(path, exc.strerror or str(exc)) from None
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:
            self._close_after_failed_start()
            if "malformed" in str(exc):  # a database, damaged
                raise _damaged(path, str(exc)) from None
            raise ConfigurationError(
                f"--database {path}: not a usable SQLite database ({exc}); "
                "point --database at a new file or a Pollen state file"
            ) from exc
        except StorageError as exc:
            self._close_after_failed_start()
            raise _refused_at_start(path, exc) from None
        except ConfigurationError:
            self._close_after_failed_start()
            raise

    def _close_after_failed_start(self) -> None:
        if hasattr(self, "_db"):
            self._db.close()
        self._lock.close()

    def _open(self, path: Path) -> _Connection:
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, factory=_Connection
        )
        db.path = path
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            first = [line for line in str(verdict).splitlines() if not line.startswith("***")]
            raise _damaged(path, first[0] if first else "quick_check failed")
        self._check_version(path)
        create_or_migrate(db, path)
        # Made once with the database: run ids are unique only within one database.
        db.execute("INSERT OR IGNORE INTO meta VALUES ('superlink_id', ?)", (secrets.token_hex(8),))
        return db

    def superlink_id(self) -> str:
        (row,) = self._rows("SELECT value FROM meta WHERE key='superlink_id'")
        return str(row[0])

    def _check_version(self, path: Path) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"--database {path}: written by a newer Pollen (schema {version}, this one "
                f"reads {SCHEMA_VERSION}); upgrade Pollen or use another --database"
            )

    def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        cursor = self._db.execute(sql, args)
        return cast(list[sqlite3.Row], cursor.fetchall())

    # nodes
    def add_node(self, node_id: int, now: float, key_fingerprint: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO nodes VALUES (?, 'online', ?, ?, ?) ON CONFLICT(node_id) "
            "DO UPDATE SET status='online', last_seen=excluded.last_seen",
            (node_id, now, now, key_fingerprint),
        )
        self._statuses[node_id] = "online"

    def node_status(self, node_id: int) -> NodeStatus | None:
        """The node's status (None: never registered), from memory once read: every
        Fleet request asks, and only this object writes it."""
        if node_id not in self._statuses:
            rows = self._rows("SELECT status FROM nodes WHERE node_id=?", node_id)
            if not rows:
                return None
            self._statuses[node_id] = rows[0][0]
        return self._statuses[node_id]

    def node_for_key(self, key_fingerprint: str) -> int | None:
        rows = self._rows("SELECT node_id FROM nodes WHERE key_fingerprint=?", key_fingerprint)
        return int(rows[0][0]) if rows else None

    def get_node(self, node_id: int) -> NodeRecord | None:
        rows = self._rows("SELECT * FROM nodes WHERE node_id=?", node_id)
        if not rows:
            return None
        node_id_, status, registered_at, last_seen, _ = rows[0]
        return NodeRecord(node_id_, status, registered_at, last_seen)

    def set_node_status(self, node_id: int, status: NodeStatus, now: float) -> None:
        self._db.execute(
            "UPDATE nodes SET status=?, last_seen=? WHERE node_id=?", (status, now, node_id)
        )
        if node_id in self._statuses:
            self._statuses[node_id] = status

    def list_nodes(self, status: NodeStatus) -> list[int]:
        return [r[0] for r in self._rows("SELECT node_id FROM nodes WHERE status=?", status)]

    # runs
    def create_run(self, app: str, run_config: UserConfig, now: float, owner: str = "") -> int:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO runs (app, run_config, status, created_at, owner) "
                "VALUES (?, ?, 'running', ?, ?)",
                (app, config_to_json(run_config), now, owner),
            )
            run_id = int(cursor.lastrowid or 0)
            self._log(run_id, now, created_line(run_id, app))
        return run_id

    def run_owner(self, run_id: int) -> str | None:
        rows = self._rows("SELECT owner FROM runs WHERE run_id=?", run_id)
        return str(rows[0][0]) if rows else None

    def get_run(self, run_id: int) -> RunInfo | None:
        rows = self._rows("SELECT run_id, app, run_config, status FROM runs WHERE run_id=?", run_id)
        if not rows:
            return None
        run_id_, app, run_config, status = rows[0]
        return RunInfo(run_id_, app, config_from_json(run_config), status)

    def prune_runs(self, finished_before: float, owner: str | None = None) -> list[int]:
        """Delete runs that ended before ``finished_before`` (of ``owner`` only, unless
        None), with their messages."""
        ids = [
            r[0]
            for r in self._rows(
                "SELECT run_id FROM runs WHERE status != 'running' AND finished_at < ? "
                "AND (? IS NULL OR owner = ?)",
                finished_before,
                owner,
                owner,
            )
        ]
        with self._transaction():
            for run_id in ids:
                self._db.execute("DELETE FROM replies WHERE run_id=?", (run_id,))
                self._db.execute(
                    "DELETE FROM message_blobs WHERE message_id IN "
                    "(SELECT message_id FROM messages WHERE run_id=?)",
                    (run_id,),
                )
                self._db.execute("DELETE FROM messages WHERE run_id=?", (run_id,))
                self._db.execute("DELETE FROM blob_holds WHERE run_id=?", (run_id,))
                self._db.execute("DELETE FROM blob_uploads WHERE run_id=?", (run_id,))
                self._forget_reports(run_id)
                self._db.execute("DELETE FROM runs WHERE run_id=?", (run_id,))
        return ids

    def _last_activity(self, run_id: int) -> float:
        """When the run was created, or last got an instruction or a reply."""
        (latest,) = self._rows(
            "SELECT MAX(t) FROM (SELECT created_at AS t FROM runs WHERE run_id=? UNION ALL "
            "SELECT created_at FROM messages WHERE run_id=? UNION ALL "
            "SELECT created_at FROM replies WHERE run_id=?)",
            run_id,
            run_id,
            run_id,
        )[0]
        return float(latest or 0.0)

    def idle_running_runs(self, idle_before: float, owner: str | None = None) -> list[int]:
        """Running runs (of ``owner`` only, unless None) with no message since
        ``idle_before``."""
        running = [
            r[0]
            for r in self._rows(
                "SELECT run_id FROM runs WHERE status='running' AND (? IS NULL OR owner = ?)",
                owner,
                owner,
            )
        ]
        return [r for r in running if self._last_activity(r) < idle_before]

    def abandon_run(self, run_id: int, message: str) -> None:
        """Mark a running run failed as of its last activity (so pruning takes it)."""
        self.finish_run(run_id, "failed", message, self._last_activity(run_id))

    def reopen_run(self, run_id: int, now: float) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE runs SET status='running', message='', finished_at=NULL WHERE run_id=?",
                (run_id,),
            )
            self._log(run_id, now, resumed_line(run_id))

    def finish_run(self, run_id: int, status: str, message: str, now: float) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE runs SET status=?, message=?, finished_at=? WHERE run_id=?",
                (status, message, now, run_id),
            )
            self._log(run_id, now, ended_line(run_id, status, message))

    # instructions
    def add_messages(self, messages: Sequence[Message]) -> None:
        rows = [
            (
                m.message_id,
                m.run_id,
                m.node_id,
                m.message_type,
                records_to_json(m.content),
                "pending",
                m.created_at,
            )
            for m in messages
        ]
        blobs = {(m.message_id, ref.digest) for m in messages for ref in m.content.blobs()}
        with self._transaction():
            self._db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.executemany("INSERT INTO message_blobs VALUES (?, ?)", sorted(blobs))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing: a write the disk refuses leaves the state as it was."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @staticmethod
    def _instruction(row: sqlite3.Row) -> Message:
        message_id, run_id, node_id, message_type, content, _status, created_at = row
        return Message(
            run_id,
            node_id,
            message_type,
            records_from_json(content),
            message_id=message_id,
            created_at=created_at,
        )

    def get_message(self, message_id: str) -> Message | None:
        rows = self._rows("SELECT * FROM messages WHERE message_id=?", message_id)
        return self._instruction(rows[0]) if rows else None

    def pending_messages(self, node_id: int) -> list[Message]:
        rows = self._rows(
            "SELECT messages.* FROM messages JOIN runs USING (run_id) WHERE messages.node_id=? "
            "AND messages.status='pending' AND runs.status='running' ORDER BY messages.created_at",
            node_id,
        )
        return [self._instruction(r) for r in rows]

    def mark_delivered(self, message_id: str) -> bool:
        """Mark a pending instruction delivered; False when it is no longer pending."""
        cursor = self._db.execute(
            "UPDATE messages SET status='delivered' WHERE message_id=? AND status='pending'",
            (message_id,),
        )
        return cursor.rowcount > 0

    def requeue_delivered(self, node_id: int) -> None:
        self._db.execute(
            "UPDATE messages SET status='pending' WHERE node_id=? AND status='delivered'",
            (node_id,),
        )

    def _open_messages(self, where: str, *args: Any) -> list[Message]:
        rows = self._rows(
            f"SELECT * FROM messages WHERE status IN ('pending', 'delivered') AND {where}", *args
        )
        return [self._instruction(r) for r in rows]

    def open_messages_created_before(self, created_before: float) -> list[Message]:
        return self._open_messages("created_at < ?", created_before)

    def open_messages_of_run(self, run_id: int) -> list[Message]:
        return self._open_messages("run_id=?", run_id)

    def open_messages(self, node_id: int) -> list[Message]:
        return self._open_messages("node_id=?", node_id)

    # replies
    def add_reply(self, reply: Message) -> bool:
        """Store ``reply``; False when its instruction already has one (the first wins)."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE messages SET status='answered' WHERE message_id=? AND status != 'answered'",
                (reply.reply_to,),
            )
            if cursor.rowcount == 0:
                return False
            self._db.execute(
                "INSERT INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    reply.reply_to,
                    reply.message_id,
                    reply.run_id,
                    reply.node_id,
                    reply.message_type,
                    records_to_json(reply.content),
                    reply.error,
                    reply.created_at,
                ),
            )
        return True

    def get_replies(self, message_ids: Iterable[str]) -> list[Message]:
        """The stored replies to the instructions ``message_ids``."""
        ids = list(message_ids)
        replies: list[Message] = []
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            for row in self._rows(f"SELECT * FROM replies WHERE reply_to IN ({marks})", *batch):
                reply_to, message_id, run_id, node_id, message_type, content, error, at = row
                replies.append(
                    Message(
                        run_id,
                        node_id,
                        message_type,
                        records_from_json(content),
                        reply_to=reply_to,
                        error=error,
                        message_id=message_id,
                        created_at=at,
                    )
                )
        return replies

    def node_has_run(self, node_id: int, run_id: int) -> bool:
        return bool(
            self._rows(
                "SELECT 1 FROM messages WHERE node_id=? AND run_id=? LIMIT 1", node_id, run_id
            )
        )

    def node_can_read_blob(self, node_id: int, digest: str) -> bool:
        return bool(
            self._rows(
                "SELECT 1 FROM message_blobs JOIN messages USING (message_id) "
                "WHERE message_blobs.digest=? AND messages.node_id=? LIMIT 1",
                digest,
                node_id,
            )
        )

    # audit
    def add_audit(self, event: AuditEvent) -> int:
        cursor = self._db.execute(
            "INSERT INTO audit (at, api, event, fingerprint, peer, reason, count) "
            "VALUES (?,?,?,?,?,?,?)",
            astuple(event),
        )
        return int(cursor.lastrowid or 0)

    def set_audit_count(self, row_id: int, count: int) -> None:
        self._db.execute("UPDATE audit SET count=? WHERE id=?", (count, row_id))

    def list_audit(self, limit: int = 1000) -> list[AuditEvent]:
        rows = self._rows(
            "SELECT at, api, event, fingerprint, peer, reason, count FROM audit "
            "ORDER BY id DESC LIMIT ?",
            limit,
        )
        return [AuditEvent(*row) for row in reversed(rows)]

    # blobs
    def add_blob(self, digest: str, size: int, now: float) -> None:
        # A blob stored again counts as new, so the orphan sweep gives it its grace period.
        self._db.execute(
            "INSERT INTO blobs VALUES (?, ?, ?) ON CONFLICT(digest) "
            "DO UPDATE SET created_at=excluded.created_at",
            (digest, size, now),
        )

    def has_blob(self, digest: str) -> bool:
        return bool(self._rows("SELECT 1 FROM blobs WHERE digest=?", digest))

    def blob_size(self, digest: str) -> int | None:
        rows = self._rows("SELECT size FROM blobs WHERE digest=?", digest)
        return int(rows[0][0]) if rows else None

    def add_upload(self, digest: str, node_id: int, run_id: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO blob_uploads VALUES (?, ?, ?)", (node_id, run_id, digest)
        )

    def node_uploaded(self, node_id: int, run_id: int, digest: str) -> bool:
        return bool(
            self._rows(
                "SELECT 1 FROM blob_uploads WHERE node_id=? AND run_id=? AND digest=?",
                node_id,
                run_id,
                digest,
            )
        )

    def node_stored_bytes(self, node_id: int, run_id: int) -> int:
        (row,) = self._rows(
            "SELECT COALESCE(SUM(blobs.size), 0) FROM blob_uploads JOIN blob_holds "
            "USING (digest, run_id) JOIN blobs USING (digest) "
            "WHERE blob_uploads.node_id=? AND blob_uploads.run_id=?",
            node_id,
            run_id,
        )
        return int(row[0])

    def node_has_open_message(self, node_id: int, run_id: int) -> bool:
        return bool(
            self._rows(
                "SELECT 1 FROM messages WHERE node_id=? AND status IN ('pending', 'delivered') "
                "AND run_id=? LIMIT 1",
                node_id,
                run_id,
            )
        )

    def model_size_for(self, node_id: int, run_id: int) -> int:
        (row,) = self._rows(
            "SELECT COALESCE(MAX(blobs.size), 0) FROM messages JOIN message_blobs "
            "USING (message_id) JOIN blobs USING (digest) WHERE messages.node_id=? "
            "AND messages.status IN ('pending', 'delivered') AND messages.run_id=?",
            node_id,
            run_id,
        )
        return int(row[0])

    def hold_blobs(self, run_id: int, digests: Iterable[str]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO blob_holds VALUES (?, ?)", [(d, run_id) for d in digests]
        )

    def release_blobs(
        self, run_id: int, digests: Iterable[str] | None = None, keep: Iterable[str] = ()
    ) -> list[str]:
        """Drop ``run_id``'s holds (all of them but ``keep`` when ``digests`` is None);
        return those digests."""
        # Only what this run held: releasing cannot touch another run's blobs.
        held = {r[0] for r in self._rows("SELECT digest FROM blob_holds WHERE run_id=?", run_id)}
        released = (held if digests is None else held & set(digests)) - set(keep)
        self._db.executemany(
            "DELETE FROM blob_holds WHERE digest=? AND run_id=?", [(d, run_id) for d in released]
        )
        return sorted(released)

    def blob_owners(self, digest: str) -> set[str]:
        """The owners of the runs that hold ``digest``."""
        rows = self._rows(
            "SELECT DISTINCT owner FROM blob_holds JOIN runs USING (run_id) WHERE digest=?", digest
        )
        return {str(r[0]) for r in rows}

    def blob_in_use(self, digest: str) -> bool:
        """Held by a run, or named by an open instruction of a running run."""
        return bool(
            self._rows(
                "SELECT 1 FROM blob_holds WHERE digest=? UNION ALL "
                "SELECT 1 FROM message_blobs JOIN messages USING (message_id) JOIN runs "
                "USING (run_id) WHERE message_blobs.digest=? AND messages.status IN "
                "('pending', 'delivered') AND runs.status='running' LIMIT 1",
                digest,
                digest,
            )
        )

    def unheld_blobs(self, created_before: float) -> list[str]:
        """Blobs older than ``created_before`` that no run holds (candidates for deletion)."""
        return [
            r[0]
            for r in self._rows(
                "SELECT digest FROM blobs WHERE created_at < ? AND digest NOT IN "
                "(SELECT digest FROM blob_holds)",
                created_before,
            )
        ]

    def remove_blob(self, digest: str) -> None:
        self._db.execute("DELETE FROM blobs WHERE digest=?", (digest,))
        self._db.execute("DELETE FROM blob_uploads WHERE digest=?", (digest,))

    def close(self) -> None:
        self._db.close()
        self._lock.close()  # releases the lock

    def discard(self) -> None:
        """Close and delete the database (one that a SuperLink refused at start created).

        The lock file goes last and is released only then: no other SuperLink
        can take the files over meanwhile.
        """
        path = self._db.path
        self._db.close()
        for suffix in ("-wal", "-shm", ""):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        Path(self._lock.name).unlink(missing_ok=True)
        self._lock.close()
