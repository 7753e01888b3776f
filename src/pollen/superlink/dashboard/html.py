"""Building the dashboard's HTML: every value is escaped unless it is `Markup` made here.

Strings from the network (apps, reasons, addresses, metric names) reach the
pages; `text` escapes them, so none can add markup or script. No inline script
or style is ever written: the Content-Security-Policy forbids both; scripts come
from the package's static files.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NAV = (("/", "Federation"), ("/security", "Security"), ("/metrics", "Metrics"))
UPLOT = "/static/vendor/uplot"


class Markup(str):
    """HTML built by this module from escaped parts: written as it is."""


Cell = str | int | float | None
"""A table cell: escaped text (None: an em dash), or `Markup`."""


def text(value: Cell) -> Markup:
    """``value`` as safe HTML."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup('<span class="muted">—</span>')
    if isinstance(value, int | float):  # nothing to escape in a number
        return Markup(value)
    return Markup(html.escape(value, quote=True))


def join(parts: Iterable[Markup]) -> Markup:
    return Markup("".join(parts))


def tag(name: str, content: Cell, **attributes: str) -> Markup:
    """``<name attr="...">content</name>`` (``class_`` writes ``class``)."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{html.escape(value, quote=True)}"'
        for key, value in attributes.items()
    )
    return Markup(f"<{name}{attrs}>{text(content)}</{name}>")


def link(href: str, content: Cell) -> Markup:
    return tag("a", content, href=href)


def badge(status: str) -> Markup:
    """A coloured label for a status (online, running, failed...)."""
    return Markup(f'<span class="badge badge-{_status_class(status)}">{text(status)}</span>')


def _status_class(status: str) -> str:
    if status in ("online", "running"):
        return "good"
    if status in ("finished", "completed"):
        return "done"
    if status in ("failed", "offline", "reject", "throttled", "revoke"):
        return "bad"
    return "neutral"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Cell]], empty: str, numeric: Iterable[int] = ()
) -> Markup:
    """A table, or the ``empty`` sentence when there is no row. ``numeric``: the columns
    aligned right."""
    right = set(numeric)
    # the hot path of a page of a thousand nodes: each cell written directly
    body = [
        "".join(
            f'<td class="num">{text(cell)}</td>' if i in right else f"<td>{text(cell)}</td>"
            for i, cell in enumerate(row)
        )
        for row in rows
    ]
    if not body:
        return tag("p", empty, class_="empty")
    head = join(
        tag("th", h, scope="col", class_="num") if i in right else tag("th", h, scope="col")
        for i, h in enumerate(headers)
    )
    rows_html = Markup("".join(f"<tr>{row}</tr>" for row in body))
    return tag(
        "div",
        tag("table", join([tag("thead", tag("tr", head)), tag("tbody", rows_html)])),
        class_="table-wrap",
    )


def section(title: str, content: Markup, note: str = "", id: str = "") -> Markup:
    """A card; ``id`` names it for the live page, which swaps it when it changed."""
    parts = [tag("h2", title)]
    if note:
        parts.append(tag("p", note, class_="note"))
    parts.append(content)
    return tag("section", join(parts), class_="card", **({"id": id} if id else {}))


def stats(items: Iterable[tuple[str, Cell]]) -> Markup:
    """A row of headline figures."""
    return tag(
        "dl",
        join(
            tag("div", join([tag("dt", label), tag("dd", value)]), class_="stat")
            for label, value in items
        ),
        class_="stats",
    )


def facts(items: Iterable[tuple[str, Cell]]) -> Markup:
    """A description list of a thing's facts."""
    return tag("dl", join(join([tag("dt", k), tag("dd", v)]) for k, v in items), class_="facts")


@dataclass(frozen=True)
class Page:
    """A page: its title and the content of its ``<main>``; `document` is the whole page,
    `main` what a live page fetches to swap in (one rendering for both)."""

    title: str
    content: Markup
    current: str = ""
    """The path of this page in the navigation ("": none)."""
    subtitle: str = ""
    live_on: str = ""
    """The events that refresh it live, space-separated (``kind`` or ``kind:RUN``); "":
    a static page, sent without script."""
    charts: bool = False
    """It holds charts (the vendored charting library is loaded)."""

    def main(self) -> Markup:
        heading = [tag("h1", self.title)]
        if self.subtitle:
            heading.append(tag("p", self.subtitle, class_="subtitle"))
        return join([tag("div", join(heading), class_="heading"), self.content])

    def document(self) -> str:
        nav = join(
            link(href, label)
            if href != self.current
            else tag("a", label, href=href, aria_current="page")
            for href, label in NAV
        )
        top = [tag("a", "Pollen", href="/", class_="brand"), tag("nav", nav)]
        if self.live_on:  # shown by the script once it listens
            top.append(tag("span", "Live", id="live", class_="live", hidden="", role="status"))
        body = {"data_live_on": self.live_on} if self.live_on else {}
        return (
            "<!doctype html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{text(self.title)} · Pollen</title>"
            + _head_assets(self)
            + "</head>"
            + tag(
                "body",
                join([tag("header", join(top), class_="top"), tag("main", self.main())]),
                **body,
            )
            + "\n"
        )


def _head_assets(page: Page) -> Markup:
    parts = [
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">',
        '<link rel="stylesheet" href="/static/dashboard.css">',
    ]
    if page.charts:
        parts.append(f'<link rel="stylesheet" href="{UPLOT}/uPlot.min.css">')
        parts.append(f'<script src="{UPLOT}/uPlot.iife.min.js" defer></script>')
    if page.live_on:
        parts.append('<script src="/static/dashboard.js" defer></script>')
    return Markup("".join(parts))


def when(at: float | None) -> Markup:
    """A moment as UTC date and time."""
    if at is None:
        return text(None)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return tag("time", stamp, datetime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)))


def ago(at: float | None, now: float) -> Markup:
    """How long ago ``at`` was ("12 s ago", "just now"), with the moment as a tooltip."""
    if at is None:
        return text(None)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    elapsed = now - at
    return tag("time", f"{duration(elapsed)} ago" if elapsed >= 1 else "just now", title=stamp)


def size(count: float) -> str:
    """``0 B``, ``512 B``, ``3.2 kB``, ``41 MB``, ``1.5 GB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" or count >= 100 else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """``35 ms``, ``2.4 s``, ``12 s``, ``3 min 5 s``, ``2 h 4 min``, ``3 d 1 h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
