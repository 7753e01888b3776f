"""The dashboard's live side: ``/events`` (Server-Sent Events), the ``<main>`` a live
page swaps in, a run's figures per round as JSON, and the bounds of it all.

Real SuperLinks on 127.0.0.1:0; the event stream is read over a plain socket, as a
browser's EventSource would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from pathlib import Path

import pytest

from pollen.cli.local_federation import LocalFederation
from pollen.server.run import run_server_app
from pollen.superlink import security
from pollen.superlink.dashboard.guard import Message
from pollen.superlink.dashboard.html import size
from pollen.superlink.dashboard.live import EventStream
from pollen.superlink.dashboard.settings import DashboardConfig
from pollen.superlink.events import QUEUE_SIZE, Event, Events
from pollen.superlink.server import open_superlink
from pollen.superlink.telemetry import Telemetry
from tests.apps import numpy_apps
from tests.auth_helpers import Seed, allowlist_file, secure_config
from tests.conftest import LOOPBACK_ANY_PORT, federation, start_node, superlink_config, wait_until
from tests.dashboard_helpers import ON_ANY_PORT, get
from tests.test_integration import server_config


class EventReader:
    """An open ``/events`` stream: its status, then its messages one by one (HTTP/1.0:
    the body is the stream itself, no chunks)."""

    def __init__(self, port: int, headers: str = "", ca: Path | None = None) -> None:
        self.port, self.headers = port, headers
        self.tls = ssl.create_default_context(cafile=str(ca)) if ca else None
        self.status = 0
        self._buffer = b""

    async def __aenter__(self) -> EventReader:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.tls
        )
        self.writer.write(
            f"GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"{self.headers}\r\n".encode()
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        self.status = int(head.split()[1])
        self.head = head.decode().lower()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def message(self, timeout: float) -> str:
        """The next block of the stream (``data: ...`` or a ``: comment``); "" at its end."""
        while b"\n\n" not in self._buffer:
            chunk = await asyncio.wait_for(self.reader.read(4096), timeout)
            if not chunk:
                return ""
            self._buffer += chunk
        block, _, self._buffer = self._buffer.partition(b"\n\n")
        return block.decode()

    async def event(self, kind: str, timeout: float = 1.0) -> dict[str, object]:
        """The next event of ``kind`` (others are skipped), within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            block = await self.message(max(0.01, deadline - time.monotonic()))
            assert block, "the stream ended"
            for line in block.splitlines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["kind"] == kind:
                        return dict(event)


def test_events_tell_within_a_second_that_a_node_came_and_a_run_changed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path, dashboard=ON_ANY_PORT)) as link:
            assert link.dashboard_port is not None
            async with EventReader(link.dashboard_port) as stream:
                assert stream.status == 200
                assert "content-type: text/event-stream" in stream.head
                assert "content-security-policy" in stream.head  # behind the same guard
                first = await stream.message(1)
                assert "retry: 1000" in first
                nodes = [start_node(numpy_apps.app, link.fleet_port) for _ in range(2)]
                assert (await stream.event("nodes"))["run"] == 0
                await wait_until(lambda: len(link.dispatcher.online_nodes()) == 2)
                run = asyncio.create_task(
                    run_server_app(
                        numpy_apps.make_server_app(num_rounds=1),
                        server_config(tmp_path, link.driver_port),
                    )
                )
                assert (await stream.event("run", timeout=5))["run"] == 1  # created
                assert (await stream.event("task", timeout=5))["run"] == 0
                await run
                for node in nodes:
                    node.stop.set()
                await asyncio.gather(*(n.task for n in nodes), return_exceptions=True)
                assert await stream.event("nodes")

    asyncio.run(scenario())


