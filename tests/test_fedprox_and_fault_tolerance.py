"""FedProx sends proximal_mu to every node and aggregates as FedAvg; FaultTolerantFedAvg
keeps the model of a round whose completion rate is below its minimum, and goes on."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.errors import ConfigurationError
from pollen.records.replies import EvaluateRes, FitRes
from pollen.server import ServerApp, ServerConfig
from pollen.server.round_loop import RoundLoop, RunOutcome
from pollen.server.strategy import FaultTolerantFedAvg, FedAvg, FedProx, Strategy
from pollen.simulation import InProcessGrid


class FlakyClient(NumPyClient):
    """Adds (partition + 1) to every weight, trained on (partition + 1) examples; fails
    fit or evaluate as its node config says; reports the proximal_mu it was sent."""

    def __init__(self, context: Context) -> None:
        self.config = context.node_config
        self.step = int(self.config["partition-id"]) + 1

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        if self.config.get("fail-fit"):
            raise ValueError("fit failed")
        metrics: Metrics = {"mu": config["proximal_mu"]} if "proximal_mu" in config else {}
        return [p + np.float32(self.step) for p in parameters], self.step, metrics

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        if self.config.get("fail-evaluate"):
            raise ValueError("evaluate failed")
        return float(self.step), 1, {}


def run(strategy: Strategy, num_rounds: int, failing: dict[str, set[int]]) -> RunOutcome:
    grid = InProcessGrid(
        ClientApp(client_fn=lambda context: FlakyClient(context)),
        num_nodes=3,
        node_config=lambda i, n: {
            "partition-id": i,
            "num-partitions": n,
            **{kind: i in nodes for kind, nodes in failing.items()},
        },
    )
    app = ServerApp(config=ServerConfig(num_rounds=num_rounds, seed=1), strategy=strategy)

    async def scenario() -> RunOutcome:
        run_id, _ = await grid.create_run("test", {})
        return await RoundLoop(app, grid, run_id).run()

    return asyncio.run(scenario())


# --- FedProx ------------------------------------------------------------------------------


def test_fedprox_sends_proximal_mu_in_every_nodes_fit_config() -> None:
    strategy = FedProx(proximal_mu=0.3, on_fit_config_fn=lambda r: {"epochs": r})

    instructions = strategy.configure_fit(2, [np.zeros(1)], [1, 2, 3], random.Random(0))

    assert len(instructions) == 3
    assert all(ins.config == {"epochs": 2, "proximal_mu": 0.3} for _, ins in instructions)


def test_fedprox_proximal_mu_wins_over_the_same_key_from_on_fit_config_fn() -> None:
    strategy = FedProx(proximal_mu=0.3, on_fit_config_fn=lambda r: {"proximal_mu": 9.0})

    [(_, ins), *_] = strategy.configure_fit(1, [np.zeros(1)], [1, 2], random.Random(0))

    assert ins.config["proximal_mu"] == 0.3


def test_fedprox_aggregates_as_fedavg() -> None:
    prox = FedProx(proximal_mu=1.0).fit_aggregator(1, [np.zeros(2)])
    avg = FedAvg().fit_aggregator(1, [np.zeros(2)])
    for aggregator in (prox, avg):
        aggregator.add(1, FitRes([np.array([1.0, 2.0])], 1))
        aggregator.add(2, FitRes([np.array([5.0, 6.0])], 3))

    np.testing.assert_array_equal(prox.finish()[0], avg.finish()[0])


def test_fedprox_nodes_receive_proximal_mu_in_a_run() -> None:
    strategy = FedProx(
        proximal_mu=0.01, fraction_evaluate=0.0, initial_parameters=[np.zeros(2, np.float32)]
    )

    outcome = run(strategy, 1, {})

    [record] = outcome.history.rounds
    assert [node.metrics["mu"] for node in record.fit_nodes] == [0.01] * 3


def test_fedprox_needs_proximal_mu_as_flower_does() -> None:
    with pytest.raises(TypeError, match="proximal_mu"):
        FedProx()  # type: ignore[call-arg]


def test_fedprox_negative_proximal_mu_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigurationError, match=r"FedProx\(proximal_mu=-0.1\): must be >= 0"):
        FedProx(proximal_mu=-0.1)


# --- FaultTolerantFedAvg: the rule --------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "failures", "kept"),
    [
        (3, 0, False),
        (2, 2, False),  # 0.5 is enough
        (1, 2, True),  # 1/3 < 0.5
        (0, 3, True),
        (0, 0, True),  # no usable result keeps the model, as Flower's does
    ],
)
def test_fault_tolerant_round_is_kept_below_the_completion_rate(
    results: int, failures: int, kept: bool
) -> None:
    strategy = FaultTolerantFedAvg()

    refusal = strategy.fit_round_refusal(1, results, failures)

    assert (refusal is not None) == kept


def test_the_default_rule_is_accept_failures() -> None:
    assert FedAvg().fit_round_refusal(1, 2, 1) is None
    assert FedAvg(accept_failures=False).fit_round_refusal(1, 2, 1) == (
        "failures and accept_failures=False"
    )
    assert FedAvg(accept_failures=False).fit_round_refusal(1, 2, 0) is None


def test_fault_tolerant_evaluation_below_the_rate_reports_no_loss() -> None:
    strategy = FaultTolerantFedAvg(min_completion_rate_evaluate=0.6)
    one = [(1, EvaluateRes(2.0, 1))]
    two = [(1, EvaluateRes(2.0, 1)), (2, EvaluateRes(4.0, 3))]
    failed = RuntimeError("node 3: no answer")

    assert strategy.aggregate_evaluate(1, one, [failed, failed]) == (None, {})  # 1/3 < 0.6
    loss, _ = strategy.aggregate_evaluate(1, two, [failed])  # 2/3
    assert loss == pytest.approx((2.0 + 12.0) / 4)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"min_completion_rate_fit": 1.5}, r"min_completion_rate_fit=1.5\): must be in \[0, 1\]"),
        ({"min_completion_rate_evaluate": -0.1}, r"min_completion_rate_evaluate=-0.1"),
    ],
)
def test_completion_rates_outside_0_1_are_refused(
    arguments: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        FaultTolerantFedAvg(**arguments)  # type: ignore[arg-type]


# --- FaultTolerantFedAvg: whole runs ------------------------------------------------------


def test_a_round_below_the_completion_rate_keeps_the_model_and_the_run_goes_on() -> None:
    strategy = FaultTolerantFedAvg(initial_parameters=[np.zeros(2, np.float32)])

    outcome = run(strategy, 2, {"fail-fit": {0, 1}})

    np.testing.assert_array_equal(outcome.parameters[0], [0.0, 0.0])
    assert [(r.fit_results, len(r.fit_failures)) for r in outcome.history.rounds] == [(1, 2)] * 2


def test_a_round_at_the_completion_rate_aggregates_the_results_it_has() -> None:
    strategy = FaultTolerantFedAvg(initial_parameters=[np.zeros(2, np.float32)])

    outcome = run(strategy, 1, {"fail-fit": {0}})

    # nodes 2 and 3 (steps 2 and 3): (2*2 + 3*3) / 5
    np.testing.assert_allclose(outcome.parameters[0], [13 / 5] * 2, rtol=1e-6)


def test_a_round_in_which_every_node_failed_keeps_the_model_instead_of_ending_the_run() -> None:
    strategy = FaultTolerantFedAvg(
        initial_parameters=[np.zeros(2, np.float32)], min_completion_rate_fit=0.0
    )

    outcome = run(strategy, 2, {"fail-fit": {0, 1, 2}})

    assert len(outcome.history.rounds) == 2
    np.testing.assert_array_equal(outcome.parameters[0], [0.0, 0.0])


def test_an_evaluation_below_the_completion_rate_has_no_loss() -> None:
    strategy = FaultTolerantFedAvg(initial_parameters=[np.zeros(2, np.float32)])

    outcome = run(strategy, 1, {"fail-evaluate": {1, 2}})

    [record] = outcome.history.rounds
    assert record.evaluate_results == 1 and len(record.evaluate_failures) == 2
    assert record.evaluate_loss is None
