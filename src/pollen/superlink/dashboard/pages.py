"""The dashboard's pages, rendered on the server from what the State holds.

Each function takes rows already read (off the event loop, see `app`) and
returns a `Page`; no JavaScript is needed to read any of them. A live page fetches
its own ``<main>`` again when an event concerns it, so this is the only rendering.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pollen.records.run_reports import NodeSummary, RunDetails, RunSummary
from pollen.superlink.dashboard import rounds as reported
from pollen.superlink.dashboard.html import (
    Cell,
    Markup,
    Page,
    ago,
    badge,
    duration,
    facts,
    join,
    link,
    section,
    size,
    stats,
    table,
    tag,
    text,
    when,
)
from pollen.superlink.dashboard.rounds import Round
from pollen.superlink.peers import peer_address, source_of
from pollen.superlink.state import AuditEvent

REFUSALS = frozenset({"reject", "throttled"})
"""Audit events that are refused attempts (joins, dashboard tokens)."""

MAX_ROUND_ROWS = 100
MAX_NODE_ROWS = 200
MAX_FAILURE_ROWS = 100
MAX_NODE_METRICS = 4


def federation(
    nodes: Sequence[NodeSummary],
    runs: Sequence[RunSummary],
    now: float,
    blob_bytes: tuple[float, float] = (0.0, 0.0),
    addresses: Mapping[int, str] | None = None,
) -> Page:
    """``blob_bytes``: bytes the SuperLink received and sent as blobs since it started;
    ``addresses``: each node's peer on its current or last stream, as gRPC names it."""
    addresses = addresses or {}
    online = sum(1 for n in nodes if n.status == "online")
    running = sum(1 for r in runs if r.status == "running")
    headline = stats(
        [
            ("Nodes online", f"{online} of {len(nodes)}"),
            ("Runs running", running),
            ("Runs in all", len(runs)),
            ("Blobs in / out", f"{size(blob_bytes[0])} / {size(blob_bytes[1])}"),
        ]
    )
    node_rows = [
        (
            n.node_id,
            _fingerprint(n.fingerprint),
            _address(addresses.get(n.node_id)),
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
                    [
                        "Node",
                        "Key fingerprint",
                        "Address",
                        "Status",
                        "Last seen",
                        "Tasks done",
                        "Failed",
                    ],
                    node_rows,
                    "No nodes have joined yet. Start a SuperNode against this SuperLink's "
                    "Fleet API and it appears here.",
                    numeric=(5, 6),
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
    return Page(
        "Federation", content, "/", "Nodes and runs of this SuperLink", live_on="nodes task run"
    )


def run(details: RunDetails, now: float, moved: tuple[int, int] = (0, 0)) -> Page:
    """``moved``: the run's blob bytes in and out since the SuperLink started."""
    summary = details.summary
    rounds = reported.rounds_of(details)
    config_rows = [(key, _plain(value)) for key, value in sorted(details.run_config.items())]
    content = join(
        [
            tag(
                "p", phase(summary, rounds, now), class_=f"phase phase-{summary.status}", id="phase"
            ),
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
                        ("Bytes moved", f"{size(moved[0])} in / {size(moved[1])} out"),
                        ("Message", summary.message or None),
                        ("Outputs", details.output_dir or None),
                    ]
                ),
                id="facts",
            ),
            _charts(summary.run_id, rounds),
            section("Rounds", _rounds_table(rounds), _rounds_note(rounds), id="rounds"),
            _nodes_of_last_round(rounds),
            section(
                "Node failures",
                _failures_table(rounds),
                "Nodes whose fit or evaluation failed, newest round first.",
                id="failures",
            ),
            section(
                "Run config",
                table(["Key", "Value"], config_rows, "This run has no run config."),
                id="config",
            ),
        ]
    )
    return Page(
        f"Run {summary.run_id}",
        content,
        subtitle=summary.app,
        live_on=f"run:{summary.run_id}",
        charts=True,
    )


def phase(summary: RunSummary, rounds: Sequence[Round], now: float) -> str:
    """Where the run stands, in one sentence."""
    done, planned = summary.rounds_done, summary.num_rounds
    if summary.status == "running":
        if planned and done >= planned:
            return f"All {planned} rounds done; the ServerApp is finishing the run."
        since = rounds[-1].reported_at if rounds else summary.created_at
        of = f" of {planned}" if planned else ""
        clock = time.strftime("%H:%M:%S", time.gmtime(since))
        return f"Round {done + 1}{of} in progress since {clock} UTC."
    ended = summary.finished_at if summary.finished_at is not None else now
    took = duration(max(0.0, ended - summary.created_at))
    if summary.status == "finished":
        return f"Finished: {_plural(done, 'round')} in {took}."
    if summary.status == "failed":
        why = f": {summary.message}" if summary.message else "."
        return f"Failed after {_plural(done, 'round')}{why}"
    return f"{summary.status.capitalize()} after {_plural(done, 'round')}."


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _charts(run_id: int, rounds: Sequence[Round]) -> Markup:
    """Where the script draws a chart per metric (from ``/api/runs/ID/rounds``); without
    script, or before a metric is reported, the sentence says so."""
    names = reported.series(rounds)
    empty = (
        "No rounds reported yet: each metric is plotted here as its rounds complete."
        if not rounds
        else "The rounds reported so far carry no numeric metric."
        if not names
        else "The charts need JavaScript; the table below holds the same figures."
    )
    body = join(
        [
            tag("p", empty, class_="empty", id="charts-empty"),
            tag("div", "", class_="charts", id="charts-grid"),
        ]
    )
    return tag(
        "section",
        join([tag("h2", "Metrics per round"), body]),
        class_="card",
        id="charts",
        data_rounds=f"/api/runs/{run_id}/rounds",
        data_keep="",
    )


