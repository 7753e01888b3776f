"""The dashboard's pages, rendered on the server from what the State holds.

Each function takes rows already read (off the event loop, see `app`) and
returns a whole HTML page; no JavaScript is needed to read any of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pollen.records.run_reports import NodeSummary, RunDetails, RunSummary
from pollen.superlink.audit import source_of
from pollen.superlink.dashboard.html import (
    Cell,
    Markup,
    ago,
    badge,
    duration,
    facts,
    join,
    link,
    page,
    section,
    stats,
    table,
    tag,
    text,
    when,
)
from pollen.superlink.state import AuditEvent

REFUSALS = frozenset({"reject", "throttled"})
"""Audit events that are refused attempts (joins, dashboard tokens)."""

MAX_METRIC_COLUMNS = 10


def federation(nodes: Sequence[NodeSummary], runs: Sequence[RunSummary], now: float) -> str:
    online = sum(1 for n in nodes if n.status == "online")
    running = sum(1 for r in runs if r.status == "running")
    headline = stats(
        [
            ("Nodes online", f"{online} of {len(nodes)}"),
            ("Runs running", running),
            ("Runs in all", len(runs)),
        ]
    )
    node_rows = [
        (
            n.node_id,
            _fingerprint(n.fingerprint),
            badge(n.status),
            ago(n.last_seen, now),
            n.tasks_done,
            n.tasks_failed,
        )
        for n in nodes
    ]
    run_rows = [
        (
            link(f"/runs/{r.run_id}", r.run_id),
            r.app or "(unnamed)",
            badge(r.status),
            _rounds(r),
            when(r.created_at),
            _run_duration(r, now),
        )
        for r in reversed(runs)  # newest first
    ]
    content = join(
        [
            headline,
            section(
                "Nodes",
                table(
                    ["Node", "Key fingerprint", "Status", "Last seen", "Tasks done", "Failed"],
                    node_rows,
                    "No nodes have joined yet. Start a SuperNode against this SuperLink's "
                    "Fleet API and it appears here.",
                    numeric=(4, 5),
                ),
            ),
            section(
                "Runs",
                table(
                    ["Run", "App", "Status", "Round", "Started", "Duration"],
                    run_rows,
                    "No runs yet. Start one with pollen serverapp.",
                ),
            ),
        ]
    )
    return page("Federation", "/", content, "Nodes and runs of this SuperLink")


def run(details: RunDetails, now: float) -> str:
    summary = details.summary
    config_rows = [(key, _plain(value)) for key, value in sorted(details.run_config.items())]
    content = join(
        [
            section(
                "Run",
                facts(
                    [
                        ("Status", badge(summary.status)),
                        ("App", summary.app or "(unnamed)"),
                        ("Round", _rounds(summary)),
                        ("Started", when(summary.created_at)),
                        ("Finished", when(summary.finished_at)),
                        ("Duration", _run_duration(summary, now)),
                        ("Message", summary.message or None),
                        ("Outputs", details.output_dir or None),
                    ]
                ),
            ),
            section("Rounds", _rounds_table(details)),
            section(
                "Run config",
                table(["Key", "Value"], config_rows, "This run has no run config."),
            ),
        ]
    )
    return page(f"Run {summary.run_id}", "", content, summary.app)


@dataclass
class _Refusals:
    api: str
    reason: str
    fingerprint: str
    source: str
    count: int
    last: float


def security(events: Iterable[AuditEvent], now: float) -> str:
    refused: dict[tuple[str, str, str, str], _Refusals] = {}
    revoked = []
    for e in events:
        if e.event in REFUSALS:
            key = (e.api, e.reason, e.fingerprint, source_of(e.peer))
            group = refused.setdefault(key, _Refusals(*key, 0, e.at))
            group.count += e.count
            group.last = max(group.last, e.at)
        elif e.event == "revoke":
            revoked.append(e)
    refusal_rows = [
        (r.reason, r.api, _fingerprint(r.fingerprint), r.source, r.count, ago(r.last, now))
        for r in sorted(refused.values(), key=lambda r: r.last, reverse=True)
    ]
    revoke_rows = [
        (when(e.at), e.api, _fingerprint(e.fingerprint), e.reason)
        for e in sorted(revoked, key=lambda e: e.at, reverse=True)
    ]
    total = sum(r.count for r in refused.values())
    content = join(
        [
            stats([("Refused attempts", total), ("Revocations", len(revoked))]),
            section(
                "Refused joins",
                table(
                    ["Reason", "API", "Key fingerprint", "Address", "Attempts", "Last"],
                    refusal_rows,
                    "No join has been refused.",
                    numeric=(4,),
                ),
                "Joins and dashboard requests refused, from the audit trail (a malformed key "
                "shows as 'malformed', an address over its limit as '-').",
            ),
            section(
                "Revoked keys",
                table(
                    ["When", "API", "Key fingerprint", "Why"],
                    revoke_rows,
                    "No key has been revoked.",
                ),
            ),
        ]
    )
    return page("Security", "/security", content, "Refused joins and revoked keys")


def not_found(what: str) -> str:
    content = section("Not found", tag("p", what))
    return page("Not found", "", content)


def sign_in() -> str:
    content = section(
        "A token is needed",
        join(
            [
                tag(
                    "p",
                    "This dashboard is protected by the token its operator gave the SuperLink "
                    "(--dashboard-token). Open this address once with ?token=TOKEN added: "
                    "the browser then keeps a cookie for this site.",
                ),
                tag("p", "Scrapers and scripts send the header Authorization: Bearer TOKEN."),
            ]
        ),
    )
    return page("Sign in", "", content)


def _fingerprint(fingerprint: str) -> Cell:
    return tag("code", fingerprint) if fingerprint else None


def _rounds(run: RunSummary) -> str:
    if run.num_rounds:
        return f"{run.rounds_done} of {run.num_rounds}"
    return str(run.rounds_done) if run.rounds_done else "—"


def _run_duration(run: RunSummary, now: float) -> Markup:
    end = run.finished_at if run.finished_at is not None else now
    return text(duration(max(0.0, end - run.created_at)))


def _plain(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def _rounds_table(details: RunDetails) -> Markup:
    records = []
    for report in details.rounds:
        try:
            record = json.loads(report.record)
        except ValueError:
            record = {}
        records.append((report.round, record if isinstance(record, dict) else {}))
    metric_names = _metric_columns(record for _, record in records)
    headers = ["Round", "Duration", "Fit ok", "Fit failed", "Loss", *metric_names]
    rows = [
        (
            number,
            duration(float(r.get("seconds", 0.0))),
            _number(r.get("fit_results")),
            len(r.get("fit_failures") or []),
            _number(r.get("evaluate_loss", r.get("centralized_loss"))),
            *(_number(_metric(r, name)) for name in metric_names),
        )
        for number, r in records
    ]
    numeric = range(1, len(headers))
    return table(headers, rows, "No round has been reported yet.", numeric=numeric)


_METRIC_GROUPS = (
    ("evaluate_metrics", ""),
    ("fit_metrics", "fit "),
    ("centralized_metrics", "server "),
)


def _metric_columns(records: Iterable[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for group, prefix in _METRIC_GROUPS:
            values = record.get(group)
            if isinstance(values, dict):
                for key, value in values.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        names.setdefault(prefix + str(key))
    return list(names)[:MAX_METRIC_COLUMNS]


def _metric(record: dict[str, Any], column: str) -> Any:
    for group, prefix in reversed(_METRIC_GROUPS):  # the prefixed ones first
        if column.startswith(prefix):
            values = record.get(group)
            if isinstance(values, dict):
                return values.get(column[len(prefix) :])
    return None


def _number(value: Any) -> Cell:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) else f"{value:.4g}"
