"""What ServerApps report of their runs, and the runs' logs, in SQLite: a part of
`SqliteState`, kept in its own module."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from pollen.records.config_json import config_from_json
from pollen.records.run_reports import (
    NodeSummary,
    RoundReport,
    RunDetails,
    RunLogLine,
    RunSummary,
)

_SUMMARY = (
    "SELECT run_id, app, status, owner, created_at, finished_at, "
    "COALESCE((SELECT MAX(round) FROM run_rounds WHERE run_rounds.run_id = runs.run_id), 0), "
    "num_rounds, message FROM runs"
)


def _summary(row: sqlite3.Row | tuple[Any, ...]) -> RunSummary:
    run_id, app, status, owner, created, finished, done, num_rounds, message = row
    return RunSummary(run_id, app, status, owner, created, finished, done, num_rounds, message)


class SqliteRunReports:
    """Runs' reported rounds and log lines; mixed into `SqliteState`, whose connection
    and transactions it uses."""

    _db: sqlite3.Connection

    def _transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _log(self, run_id: int, now: float, text: str) -> None:
        self._db.execute(
            "INSERT INTO run_log (run_id, at, text) VALUES (?, ?, ?)", (run_id, now, text)
        )

    def list_runs(self, owner: str | None = None) -> list[RunSummary]:
        rows = self._db.execute(
            f"{_SUMMARY} WHERE (? IS NULL OR owner = ?) ORDER BY run_id", (owner, owner)
        ).fetchall()
        return [_summary(row) for row in rows]

    def run_details(self, run_id: int) -> RunDetails | None:
        row = self._db.execute(f"{_SUMMARY} WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        config, output_dir = self._db.execute(
            "SELECT run_config, output_dir FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        rounds = self._db.execute(
            "SELECT round, record, reported_at FROM run_rounds WHERE run_id = ? ORDER BY round",
            (run_id,),
        ).fetchall()
        reports = [RoundReport(*r) for r in rounds]
        return RunDetails(_summary(row), config_from_json(config), output_dir, reports)

    def set_run_plan(self, run_id: int, num_rounds: int, output_dir: str) -> None:
        self._db.execute(
            "UPDATE runs SET num_rounds = ?, output_dir = ? WHERE run_id = ?",
            (num_rounds, output_dir, run_id),
        )

    def report_round(self, run_id: int, report: RoundReport, line: str) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO run_rounds VALUES (?, ?, ?, ?)",
                (run_id, report.round, report.record, report.reported_at),
            )
            self._log(run_id, report.reported_at, line)

    def run_log(self, run_id: int, after: int = 0) -> list[RunLogLine]:
        rows = self._db.execute(
            "SELECT line_id, at, text FROM run_log WHERE run_id = ? AND line_id > ? "
            "ORDER BY line_id",
            (run_id, after),
        ).fetchall()
        return [RunLogLine(*row) for row in rows]

    def node_summaries(self) -> list[NodeSummary]:
        rows = self._db.execute(
            "SELECT node_id, COALESCE(key_fingerprint, ''), status, last_seen, "
            "(SELECT COUNT(*) FROM replies WHERE replies.node_id = nodes.node_id "
            "AND error = ''), "
            "(SELECT COUNT(*) FROM replies WHERE replies.node_id = nodes.node_id "
            "AND error != '') FROM nodes ORDER BY node_id"
        ).fetchall()
        return [NodeSummary(*row) for row in rows]

    def _forget_reports(self, run_id: int) -> None:
        """Delete the run's reports and log (the run is being deleted)."""
        self._db.execute("DELETE FROM run_rounds WHERE run_id = ?", (run_id,))
        self._db.execute("DELETE FROM run_log WHERE run_id = ?", (run_id,))
