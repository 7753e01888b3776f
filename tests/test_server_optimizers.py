"""FedAvgM and the FedOpt family (FedAdagrad, FedAdam, FedYogi): the global model after
each round equals the server optimizer's formula worked out by hand, state carried over
rounds, Flower 1.42's quirks included; and a whole FedAdam run on virtual nodes."""

from __future__ import annotations

import asyncio
import gc
import math
import weakref
from collections.abc import Callable

import numpy as np
import pytest

from pollen.aggregation.blocks import BLOCK
from pollen.aggregation.server_optimizers import ServerAdam
from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.records.replies import FitRes
from pollen.records.typing import ndarrays_to_parameters
from pollen.server import ServerApp, ServerConfig
from pollen.server.round_loop import RoundLoop, RunOutcome
from pollen.server.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedOpt, FedYogi
from pollen.simulation import InProcessGrid

Update = Callable[[int, float, float, dict[str, float]], float]
"""One coordinate's step: (round, x, d, that coordinate's optimizer state) -> new x."""


def play_round(
    strategy: FedAvg, server_round: int, model: NDArrays, *offsets: tuple[list[float], int]
) -> NDArrays:
    """One round in which each node returns ``model + offset`` trained on ``examples``."""
    aggregator = strategy.fit_aggregator(server_round, model)
    for node, (offset, examples) in enumerate(offsets):
        update = [model[0] + np.asarray(offset, model[0].dtype)]
        aggregator.add(node, FitRes(update, examples))
    parameters, _ = aggregator.finish()
    assert parameters is not None
    return parameters


# Three rounds of two nodes; the weighted mean minus the model, d, is worked out per round:
ROUNDS = [
    # (1*[4, -4] + 3*[0, 4]) / 4 = [1, 2]
    ([([4.0, -4.0], 1), ([0.0, 4.0], 3)], [1.0, 2.0]),
    # (2*[-3, 0] + 1*[0, 0]) / 3 = [-2, 0]: the second coordinate does not move
    ([([-3.0, 0.0], 2), ([0.0, 0.0], 1)], [-2.0, 0.0]),
    # (1*[1, 1] + 1*[0, 3]) / 2 = [0.5, 2]
    ([([1.0, 1.0], 1), ([0.0, 3.0], 1)], [0.5, 2.0]),
]
X0 = [0.5, -1.0]


def three_rounds(strategy: FedAvg, dtype: type = np.float64) -> list[NDArrays]:
    model: NDArrays = [np.array(X0, dtype)]
    models = []
    for server_round, (offsets, _) in enumerate(ROUNDS, start=1):
        model = play_round(strategy, server_round, model, *offsets)
        models.append(model)
    return models


def by_hand(update: Update) -> list[list[float]]:
    """x_t per round, coordinate by coordinate, from ``update(t, x, d, state) -> x``."""
    expected, x = [], list(X0)
    states: list[dict[str, float]] = [{} for _ in x]
    for t, (_, d) in enumerate(ROUNDS, start=1):
        x = [update(t, xi, di, s) for xi, di, s in zip(x, d, states, strict=True)]
        expected.append(x)
    return expected


def assert_rounds(models: list[NDArrays], expected: list[list[float]], rtol: float) -> None:
    for server_round, (model, values) in enumerate(zip(models, expected, strict=True), start=1):
        np.testing.assert_allclose(model[0], values, rtol=rtol, err_msg=f"round {server_round}")


# --- FedAvgM ------------------------------------------------------------------------------


