"""Reading a SuperLink's dashboard and /metrics from a test (the server runs in the
test's own event loop, so requests go through a thread)."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pollen.superlink.dashboard.settings import DashboardConfig
from tests.conftest import LOOPBACK_ANY_PORT

ON_ANY_PORT = DashboardConfig(LOOPBACK_ANY_PORT)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str


def _fetch(url: str, headers: dict[str, str], method: str, ca: Path | None) -> Answer:
    context = ssl.create_default_context(cafile=str(ca)) if ca else None

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect(), urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with opener.open(request, timeout=10) as response:
            return Answer(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read().decode())


async def get(
    port: int | None,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    ca: Path | None = None,
) -> Answer:
    """``path`` from the dashboard on ``port`` (HTTPS when ``ca`` is given)."""
    assert port is not None, "this SuperLink serves no dashboard"
    scheme = "https" if ca else "http"
    url = f"{scheme}://127.0.0.1:{port}{path}"
    return await asyncio.to_thread(_fetch, url, headers or {}, method, ca)


async def scrape(port: int | None, ca: Path | None = None) -> dict[str, float]:
    """Every sample of /metrics by name and labels: ``'pollen_tasks_total{kind="train",
    outcome="ok"}'`` (labels sorted; none: the bare name)."""
    answer = await get(port, "/metrics", ca=ca)
    assert answer.status == 200, answer.body
    samples = {}
    for family in text_string_to_metric_families(answer.body):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
