"""How the operator commands print: aligned tables and times for people, JSON for scripts.
Text that came over the network is printed with its control characters escaped."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import click

from pollen.cli.log_lines import one_line


def utc_time(seconds: float | None) -> str:
    """Seconds since the epoch as ``2026-12-04 19:01:02`` (UTC); "-" for none."""
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(seconds: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC to the millisecond (as metrics.json)."""
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, a header line first."""
    cells = [list(headers), *([one_line(str(cell)) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def echo_json(value: object) -> None:
    """``value`` as JSON on one line (bytes as hex)."""
    click.echo(json.dumps(value, default=_plain))


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")
