"""What ``pollen runs`` and ``pollen nodes`` print of the rows the SuperLink sends."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import click

from pollen.cli.log_lines import one_line
from pollen.cli.tables import echo_json, iso_time, table, utc_time
from pollen.records.run_reports import (
    NodeSummary,
    RunDetails,
    RunLogLine,
    RunSummary,
    omitted,
)


def _round_of(run: RunSummary) -> str:
    return f"{run.rounds_done}/{run.num_rounds or '?'}"


def _run_json(run: RunSummary) -> dict[str, Any]:
    return {
        **asdict(run),
        "created_at": iso_time(run.created_at),
        "finished_at": iso_time(run.finished_at),
    }


def print_runs(runs: Sequence[RunSummary], output_format: str) -> None:
    if output_format == "json":
        echo_json([_run_json(run) for run in runs])
        return
    if not runs:
        click.echo("no runs (start one with `pollen serverapp`)")
        return
    headers = ["RUN", "APP", "STATUS", "ROUND", "CREATED (UTC)", "FINISHED (UTC)", "OWNER"]
    rows = [
        [
            r.run_id,
            r.app or "-",
            r.status,
            _round_of(r),
            utc_time(r.created_at),
            utc_time(r.finished_at),
            r.owner or "-",
        ]
        for r in runs
    ]
    click.echo(table(headers, rows))


def _records(details: RunDetails) -> list[dict[str, Any]]:
    """Each reported round's record (as metrics.json holds it), with when it arrived."""
    records = []
    for report in details.rounds:
        record = json.loads(report.record)
        records.append({**record, "reported_at": iso_time(report.reported_at)})
    return records


def _metrics(record: Mapping[str, Any]) -> str:
    """The round's aggregated metrics, each named by where it comes from."""
    parts = []
    for key, source in (
        ("fit_metrics", "fit"),
        ("evaluate_metrics", "evaluate"),
        ("centralized_metrics", "server"),
    ):
        for name, value in (record.get(key) or {}).items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            parts.append(f"{source}.{name}={shown}")
    return " ".join(parts) or "-"


def _loss(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def _failed(record: Mapping[str, Any], key: str) -> int:
    """The failures a reported round lists, and those its report left out."""
    return len(record.get(key) or []) + omitted(record, key)


def _round_row(record: Mapping[str, Any]) -> list[object]:
    fit = f"{record.get('fit_results', 0)} ok, {_failed(record, 'fit_failures')} failed"
    evaluate = (
        f"{record.get('evaluate_results', 0)} ok, {_failed(record, 'evaluate_failures')} failed"
    )
    seconds = record.get("seconds")
    return [
        record.get("round", "?"),
        f"{seconds:.2f}" if isinstance(seconds, int | float) else "-",
        fit,
        evaluate,
        _loss(record.get("evaluate_loss")),
        _loss(record.get("centralized_loss")),
        _metrics(record),
    ]


def print_details(details: RunDetails, output_format: str) -> None:
    run = details.summary
    if output_format == "json":
        echo_json(
            {
                **_run_json(run),
                "run_config": details.run_config,
                "output_dir": details.output_dir or None,
                "rounds": _records(details),
            }
        )
        return
    about = [
        ("app", run.app or "-"),
        ("status", run.status + (f": {run.message}" if run.message else "")),
        ("round", _round_of(run)),
        ("created", f"{utc_time(run.created_at)} UTC"),
        ("finished", f"{utc_time(run.finished_at)} UTC" if run.finished_at else "-"),
        ("owner", run.owner or "-"),
        ("outputs", details.output_dir or "- (not reported)"),
    ]
    click.echo(f"run {run.run_id}")
    for name, shown in about:
        click.echo(f"  {name + ':':10} {one_line(shown)}")
    click.echo("  config:" + ("" if details.run_config else "    -"))
    for key, value in details.run_config.items():
        text = value.hex() if isinstance(value, bytes) else str(value)
        click.echo(f"    {one_line(key)} = {one_line(text)}")
    click.echo("")
    records = _records(details)
    if not records:
        click.echo("no round reported yet")
        return
    headers = ["ROUND", "SECONDS", "FIT", "EVALUATE", "LOSS", "SERVER LOSS", "METRICS"]
    click.echo(table(headers, [_round_row(record) for record in records]))


def print_line(line: RunLogLine, output_format: str) -> None:
    if output_format == "json":
        echo_json({"at": iso_time(line.at), "text": line.text})
    else:
        click.echo(f"{iso_time(line.at)}  {one_line(line.text)}")


def _node_row(n: NodeSummary) -> list[object]:
    address, seen = n.address or "-", utc_time(n.last_seen)
    return [n.node_id, n.status, address, seen, n.tasks_done, n.tasks_failed, n.fingerprint]


def print_nodes(nodes: Sequence[NodeSummary], output_format: str) -> None:
    if output_format == "json":
        echo_json([{**asdict(n), "last_seen": iso_time(n.last_seen)} for n in nodes])
        return
    if not nodes:
        click.echo("no nodes have joined (start one with `pollen supernode`)")
        return
    headers = ["NODE", "STATUS", "ADDRESS", "LAST SEEN (UTC)", "TASKS DONE", "FAILED"]
    headers.append("KEY FINGERPRINT")
    rows = [_node_row(n) for n in nodes]
    click.echo(table(headers, rows))