def test_fedavgm_momentum_accumulates_the_pseudo_gradient_over_rounds() -> None:
    strategy = FedAvgM(
        initial_parameters=[np.array(X0)], server_learning_rate=0.5, server_momentum=0.9
    )

    models = three_rounds(strategy)

    # g = x - mean = -d; m_1 = g_1, m_t = 0.9 m_(t-1) + g_t; x <- x - 0.5 m
    m1 = [-1.0, -2.0]
    m2 = [0.9 * m1[0] + 2.0, 0.9 * m1[1] + 0.0]  # [1.1, -1.8]
    m3 = [0.9 * m2[0] - 0.5, 0.9 * m2[1] - 2.0]  # [0.49, -3.62]
    x1 = [0.5 + 0.5, -1.0 + 1.0]
    x2 = [x1[0] - 0.5 * m2[0], x1[1] - 0.5 * m2[1]]
    x3 = [x2[0] - 0.5 * m3[0], x2[1] - 0.5 * m3[1]]
    assert_rounds(models, [x1, x2, x3], rtol=1e-12)
    assert strategy.momentum_vector is not None
    np.testing.assert_allclose(strategy.momentum_vector[0], m3)


def test_fedavgm_without_momentum_scales_the_step_by_the_server_learning_rate() -> None:
    strategy = FedAvgM(initial_parameters=[np.array(X0)], server_learning_rate=2.0)

    models = three_rounds(strategy)

    # x <- x - 2 (x - mean) = x + 2 d, no memory of earlier rounds
    x1 = [0.5 + 2, -1.0 + 4]
    x2 = [x1[0] - 4, x1[1]]
    x3 = [x2[0] + 1, x2[1] + 4]
    assert_rounds(models, [x1, x2, x3], rtol=1e-12)
    assert strategy.momentum_vector is None


def test_fedavgm_with_its_defaults_is_fedavg_and_needs_no_initial_model() -> None:
    strategy = FedAvgM()

    model = play_round(strategy, 1, [np.array(X0)], *ROUNDS[0][0])

    np.testing.assert_allclose(model[0], [0.5 + 1, -1.0 + 2])


# --- the FedOpt family --------------------------------------------------------------------


def adagrad(eta: float, tau: float) -> Update:
    def update(t: int, x: float, d: float, s: dict[str, float]) -> float:
        s["m"] = d  # beta_1 = 0
        s["v"] = s.get("v", 0.0) + d * d
        return x + eta * s["m"] / (math.sqrt(s["v"]) + tau)

    return update


def adam(eta: float, beta_1: float, beta_2: float, tau: float) -> Update:
    def update(t: int, x: float, d: float, s: dict[str, float]) -> float:
        s["m"] = beta_1 * s.get("m", 0.0) + (1 - beta_1) * d
        s["v"] = beta_2 * s.get("v", 0.0) + (1 - beta_2) * d * d
        # Flower's bias correction: t + 1
        step = eta * math.sqrt(1 - beta_2 ** (t + 1)) / (1 - beta_1 ** (t + 1))
        return x + step * s["m"] / (math.sqrt(s["v"]) + tau)

    return update


def yogi(eta: float, beta_1: float, beta_2: float, tau: float) -> Update:
    def update(t: int, x: float, d: float, s: dict[str, float]) -> float:
        s["m"] = beta_1 * s.get("m", 0.0) + (1 - beta_1) * d
        v = s.get("v", 0.0)
        s["v"] = v - (1 - beta_2) * d * d * float(np.sign(v - d * d))
        return x + eta * s["m"] / (math.sqrt(s["v"]) + tau)

    return update


def test_fedadagrad_first_round_moves_each_coordinate_by_eta() -> None:
    models = three_rounds(FedAdagrad(initial_parameters=[np.array(X0)]))

    # m = d, v = d^2: x + 0.1 d / (|d| + 1e-9)
    np.testing.assert_allclose(models[0][0], [0.5 + 0.1, -1.0 + 0.1], rtol=1e-8)


def test_fedadagrad_accumulates_squared_pseudo_gradients() -> None:
    models = three_rounds(FedAdagrad(initial_parameters=[np.array(X0)], eta=0.3, tau=1e-6))

    assert_rounds(models, by_hand(adagrad(0.3, 1e-6)), rtol=1e-12)


def test_fedadam_first_round_uses_flowers_bias_correction_with_round_plus_one() -> None:
    models = three_rounds(FedAdam(initial_parameters=[np.array(X0)]))

    # m = 0.1 d, v = 0.01 d^2 so m / sqrt(v) = sign(d); step 0.1 sqrt(1 - 0.99^2) / (1 - 0.9^2)
    # (the textbook's correction, with t = 1, would step by 0.1)
    step = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    np.testing.assert_allclose(models[0][0], [0.5 + step, -1.0 + step], rtol=1e-8)