def test_a_revoked_key_and_a_wrong_dashboard_token_reach_an_open_stream_within_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(security, "RELOAD_SECONDS", 0.05)  # the watcher's own delay, shortened
    seed = Seed.create(tmp_path / "seed", clients=2, unlisted=0)
    revoked, kept = seed.identity(1), seed.identity(2)
    allowed = allowlist_file(tmp_path / "allowed.csv", revoked, kept)
    token = "s3cret-token-for-the-dashboard"
    config = secure_config(tmp_path, seed, client_keys=allowed)
    config.dashboard = DashboardConfig(LOOPBACK_ANY_PORT, token=token)

    async def scenario() -> None:
        async with open_superlink(config) as link:
            assert link.dashboard_port is not None
            auth = f"Authorization: Bearer {token}\r\n"
            async with EventReader(link.dashboard_port, auth, seed.ca_cert) as stream:
                assert stream.status == 200
                await stream.message(1)  # connected
                allowlist_file(allowed, kept)
                assert await stream.event("security", timeout=1.0) == {"kind": "security", "run": 0}
                refused = await get(
                    link.dashboard_port, "/", {"Authorization": "Bearer wrong"}, ca=seed.ca_cert
                )
                assert refused.status == 401
                assert await stream.event("security", timeout=1.0)
            security_page = await get(
                link.dashboard_port,
                "/security",
                {"Authorization": f"Bearer {token}"},
                ca=seed.ca_cert,
            )
        assert revoked.fingerprint in security_page.body
        assert 'data-live-on="join-refused security nodes"' in security_page.body

    asyncio.run(scenario())


def test_a_live_page_gets_its_main_alone_and_a_run_its_figures_per_round(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"examples": 2}, {"examples": 4}]
        async with federation(tmp_path, numpy_apps.app, configs, dashboard=ON_ANY_PORT) as (
            link,
            _,
        ):
            port = link.dashboard_port
            await run_server_app(
                numpy_apps.make_server_app(num_rounds=2),
                server_config(tmp_path, link.driver_port),
            )
            part = await get(port, "/runs/1", {"X-Pollen-Part": "main"})
            whole = await get(port, "/runs/1")
            figures = await get(port, "/api/runs/1/rounds")
            unknown = await get(port, "/api/runs/9/rounds")
        assert part.status == 200 and "<html" not in part.body and "<main" not in part.body
        assert part.body.startswith('<div class="heading">')
        assert part.body in whole.body  # the same rendering, inside the whole page
        assert "Finished: 2 rounds in" in part.body
        assert "Nodes in round 2" in part.body
        assert 'data-live-on="run:1"' in whole.body
        assert 'src="/static/vendor/uplot/uPlot.iife.min.js"' in whole.body
        data = json.loads(figures.body)
        assert data["rounds"] == [1, 2] and data["status"] == "finished"
        series = {s["name"]: s["values"] for s in data["series"]}
        assert series["accuracy"] == [0.5, 0.5]
        assert len(series["loss"]) == 2 and "fit train_loss" in series
        assert unknown.status == 404

    asyncio.run(scenario())


def test_a_run_page_shows_the_blob_bytes_that_run_moved_and_no_other_runs(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"examples": 2}, {"examples": 4}]
        async with federation(tmp_path, numpy_apps.app, configs, dashboard=ON_ANY_PORT) as (
            link,
            _,
        ):
            port, telemetry = link.dashboard_port, link.dispatcher.telemetry
            for rounds in (1, 2):
                await run_server_app(
                    numpy_apps.make_server_app(num_rounds=rounds),
                    server_config(tmp_path, link.driver_port),
                )
                if rounds == 1:
                    first = telemetry.run_bytes.of(1)
            second = telemetry.run_bytes.of(2)
            pages = [(await get(port, f"/runs/{run}")).body for run in (1, 2)]
            everything = telemetry.blob_bytes()
        assert all(first) and all(second)  # uploads and downloads of each run
        assert telemetry.run_bytes.of(1) == first  # the second run added nothing to the first
        assert (first[0] + second[0], first[1] + second[1]) == everything  # each byte: one run
        for page, (received, sent) in zip(pages, (first, second), strict=True):
            assert f"<dd>{size(received)} in / {size(sent)} out</dd>" in page
        assert "<dt>Bytes moved</dt>" in pages[0]

    asyncio.run(scenario())


def test_bytes_per_run_are_bounded_and_each_stream_end_tells_its_run_page() -> None:
    telemetry = Telemetry()
    telemetry.run_bytes.max_runs, telemetry.run_bytes.max_digests = 2, 2
    watcher = telemetry.events.watch()
    assert watcher is not None
    telemetry.blob_received(1, 100, "model-1")  # the ServerApp's upload for run 1
    telemetry.blobs_of_run(2, ["model-1"])  # run 2 sends the same blob: its downloads now
    telemetry.blob_sent("model-1", 40)
    telemetry.blob_sent("unknown", 7)  # a blob no run is known to use: counted for none
    assert telemetry.run_bytes.of(1) == (100, 0) and telemetry.run_bytes.of(2) == (0, 40)
    assert list(watcher.pending) == [Event("run", 1), Event("run", 2)]
    telemetry.blob_received(3, 5, "reply-3")
    telemetry.blob_received(3, 5, "reply-3b")
    assert telemetry.run_bytes.of(1) == (0, 0)  # the oldest run is forgotten first
    assert telemetry.run_bytes.of(3) == (10, 0)
    assert telemetry.run_bytes.run_of("model-1") == 0  # and the least recent blob
    assert telemetry.run_bytes.run_of("reply-3b") == 3


