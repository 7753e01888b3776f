"""Watching a SuperLink's dashboard while a benchmark runs, as operators would: a
scraper reading ``/metrics`` and the federation page every second (Prometheus and
a script), and a real headless Chromium holding the live pages open.

A plain module next to the scripts (see ``federation_run``). The browser is Debian's
Chromium (``/usr/bin/chromium``) driven by Playwright, as in the dashboard's browser
test; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from process_stats import cpu_seconds

from pollen.errors import RunError

SCRAPE_SECONDS = 1.0
SCRAPED = ("/metrics", "/")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
START_TIMEOUT = 30.0


def base_url(port: int, ca: Path | None) -> str:
    return f"{'https' if ca else 'http'}://127.0.0.1:{port}"


class Scraper:
    """Reads `SCRAPED` from the dashboard every `SCRAPE_SECONDS` in a thread of its own."""

    def __init__(self, port: int, ca: Path | None) -> None:
        self.urls = [base_url(port, ca) + path for path in SCRAPED]
        self.context = ssl.create_default_context(cafile=str(ca)) if ca else None
        self.scrapes = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=5, context=self.context) as page:
                        page.read()
                except OSError as exc:
                    self.errors.append(f"{url}: {exc}")
            self.scrapes += 1
            self._stop.wait(SCRAPE_SECONDS)

    @contextlib.contextmanager
    def running(self) -> Iterator[Scraper]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
        if self.errors:
            raise RunError(f"{len(self.errors)} scrapes failed, the first: {self.errors[0]}")


def chromium_cpu_seconds() -> float:
    """CPU seconds used so far by the Chromium processes this process started (through
    Playwright's driver)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(stat.parent.name)
        names[pid] = text[text.index("(") + 1 : text.rindex(")")]
        parents[pid] = int(text[text.rindex(")") + 2 :].split()[1])

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return sum(cpu_seconds(p) for p, name in names.items() if "chrom" in name and ours(p))


class BrowserWatch:
    """A headless Chromium with the federation page open and, once a run is listed
    there, that run's page in a second tab; both live (``/events``). Playwright drives
    it from a child process (this file run as a script), so that its work does not
    share the benchmark's interpreter with the ServerApp. Counts the refreshes the
    pages made (their ``<main>`` fetched again on an event) and Chromium's CPU."""

    def __init__(self, port: int, ca: Path | None) -> None:
        if not CHROMIUM.exists():
            raise RunError(
                f"--browser needs Debian's Chromium at {CHROMIUM}: apt-get install chromium"
            )
        self.base = base_url(port, ca)
        self.refreshes = 0
        self.cpu_seconds = 0.0
        """Chromium's CPU while the pages were open."""

    @contextlib.contextmanager
    def running(self) -> Iterator[BrowserWatch]:
        """The browser has the federation page open and live for the ``with`` block."""
        child = subprocess.Popen(
            [sys.executable, __file__, self.base],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            ready = child.stdout.readline().strip()
            if ready != "ready":
                raise RunError(f"the browser did not open the dashboard: {ready or 'no answer'}")
            yield self
            child.stdin.close()  # the child's signal to report and stop
            figures = json.loads(child.stdout.readline() or "{}")
            if "error" in figures or not figures:
                raise RunError(f"the browser failed: {figures.get('error', 'no answer')}")
            self.refreshes, self.cpu_seconds = figures["refreshes"], figures["cpu_seconds"]
        finally:
            if child.poll() is None:
                child.terminate()
            child.wait(START_TIMEOUT)


def _browse(base: str) -> dict[str, float]:
    """In the child: hold the live pages open until stdin closes; what they cost."""
    from playwright.sync_api import Request, sync_playwright

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    refreshes = 0

    def counted(request: Request) -> None:
        nonlocal refreshes
        if request.headers.get("x-pollen-part") == "main":
            refreshes += 1

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(ignore_https_errors=True)
            context.on("request", counted)
            home = context.new_page()
            home.goto(base + "/")
            home.wait_for_selector("#live.live-on", timeout=START_TIMEOUT * 1000)
            started = chromium_cpu_seconds()
            print("ready", flush=True)
            run_open = False
            while not stop.is_set():
                home.wait_for_timeout(250)  # Playwright handles events while called
                if not run_open and home.locator('a[href^="/runs/"]').count():
                    href = home.locator('a[href^="/runs/"]').first.get_attribute("href")
                    context.new_page().goto(base + str(href))
                    run_open = True
            return {"refreshes": refreshes, "cpu_seconds": chromium_cpu_seconds() - started}
        finally:
            browser.close()


@contextlib.contextmanager
def watched(
    port: int, ca: Path | None, browser: bool
) -> Iterator[tuple[Scraper, BrowserWatch | None]]:
    """Scraping for the ``with`` block and, with ``browser``, Chromium on the live pages."""
    with contextlib.ExitStack() as stack:
        watch = stack.enter_context(BrowserWatch(port, ca).running()) if browser else None
        scraper = stack.enter_context(Scraper(port, ca).running())
        yield scraper, watch


if __name__ == "__main__":  # the child of BrowserWatch: python dashboard_watch.py BASE_URL
    try:
        print(json.dumps(_browse(sys.argv[1])), flush=True)
    except Exception as exc:  # told to the parent, which raises it
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
