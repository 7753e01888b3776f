"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

A secure federation (TLS, client authentication) runs a few slow rounds while the
browser watches; the rounds appear and the charts gain their points without a
reload, an unlisted node's refused join appears on the security page as it happens,
and the pages stay readable 400 px wide and without JavaScript. Screenshots go to
the test's folder and to /tmp/shots/ (to look at). Never `playwright install`: the
machine has no network.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from pollen.cli.local_federation import Child, LocalFederation, spawn
from pollen.transport.keygen import generate
from tests.conftest import APPS_DIR

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SHOTS = Path("/tmp/shots")
ROUNDS = 4  # numpy_apps:four_rounds
ROUND_DELAY = 0.8  # each node's fit sleeps this long: rounds a browser can watch arrive

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not installed at /usr/bin/chromium "
    "(apt-get install -y chromium; .ci/run installs it)",
)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Shots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Page, name: str) -> None:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        SHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SHOTS / path.name)


def test_a_run_watched_live_in_chromium(tmp_path: Path, browser: Browser) -> None:
    fed = LocalFederation(tmp_path / "fed", clients=2)
    shots = Shots(tmp_path / "shots")
    children: list[Child] = []
    problems: list[str] = []
    try:
        fed.start_superlink()
        base = f"https://127.0.0.1:{fed.dashboard_port}"
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1280, "height": 860}
        )
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on(
            "response",
            lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        page.on("pageerror", lambda e: problems.append(str(e)))

        page.goto(base + "/")
        page.wait_for_selector("#live.live-on")
        assert page.locator("text=No nodes have joined yet").count() == 1
        shots.take(page, "1-federation-empty")
        page.evaluate("window.notReloaded = true")

        marker = tmp_path / "fit-started"
        slow = f"behaviour=slow,marker={marker},delay={ROUND_DELAY}"
        for _ in range(2):
            fed.start_supernode("numpy_apps:app", APPS_DIR, slow)
        page.wait_for_selector("text=2 of 2", timeout=20_000)  # both online, no reload

        command = fed.serverapp_command("numpy_apps:four_rounds", APPS_DIR)
        children.append(spawn("serverapp", command, fed.log_dir))
        page.wait_for_selector('a[href="/runs/1"]', timeout=20_000)
        assert page.evaluate("window.notReloaded") is True
        shots.take(page, "2-federation-running")

        page.click('a[href="/runs/1"]')
        page.wait_for_selector("#live.live-on")
        page.evaluate("window.notReloaded = true")
        rows = page.locator("#rounds tbody tr")
        for k in range(1, ROUNDS + 1):
            page.wait_for_selector(f'figure[data-metric="accuracy"][data-points="{k}"]')
            # the table comes with the page's next fragment, the chart from its own fetch:
            # each within a second of the round's report, not necessarily together
            page.wait_for_selector(f"#rounds tbody tr:nth-child({k})", timeout=2_000)
            if k == 2:
                assert "in progress since" in page.inner_text("#phase")
                shots.take(page, "3-run-live")
        page.wait_for_selector(".phase-finished", timeout=10_000)
        assert rows.count() == ROUNDS
        assert page.locator("figure.chart canvas").count() >= 3  # loss, accuracy, fit train_loss
        assert page.evaluate("window.notReloaded") is True
        shots.take(page, "4-run-finished")

        page.goto(base + "/security")
        assert page.locator("text=No join has been refused.").count() == 1
        page.wait_for_selector("#live.live-on")
        stranger = tmp_path / "stranger"
        generate(stranger, 1, [])
        private = stranger / "keys" / "client_credentials_1"
        fed.start_supernode(
            "numpy_apps:app", APPS_DIR, "", "--authentication-keys", str(private), f"{private}.pub"
        )
        page.wait_for_selector("text=key is not in the allow-list", timeout=20_000)
        shots.take(page, "5-security-refused-join")

        page.set_viewport_size({"width": 400, "height": 860})
        for path, name in (("/runs/1", "6-run-narrow"), ("/", "7-federation-narrow")):
            page.goto(base + path)
            page.wait_for_selector("#live.live-on")
            overflow = page.evaluate("document.documentElement.scrollWidth")
            assert overflow <= 400, f"{path} is {overflow} px wide in a 400 px window"
            shots.take(page, name)
        context.close()

        plain = browser.new_context(ignore_https_errors=True, java_script_enabled=False)
        page = plain.new_page()  # a browser without JavaScript reads the same tables
        page.goto(base + "/runs/1")
        assert page.locator("#rounds tbody tr").count() == ROUNDS
        assert "the table below holds the same figures" in page.inner_text("#charts")
        assert not page.locator("#live").is_visible()
        shots.take(page, "8-run-without-javascript")
        plain.close()
    finally:
        for child in children:
            child.stop()
        fed.stop()
    assert problems == [], problems