def test_a_run_page_before_any_round_says_so(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path, dashboard=ON_ANY_PORT)) as link:
            link.dispatcher.state.create_run("app", {}, time.time())
            page = await get(link.dashboard_port, "/runs/1")
            figures = json.loads((await get(link.dashboard_port, "/api/runs/1/rounds")).body)
        assert "No rounds reported yet" in page.body
        assert "Round 1 in progress since" in page.body
        assert figures["rounds"] == [] and figures["series"] == []

    asyncio.run(scenario())


def test_a_slow_watcher_keeps_each_event_once_and_loses_the_excess() -> None:
    async def scenario() -> None:
        events = Events(max_watchers=2)
        slow, other = events.watch(), events.watch()
        assert slow is not None and other is not None
        assert events.watch() is None  # bounded number of watchers
        for _ in range(1000):
            events.publish("task")  # a round of a thousand nodes: one entry
        for run_id in range(1, 10 * QUEUE_SIZE + 1):
            events.publish("run", run_id)
        assert len(slow.pending) == QUEUE_SIZE
        assert slow.dropped == 10 * QUEUE_SIZE - (QUEUE_SIZE - 1)
        taken = await slow.take()
        assert taken[0] == Event("task") and taken[1] == Event("run", 1)
        assert slow.pending == {}
        events.unwatch(other)
        assert events.watch() is not None
        events.close()
        assert await slow.take() == []  # the SuperLink stops
        assert events.watch() is None  # no new watcher then

    asyncio.run(scenario())


def test_an_idle_stream_gets_heartbeats_and_ends_when_the_superlink_stops() -> None:
    async def scenario() -> None:
        events = Events()
        sent: list[Message] = []
        browser_left = asyncio.Event()

        async def receive() -> Message:
            await browser_left.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        stream = EventStream(events, heartbeat=0.05)
        task = asyncio.create_task(stream({"type": "http", "method": "GET"}, receive, send))
        await asyncio.sleep(0.3)
        events.close()
        await asyncio.wait_for(task, 2)
        body = b"".join(m["body"] for m in sent if "body" in m)
        assert body.count(b": heartbeat\n\n") >= 3
        assert sent[-1] == {"type": "http.response.body", "body": b""}  # the end
        assert events.watching == 0

    asyncio.run(scenario())


def test_too_many_live_pages_are_refused_and_a_token_guards_the_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        token = "s3cret-token-for-the-dashboard"
        config = superlink_config(
            tmp_path, dashboard=DashboardConfig(LOOPBACK_ANY_PORT, token=token)
        )
        async with open_superlink(config) as link:
            port = link.dashboard_port
            assert port is not None
            link.dispatcher.telemetry.events.max_watchers = 1
            async with EventReader(port) as refused:
                assert refused.status == 401
            auth = f"Authorization: Bearer {token}\r\n"
            async with EventReader(port, auth) as first, EventReader(port, auth) as second:
                assert first.status == 200
                assert second.status == 503

    asyncio.run(scenario())


def test_sigterm_stops_the_superlink_promptly_with_a_stream_open(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path)
    try:
        superlink = fed.start_superlink()
        with socket.create_connection(("127.0.0.1", fed.dashboard_port), timeout=10) as sock:
            sock.sendall(b"GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            assert b"200 OK" in sock.recv(4096)
            started = time.monotonic()
            superlink.terminate()
            superlink.process.wait(10)
            stopped = time.monotonic() - started
            rest = b""
            while chunk := sock.recv(4096):
                rest += chunk
    finally:
        fed.stop()
    assert superlink.process.returncode == 0, superlink.log()
    assert stopped < 3, stopped
    assert "Traceback" not in superlink.log()
    assert b"retry: 1000" in rest or rest == b""  # then the stream ended: EOF