def chart_data(details: RunDetails) -> dict[str, Any]:
    """What the run page's charts plot: the rounds, and each metric's value in each."""
    rounds = reported.rounds_of(details)
    return {
        "run_id": details.summary.run_id,
        "status": details.summary.status,
        "num_rounds": details.summary.num_rounds,
        "rounds": [r.number for r in rounds],
        "series": [{"name": k, "values": v} for k, v in reported.series(rounds).items()],
    }


@dataclass
class _Refusals:
    api: str
    reason: str
    fingerprint: str
    source: str
    count: int
    last: float


def security(events: Iterable[AuditEvent], now: float) -> Page:
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
    return Page(
        "Security",
        content,
        "/security",
        "Refused joins and revoked keys",
        live_on="join-refused security nodes",
    )


def not_found(what: str) -> Page:
    return Page("Not found", section("Not found", tag("p", what)))


def sign_in() -> Page:
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
    return Page("Sign in", content)


def _fingerprint(fingerprint: str) -> Cell:
    return tag("code", fingerprint) if fingerprint else None


def _address(peer: str | None) -> str | None:
    """`peer_address` (None: unknown, shown as a dash)."""
    return peer_address(peer) if peer else None


def _rounds(run: RunSummary) -> str:
    if run.num_rounds:
        return f"{run.rounds_done} of {run.num_rounds}"
    return str(run.rounds_done) if run.rounds_done else "—"


def _run_duration(run: RunSummary, now: float) -> Markup:
    end = run.finished_at if run.finished_at is not None else now
    return text(duration(max(0.0, end - run.created_at)))


def _plain(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def _rounds_table(rounds: Sequence[Round]) -> Markup:
    values = reported.series(rounds)
    headers = ["Round", "Duration", "Fit ok", "Fit failed", *values]
    shown = range(len(rounds) - 1, max(-1, len(rounds) - 1 - MAX_ROUND_ROWS), -1)
    rows = [
        (
            rounds[i].number,
            duration(seconds) if (seconds := rounds[i].seconds) is not None else None,
            _count(rounds[i].record.get("fit_results")),
            sum(1 for stage, _ in rounds[i].failures() if stage == "fit")
            + rounds[i].omitted("fit_failures"),
            *(_figure(v[i]) for v in values.values()),
        )
        for i in shown  # newest first
    ]
    numeric = range(1, len(headers))
    return table(headers, rows, "No rounds reported yet.", numeric=numeric)


def _rounds_note(rounds: Sequence[Round]) -> str:
    if len(rounds) <= MAX_ROUND_ROWS:
        return "Newest first."
    return (
        f"The last {MAX_ROUND_ROWS} of {len(rounds)} rounds, newest first (the charts and "
        "pollen runs show RUN hold them all)."
    )


def _nodes_of_last_round(rounds: Sequence[Round]) -> Markup:
    last = rounds[-1] if rounds else None
    nodes = reported.node_rows(last) if last is not None else []
    names: dict[str, None] = {}
    for node in nodes:
        names.update(dict.fromkeys(node.metrics))
    shown = list(names)[:MAX_NODE_METRICS]
    rows = [
        (
            node.node_id,
            node.examples,
            duration(node.seconds) if node.seconds is not None else None,
            *(_figure(node.metrics.get(n)) for n in shown),
        )
        for node in nodes[:MAX_NODE_ROWS]
    ]
    title = f"Nodes in round {last.number}" if last is not None else "Nodes"
    hidden = max(0, len(nodes) - MAX_NODE_ROWS) + (last.omitted("fit_nodes") if last else 0)
    more = f" {hidden} more nodes not shown (the run's metrics.json lists them)." if hidden else ""
    return section(
        title,
        table(
            ["Node", "Examples", "Fit time", *shown],
            rows,
            "No rounds reported yet." if last is None else "No node returned a fit result.",
            numeric=range(1, 3 + len(shown)),
        ),
        "Each node's fit result in the last reported round; its fit time runs from the "
        "ServerApp sending the round's instructions to the node's reply arriving." + more,
        id="nodes",
    )


def _failures_table(rounds: Sequence[Round]) -> Markup:
    rows = [(r.number, stage, reason) for r in reversed(rounds) for stage, reason in r.failures()][
        :MAX_FAILURE_ROWS
    ]
    return table(["Round", "Stage", "Reason"], rows, "No node has failed in this run.")


def _count(value: Any) -> Cell:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _figure(value: float | None) -> Cell:
    if value is None:
        return None
    return int(value) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