def test_fedadam_keeps_its_moments_across_rounds() -> None:
    strategy = FedAdam(initial_parameters=[np.array(X0)], eta=0.2, beta_1=0.8, beta_2=0.9)

    models = three_rounds(strategy)

    assert_rounds(models, by_hand(adam(0.2, 0.8, 0.9, 1e-9)), rtol=1e-12)
    # the second coordinate did not move in round 2 (d = 0) but the model did: momentum
    assert models[1][0][1] != models[0][0][1]
    assert strategy.m_t is not None and strategy.v_t is not None
    # m = 0.8 (0.8 (0.2*2) + 0) + 0.2*2 for the second coordinate
    assert strategy.m_t[0][1] == pytest.approx(0.8 * 0.8 * 0.4 + 0.4)


def test_fedyogi_second_moment_moves_by_the_sign_of_v_minus_d_squared() -> None:
    strategy = FedYogi(initial_parameters=[np.array(X0)])

    models = three_rounds(strategy)

    assert_rounds(models, by_hand(yogi(1e-2, 0.9, 0.99, 1e-3)), rtol=1e-12)
    # round 1: v = 0 - 0.01 d^2 sign(0 - d^2) = 0.01 d^2 ...
    first = [X0[i] + 0.01 * 0.1 * d / (0.1 * abs(d) + 1e-3) for i, d in enumerate([1.0, 2.0])]
    np.testing.assert_allclose(models[0][0], first, rtol=1e-12)


def test_fedopt_itself_aggregates_as_fedavg() -> None:
    model = play_round(FedOpt(initial_parameters=[np.array(X0)]), 1, [np.array(X0)], *ROUNDS[0][0])

    np.testing.assert_allclose(model[0], [1.5, 1.0])


@pytest.mark.parametrize(
    ("strategy", "update"),
    [
        (lambda: FedAdagrad(initial_parameters=[np.array(X0, np.float32)]), adagrad(0.1, 1e-9)),
        (
            lambda: FedAdam(initial_parameters=[np.array(X0, np.float32)]),
            adam(0.1, 0.9, 0.99, 1e-9),
        ),
        (
            lambda: FedYogi(initial_parameters=[np.array(X0, np.float32)]),
            yogi(0.01, 0.9, 0.99, 1e-3),
        ),
    ],
    ids=["FedAdagrad", "FedAdam", "FedYogi"],
)
def test_a_float32_model_stays_float32_and_matches_the_formula_to_float32_precision(
    strategy: Callable[[], FedAvg], update: Update
) -> None:
    models = three_rounds(strategy(), np.float32)

    assert all(model[0].dtype == np.float32 for model in models)
    assert_rounds(models, by_hand(update), rtol=2e-6)


def test_weighting_counts_examples_before_the_server_step() -> None:
    # one node with 3x the examples pulls the mean (and so d) three times as hard
    strategy = FedAdagrad(initial_parameters=[np.zeros(1)], eta=1.0)
    model = play_round(strategy, 1, [np.zeros(1)], ([4.0], 1), ([-4.0], 3))

    # d = (4 - 12) / 4 = -2: Adagrad's first step is eta * sign(d)
    np.testing.assert_allclose(model[0], [-1.0], rtol=1e-8)


def test_integer_arrays_are_stepped_and_rounded_back() -> None:
    strategy = FedAvgM(
        initial_parameters=[np.zeros(2, np.float32), np.array(10, np.int64)],
        server_learning_rate=2.0,
    )
    aggregator = strategy.fit_aggregator(1, [np.zeros(2, np.float32), np.array(10, np.int64)])
    aggregator.add(1, FitRes([np.ones(2, np.float32), np.array(12, np.int64)], 1))
    model, _ = aggregator.finish()

    assert model is not None
    # x - 2 (x - mean): 10 - 2 (10 - 12) = 14
    assert model[1].dtype == np.int64 and model[1].shape == () and int(model[1]) == 14
    np.testing.assert_array_equal(model[0], [2.0, 2.0])


