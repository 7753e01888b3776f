"""A round on more nodes than a report holds is reported trimmed to fit, not refused.

The SuperLink takes at most 64 KiB of one round's record; a round of 1500 nodes lists
about 230 KB of them. The ServerApp sends every aggregate, the slowest fits, the worst
evaluations, the first failures, and how many of each it left out.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from pollen.cli.run_views import print_details
from pollen.records.run_reports import MAX_RECORD_BYTES, RoundReport, RunDetails, RunSummary
from pollen.server.driver import DriverClient
from pollen.server.grid import RunReport
from pollen.server.history import History, NodeEvaluate, NodeFit, RoundRecord
from pollen.server.round_report_fit import fitted
from pollen.superlink.server import open_superlink
from pollen.transport.addresses import Address
from tests.conftest import superlink_config
from tests.dashboard_helpers import ON_ANY_PORT, get

TRIMMED = ("fit_nodes", "evaluate_nodes", "fit_failures", "evaluate_failures")


def big_round(fits: int, evaluations: int, failures: int) -> RoundRecord:
    rng = random.Random(7)
    return RoundRecord(
        1,
        started_at="2025-01-01T00:00:00.000+00:00",
        seconds=31.5,
        fit_results=fits,
        fit_failures=[f"node {9000 + i} went offline during fit" for i in range(failures)],
        fit_metrics={"train_loss": 0.25, "accuracy": 0.91},
        fit_nodes=[
            NodeFit(i + 1, 100 + i, {"train_loss": rng.random()}, seconds=rng.uniform(0.5, 30))
            for i in range(fits)
        ],
        evaluate_results=evaluations,
        evaluate_failures=[f"node {7000 + i} timed out" for i in range(failures // 10)],
        evaluate_loss=0.4,
        evaluate_metrics={"accuracy": 0.88},
        evaluate_nodes=[
            NodeEvaluate(i + 1, 50, rng.uniform(0.1, 2.0), {"accuracy": rng.random()})
            for i in range(evaluations)
        ],
        centralized_loss=0.38,
    )


def as_sent(record: RoundRecord) -> dict[str, Any]:
    """The record as the ServerApp reports it, untrimmed (as metrics.json holds it)."""
    round_: dict[str, Any] = History(1, [record]).to_json()["rounds"][0]
    return round_


def size(record: dict[str, Any]) -> int:
    return len(json.dumps(record).encode())


def assert_trimmed_from(kept: dict[str, Any], full: dict[str, Any]) -> None:
    """``kept`` holds every aggregate of ``full``, its slowest fits, its highest-loss
    evaluations, its first failures, and counts exactly what it left out."""
    assert {k: v for k, v in kept.items() if k not in TRIMMED and "_omitted" not in k} == {
        k: v for k, v in full.items() if k not in TRIMMED
    }
    slowest = sorted(full["fit_nodes"], key=lambda n: n["seconds"], reverse=True)
    worst = sorted(full["evaluate_nodes"], key=lambda n: n["loss"], reverse=True)
    for key, ranked in (
        ("fit_nodes", slowest),
        ("evaluate_nodes", worst),
        ("fit_failures", full["fit_failures"]),
        ("evaluate_failures", full["evaluate_failures"]),
    ):
        shown = kept[key]
        assert shown == ranked[: len(shown)], key
        assert kept.get(f"{key}_omitted", 0) == len(ranked) - len(shown), key


def test_a_round_of_1500_nodes_is_taken_trimmed_and_its_page_says_what_it_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = big_round(fits=1500, evaluations=300, failures=500)
    full = as_sent(record)
    assert size(full) > MAX_RECORD_BYTES == 64 * 1024  # refused whole

    async def scenario() -> tuple[dict[str, Any], str, str]:
        config = superlink_config(tmp_path, dashboard=ON_ANY_PORT)
        async with open_superlink(config) as link:
            driver = await DriverClient.connect(Address("127.0.0.1", link.driver_port), None, 5)
            try:
                run_id, _ = await driver.create_run("app", {})
                await driver.report_round(run_id, RunReport(1, record=record))
                details = await driver.run_details(run_id)
            finally:
                await driver.close()
            page = await get(link.dashboard_port, f"/runs/{run_id}")
        [reported] = details.rounds
        return json.loads(reported.record), reported.record, page.body

    kept, text, page = asyncio.run(scenario())
    assert not [r for r in caplog.records if "did not take" in r.message]
    assert len(text.encode()) <= MAX_RECORD_BYTES
    assert_trimmed_from(kept, full)
    assert 0 < len(kept["fit_nodes"]) < 1500 and kept["fit_nodes_omitted"] > 0
    assert kept["evaluate_nodes"] and kept["fit_failures"] and kept["evaluate_failures"]
    # the record is full: one more entry of any list would not have fitted
    assert size(kept) > MAX_RECORD_BYTES - 1000
    nodes_card = page.split('id="nodes"', 1)[1].split("</section>", 1)[0]
    hidden = 1500 - 200  # 200 rows shown, the rest in the report or left out of it
    assert f"{hidden} more nodes not shown" in nodes_card
    fit_failed = page.split("Fit failed", 1)[1].split("</tr>", 2)[1]
    assert '<td class="num">500</td>' in fit_failed  # kept and left out, all counted


def fast_and_slow(count: int) -> dict[str, Any]:
    nodes = [NodeFit(i, 10, {"loss": 0.5}, seconds=float(i % 7) + i / 100) for i in range(count)]
    return as_sent(RoundRecord(3, fit_results=count, fit_metrics={"loss": 0.5}, fit_nodes=nodes))


def test_fitted_keeps_a_record_at_the_bound_and_trims_one_byte_under_it() -> None:
    full = fast_and_slow(20)
    assert fitted(full, size(full)) is full
    slowest = sorted(full["fit_nodes"], key=lambda n: n["seconds"], reverse=True)
    five = {**full, "fit_nodes": slowest[:5], "fit_nodes_omitted": 15}
    assert fitted(full, size(five)) == five  # exactly the five slowest fit
    four = fitted(full, size(five) - 1)
    assert four == {**full, "fit_nodes": slowest[:4], "fit_nodes_omitted": 16}
    assert size(four) <= size(five) - 1


def test_fitted_leaves_a_record_it_cannot_fit_as_it_is() -> None:
    full = as_sent(
        RoundRecord(2, fit_metrics={"blob": "x" * 65536}, fit_nodes=[NodeFit(1, 10)] * 3)
    )
    assert fitted(full, MAX_RECORD_BYTES) is full  # the SuperLink refuses it, as before
    small = as_sent(big_round(fits=3, evaluations=2, failures=1))
    assert fitted(small, MAX_RECORD_BYTES) is small


def test_pollen_runs_show_counts_the_failures_a_report_left_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    record = {"round": 1, "fit_results": 900, "fit_failures": ["node 7 went offline"]}
    record["fit_failures_omitted"] = 99
    summary = RunSummary(1, "app", "finished", "", 0.0, 1.0, 1, 1)
    details = RunDetails(summary, {}, "", [RoundReport(1, json.dumps(record), 1.0)])
    print_details(details, "table")
    assert "900 ok, 100 failed" in capsys.readouterr().out
