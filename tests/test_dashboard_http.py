"""The SuperLink's HTTP endpoint: server-rendered pages, its security rules, bad input.

Real SuperLinks on 127.0.0.1:0, in-process, read with urllib as a browser without
JavaScript or a scraper would.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

from pollen.cli.local_federation import LocalFederation
from pollen.server.run import run_server_app
from pollen.superlink.dashboard.guard import COOKIE, WRONG_TOKEN
from pollen.superlink.dashboard.settings import DashboardConfig
from pollen.superlink.security import SecurityConfig
from pollen.superlink.server import open_superlink
from tests.apps import numpy_apps
from tests.conftest import LOOPBACK_ANY_PORT, federation, superlink_config
from tests.dashboard_helpers import ON_ANY_PORT, get
from tests.test_cli_errors import assert_one_line_error, run_superlink
from tests.test_integration import server_config

TOKEN = "s3cret-token-for-the-dashboard"
PAGES = ("/", "/runs/1", "/security", "/metrics", "/static/dashboard.css")


def test_pages_show_the_nodes_and_runs_with_strict_headers(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{}, {}]
        async with federation(tmp_path, numpy_apps.app, configs, dashboard=ON_ANY_PORT) as (
            link,
            _,
        ):
            await run_server_app(
                numpy_apps.make_server_app(num_rounds=1),
                server_config(tmp_path, link.driver_port),
            )
            answers = {path: await get(link.dashboard_port, path) for path in PAGES}
            nodes = link.dispatcher.online_nodes()
        home = answers["/"].body
        for node_id in nodes:
            assert f"<td>{node_id}</td>" in home
        # each node's address as the SuperLink saw its connection
        assert len(re.findall(r"<td>127\.0\.0\.1:\d+</td>", home)) == len(nodes) == 2
        assert home.count("badge-good") >= 2  # both nodes online
        assert 'href="/runs/1"' in home
        assert "Run 1" in answers["/runs/1"].body
        # each node's fit time in the last round, from the round's report
        nodes_card = answers["/runs/1"].body.split('id="nodes"', 1)[1].split("</section>", 1)[0]
        assert "Fit time</th>" in nodes_card
        for node_id in nodes:
            fit = rf'<td>{node_id}</td><td class="num">\d+</td><td class="num">[\d.]+ m?s</td>'
            assert re.search(fit, nodes_card), nodes_card
        assert "No join has been refused." in answers["/security"].body
        assert "text/css" in answers["/static/dashboard.css"].headers["content-type"]
        for path, answer in answers.items():
            assert answer.status == 200, (path, answer.body)
            csp = answer.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "unsafe-inline" not in csp
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "no-referrer"
            assert "PRIVATE KEY" not in answer.body
            assert_no_inline_script(answer.body)

    asyncio.run(scenario())


def assert_no_inline_script(body: str) -> None:
    """Scripts come from the package's static files, each an empty element: none inline."""
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", body, re.S)
    assert body.count("<script") == len(scripts)
    assert all(content == "" for content in scripts)
    for tag in re.findall(r"<script\b[^>]*>", body):
        assert re.search(r' src="/static/[^"]+\.js"', tag), tag
    assert not re.search(r"<[a-z][^>]*\son[a-z]+=", body)  # no onclick=... handlers


def test_an_empty_federation_says_so_and_an_unknown_run_is_not_found(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path, dashboard=ON_ANY_PORT)) as link:
            home = await get(link.dashboard_port, "/")
            unknown = await get(link.dashboard_port, "/runs/7")
            huge = await get(link.dashboard_port, f"/runs/{2**64}")
            posted = await get(link.dashboard_port, "/", method="POST")
        assert "No nodes have joined yet" in home.body
        assert "No runs yet" in home.body
        assert unknown.status == 404
        assert "Run 7 does not exist on this SuperLink." in unknown.body
        assert "content-security-policy" in unknown.headers
        assert huge.status == 404
        assert posted.status == 405
        assert posted.headers["allow"] == "GET, HEAD"

    asyncio.run(scenario())


