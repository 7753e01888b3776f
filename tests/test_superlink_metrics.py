"""Prometheus /metrics of a real SuperLink on 127.0.0.1:0, scraped as Prometheus would."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pollen.server.run import run_server_app
from pollen.superlink.server import open_superlink
from pollen.superlink.telemetry import Telemetry
from tests.apps import numpy_apps
from tests.auth_helpers import Seed, peer, secure_config, status_of
from tests.conftest import federation
from tests.dashboard_helpers import ON_ANY_PORT, get, scrape
from tests.test_integration import server_config

TRAIN_OK = 'pollen_tasks_total{kind="train",outcome="ok"}'
EVALUATE_OK = 'pollen_tasks_total{kind="evaluate",outcome="ok"}'


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return Seed.create(tmp_path_factory.mktemp("seed"), clients=1, unlisted=1)


def test_metrics_count_the_nodes_tasks_and_blob_bytes_of_a_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"examples": 1}, {"examples": 3}]
        async with federation(tmp_path, numpy_apps.app, configs, dashboard=ON_ANY_PORT) as (
            link,
            _,
        ):
            before = await scrape(link.dashboard_port)
            outcome, _ = await run_server_app(
                numpy_apps.make_server_app(num_rounds=2),
                server_config(tmp_path, link.driver_port),
            )
            after = await scrape(link.dashboard_port)
        assert before["pollen_nodes_connected"] == 2
        assert before[TRAIN_OK] == 0
        assert after["pollen_nodes_connected"] == 2
        trained = sum(r.fit_results for r in outcome.history.rounds)
        assert trained == 4
        assert after[TRAIN_OK] == trained
        assert after[EVALUATE_OK] == sum(r.evaluate_results for r in outcome.history.rounds)
        assert after['pollen_tasks_total{kind="train",outcome="error"}'] == 0
        # the model went down to the nodes, their results came up
        assert after['pollen_blob_bytes_total{direction="in"}'] > 0
        assert after['pollen_blob_bytes_total{direction="out"}'] > 0
        pushed = 'pollen_rpc_duration_seconds_count{method="Fleet.PushReply"}'
        assert after[pushed] == trained + after[EVALUATE_OK]
        assert after['pollen_rpc_duration_seconds_count{method="Driver.PushMessages"}'] >= 4

    asyncio.run(scenario())


def test_a_node_that_leaves_is_no_longer_counted_as_connected(tmp_path: Path) -> None:
    async def scenario() -> None:
        configs: list[dict[str, object]] = [{}, {}]
        async with federation(tmp_path, numpy_apps.app, configs, dashboard=ON_ANY_PORT) as (
            link,
            nodes,
        ):
            await nodes[0].leave()
            assert (await scrape(link.dashboard_port))["pollen_nodes_connected"] == 1

    asyncio.run(scenario())


def test_an_unlisted_nodes_join_is_counted_under_its_reason(tmp_path: Path, seed: Seed) -> None:
    async def scenario() -> None:
        config = secure_config(tmp_path, seed)
        config.dashboard = ON_ANY_PORT
        async with open_superlink(config) as link:
            stranger = seed.stranger()
            async with peer(seed, link.fleet_port, stranger) as client:
                await status_of(client.challenge())
                await status_of(client.challenge())
            # with TLS the dashboard speaks HTTPS, with the SuperLink's certificate
            metrics = await scrape(link.dashboard_port, ca=seed.tls.ca_cert)
            pages = [
                await get(link.dashboard_port, p, ca=seed.tls.ca_cert) for p in ("/", "/security")
            ]
        assert metrics['pollen_joins_refused_total{reason="not-allowed"}'] == 2
        assert metrics['pollen_joins_refused_total{reason="bad-proof"}'] == 0
        security = pages[1].body
        assert stranger.fingerprint in security and "key is not in the allow-list" in security
        assert "<td>2</td>" in security.replace(' class="num"', "")  # two attempts, one row
        for page in pages:
            assert page.status == 200
            assert "PRIVATE KEY" not in page.body

    asyncio.run(scenario())


def test_a_reported_round_counts_and_its_duration_is_observed() -> None:
    telemetry, other = Telemetry(), Telemetry()
    telemetry.round_reported(2.5)
    text = telemetry.exposition().decode()
    assert "pollen_rounds_completed_total 1.0" in text
    assert "pollen_round_duration_seconds_count 1.0" in text
    assert "pollen_round_duration_seconds_sum 2.5" in text
    assert 'pollen_round_duration_seconds_bucket{le="5.0"} 1.0' in text
    # each SuperLink counts in its own registry
    assert "pollen_rounds_completed_total 0.0" in other.exposition().decode()