def test_a_round_without_results_leaves_the_model_and_the_moments_alone() -> None:
    strategy = FedAdam(initial_parameters=[np.array(X0)])

    parameters, metrics = strategy.fit_aggregator(1, [np.array(X0)]).finish()

    assert (parameters, metrics) == (None, {})
    assert strategy.m_t is None


def test_a_fresh_fedadam_starting_at_a_later_round_restarts_its_moments_at_zero() -> None:
    # what a resumed run does: the moments are not in the checkpoint, the round number is
    strategy = FedAdam(initial_parameters=[np.array(X0)])

    model = play_round(strategy, 3, [np.array(X0)], *ROUNDS[0][0])

    step = 0.1 * math.sqrt(1 - 0.99**4) / (1 - 0.9**4)
    np.testing.assert_allclose(model[0], [0.5 + step, -1.0 + step], rtol=1e-8)


def test_results_are_folded_in_not_kept() -> None:
    strategy = FedAdam(initial_parameters=[np.array(X0, np.float32)])
    aggregator = strategy.fit_aggregator(1, [np.array(X0, np.float32)])
    update = np.array([1.0, 2.0], np.float32)
    alive = weakref.ref(update)

    aggregator.add(1, FitRes([update], 1))
    del update
    gc.collect()

    assert alive() is None  # memory is O(model) whatever the number of nodes


def test_a_model_larger_than_one_block_gets_the_same_step_everywhere() -> None:
    size = BLOCK + 7
    optimizer = ServerAdam(0.1, 0.9, 0.99, 1e-9)
    current = [np.linspace(-1, 1, size, dtype=np.float32).reshape(-1, 1)]
    mean = [current[0] + np.float32(0.25)]

    new = optimizer.step(1, current, mean)

    step = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    np.testing.assert_allclose(new[0], current[0] + step, rtol=1e-6, atol=1e-6)
    assert new[0].shape == (size, 1)


def test_initial_parameters_may_be_flower_parameters() -> None:
    strategy = FedAdam(initial_parameters=ndarrays_to_parameters([np.array(X0)]))

    [initial] = strategy.initialize_parameters() or []

    np.testing.assert_array_equal(initial, X0)


# --- a whole run --------------------------------------------------------------------------


class StepClient(NumPyClient):
    """Adds (partition + 1) to every weight, trained on (partition + 1) examples."""

    def __init__(self, context: Context) -> None:
        self.step = int(context.node_config["partition-id"]) + 1

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        return [p + np.float32(self.step) for p in parameters], self.step, {}


def test_fedadam_moves_the_model_of_a_whole_run_as_its_formula_says() -> None:
    grid = InProcessGrid(ClientApp(client_fn=lambda context: StepClient(context)), num_nodes=3)
    strategy = FedAdam(
        initial_parameters=[np.zeros(3, np.float32)],
        min_available_clients=3,
        fraction_evaluate=0.0,
    )
    app = ServerApp(config=ServerConfig(num_rounds=3, seed=1), strategy=strategy)

    async def scenario() -> RunOutcome:
        run_id, _ = await grid.create_run("test", {})
        return await RoundLoop(app, grid, run_id).run()

    outcome = asyncio.run(scenario())

    d = (1 * 1 + 2 * 2 + 3 * 3) / 6  # the same pseudo-gradient every round
    x, m, v = 0.0, 0.0, 0.0
    for t in (1, 2, 3):
        m = 0.9 * m + 0.1 * d
        v = 0.99 * v + 0.01 * d * d
        x += 0.1 * math.sqrt(1 - 0.99 ** (t + 1)) / (1 - 0.9 ** (t + 1)) * m / (math.sqrt(v) + 1e-9)
    np.testing.assert_allclose(outcome.parameters[0], [x] * 3, rtol=1e-6)
    assert outcome.parameters[0].dtype == np.float32
    assert [r.fit_results for r in outcome.history.rounds] == [3, 3, 3]