def test_strings_from_the_network_are_escaped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_superlink(superlink_config(tmp_path, dashboard=ON_ANY_PORT)) as link:
            hostile = '<script>alert("x")</script>'
            link.dispatcher.state.create_run(hostile, {"key": hostile}, 1.0)
            for node_id in (5, 6):
                link.dispatcher.state.add_node(node_id, 1.0, None)
            link.dispatcher.subscribe(5, "ipv4:<img src=x onerror=alert(1)>:1")  # 6 never did
            pages = [await get(link.dashboard_port, p) for p in ("/", "/runs/1")]
        for page in pages:
            assert "alert" not in "".join(re.findall(r"<script\b[^>]*>", page.body))
            assert_no_inline_script(page.body)
            assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.body
        home = pages[0].body
        assert "<td>&lt;img src=x onerror=alert(1)&gt;:1</td>" in home  # node 5's address
        dash = '<span class="muted">—</span>'
        assert f"<td>6</td><td>{dash}</td><td>{dash}</td>" in home  # no key, no address known

    asyncio.run(scenario())


def test_with_a_token_a_wrong_one_is_refused_audited_and_rate_limited(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = superlink_config(
            tmp_path,
            dashboard=DashboardConfig(LOOPBACK_ANY_PORT, TOKEN),
            security=SecurityConfig(max_failures=2),
        )
        async with open_superlink(config) as link:
            port = link.dashboard_port
            missing = await get(port, "/metrics")
            bearer = await get(port, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
            by_query = await get(port, f"/security?token={TOKEN}")
            cookie = by_query.headers.get("set-cookie", "")
            value = re.search(rf"{COOKIE}=([^;]+)", cookie)
            assert value is not None, by_query.headers
            with_cookie = await get(port, "/", {"Cookie": f"{COOKIE}={value[1]}"})
            wrong = [
                await get(port, "/", {"Authorization": "Bearer not-the-token"}) for _ in range(2)
            ]
            limited = await get(port, "/", {"Authorization": f"Bearer {TOKEN}"})
            style = await get(port, "/static/dashboard.css")  # public: the sign-in page's
            audit = [e for e in link.dispatcher.state.list_audit() if e.api == "dashboard"]
        assert missing.status == 401
        assert bearer.status == 200 and "pollen_nodes_connected" in bearer.body
        assert by_query.status == 303
        assert by_query.headers["location"] == "/security"  # the token leaves the address
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert TOKEN not in cookie
        assert with_cookie.status == 200
        assert [w.status for w in wrong] == [401, 401]
        assert limited.status == 429  # this address is over its limit, even with the token
        assert "retry-after" in limited.headers
        assert style.status == 200
        [reject] = [e for e in audit if e.event == "reject"]
        assert reject.reason == WRONG_TOKEN
        assert reject.count == 2
        assert "127.0.0.1" in reject.peer
        assert [e.event for e in audit if e.event == "throttled"] == ["throttled"]

    asyncio.run(scenario())


def test_a_dashboard_reachable_from_other_machines_needs_a_token(tmp_path: Path) -> None:
    code, output = run_superlink(tmp_path / "superlink.db", "--dashboard-address", "0.0.0.0:0")
    assert code == 2
    assert_one_line_error(output, "--dashboard-address 0.0.0.0:0", "--dashboard-token-file")
    assert not (tmp_path / "superlink.db").exists()


def test_a_dashboard_port_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_superlink(
            tmp_path / "superlink.db", "--dashboard-address", f"127.0.0.1:{port}"
        )
    assert code == 2
    assert_one_line_error(output, f"--dashboard-address 127.0.0.1:{port}: port in use")
    assert not (tmp_path / "superlink.db").exists()  # a refused start leaves nothing


def test_a_weak_token_is_refused(tmp_path: Path) -> None:
    code, output = run_superlink(tmp_path / "superlink.db", "--dashboard-token", "short")
    assert code == 2
    assert_one_line_error(output, "--dashboard-token", "at least 16")


def test_the_superlink_command_serves_it_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path)
    try:
        superlink = fed.start_superlink()
        assert fed.dashboard_port > 0  # from its "dashboard on http://..." line
        answer = asyncio.run(get(fed.dashboard_port, "/metrics"))
        assert answer.status == 200
        assert "pollen_nodes_connected 0.0" in answer.body
    finally:
        fed.stop()
    assert superlink.process.returncode == 0, superlink.log()
    assert "Traceback" not in superlink.log()
