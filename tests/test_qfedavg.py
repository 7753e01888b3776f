"""QFedAvg: q-FFL's update worked out by hand, with the loss Flower 1.42 uses (the
server-side evaluation of the model the round starts from)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import numpy as np
import pytest

from pollen.errors import ConfigurationError, RecordError, RunError
from pollen.records.replies import FitRes
from pollen.records.typing import Config, Metrics, NDArrays
from pollen.server.strategy import QFedAvg

EvaluateFn = Callable[[int, NDArrays, Config], tuple[float, Metrics]]


def loss_of(value: float, calls: list[tuple[int, list[float]]] | None = None) -> EvaluateFn:
    """An evaluate_fn giving ``value``; it notes (round, first array) in ``calls``."""

    def evaluate_fn(server_round: int, parameters: NDArrays, _: Config) -> tuple[float, Metrics]:
        if calls is not None:
            calls.append((server_round, parameters[0].tolist()))
        return value, {}

    return evaluate_fn


def play_round(strategy: QFedAvg, server_round: int, model: NDArrays, *results: FitRes) -> NDArrays:
    aggregator = strategy.fit_aggregator(server_round, model)
    for node, result in enumerate(results):
        aggregator.add(node, result)
    parameters, _ = aggregator.finish()
    assert parameters is not None
    return parameters


def test_q1_update_by_hand() -> None:
    strategy = QFedAvg(q_param=1.0, qffl_learning_rate=0.5, evaluate_fn=loss_of(2.0))
    model = [np.array([1.0, 1.0])]

    new = play_round(
        strategy,
        1,
        model,
        FitRes([np.array([0.5, 1.0])], 10),  # g_1 = (w - w_1) / 0.5 = [1, 0]
        FitRes([np.array([1.0, 2.0])], 1),  # g_2 = [0, -2]
    )

    # delta_k = L g_k: [2, 0] and [0, -4]; h_k = q L^0 |g_k|^2 + L / lr: 1 + 4 and 4 + 4
    # w - (delta_1 + delta_2) / (h_1 + h_2); L is 2 + 1e-10
    np.testing.assert_allclose(new[0], [1 - 2 / 13, 1 + 4 / 13], rtol=1e-9)


def test_q0_is_the_unweighted_mean_of_the_returned_models() -> None:
    strategy = QFedAvg(q_param=0.0, evaluate_fn=loss_of(5.0))

    new = play_round(
        strategy,
        1,
        [np.array([0.0, 0.0])],
        FitRes([np.array([1.0, 2.0])], 1),
        FitRes([np.array([3.0, 6.0])], 100),  # examples do not weigh
    )

    # q = 0: delta_k = g_k, h_k = 1 / lr: w - lr * mean(g_k) = mean(w_k)
    np.testing.assert_allclose(new[0], [2.0, 4.0], rtol=1e-12)


def test_the_loss_is_the_server_side_evaluation_of_the_rounds_starting_model() -> None:
    calls: list[tuple[int, list[float]]] = []
    strategy = QFedAvg(q_param=0.5, qffl_learning_rate=0.1, evaluate_fn=loss_of(0.25, calls))
    model = [np.array([1.0, 2.0]), np.array([[0.5]])]

    rounds = []
    for server_round in (1, 2):
        offset = 0.1 * server_round
        results = [
            FitRes([a + offset for a in model], 2),
            FitRes([a - 0.3 for a in model], 3),
        ]
        before = model
        model = play_round(strategy, server_round, model, *results)
        # by hand: L = 0.25 (+1e-10), g_1 = -offset / 0.1 per coordinate, g_2 = 3
        L, q, lr = 0.25 + 1e-10, 0.5, 0.1
        g1, g2, n = -offset / lr, 0.3 / lr, 3  # n: coordinates of the model
        h = sum(q * L ** (q - 1) * n * g * g + L**q / lr for g in (g1, g2))
        step = L**q * (g1 + g2) / h
        for array, previous in zip(model, before, strict=True):
            np.testing.assert_allclose(array, previous - step, rtol=1e-9)
        rounds.append(model)

    assert [r for r, _ in calls] == [1, 2]
    assert calls[1][1] == pytest.approx(rounds[0][0].tolist())  # round 2's starting model


def test_a_float32_model_stays_float32() -> None:
    strategy = QFedAvg(q_param=1.0, qffl_learning_rate=0.5, evaluate_fn=loss_of(2.0))

    new = play_round(
        strategy,
        1,
        [np.array([1.0, 1.0], np.float32)],
        FitRes([np.array([0.5, 1.0], np.float32)], 1),
        FitRes([np.array([1.0, 2.0], np.float32)], 1),
    )

    assert new[0].dtype == np.float32
    np.testing.assert_allclose(new[0], [1 - 2 / 13, 1 + 4 / 13], rtol=1e-6)


def test_results_are_folded_in_not_kept() -> None:
    aggregator = QFedAvg(evaluate_fn=loss_of(1.0)).fit_aggregator(1, [np.zeros(2, np.float32)])
    update = np.ones(2, np.float32)
    alive = weakref.ref(update)

    aggregator.add(1, FitRes([update], 1))
    del update
    gc.collect()

    assert alive() is None


def test_a_result_of_the_wrong_shape_is_rejected() -> None:
    aggregator = QFedAvg(evaluate_fn=loss_of(1.0)).fit_aggregator(1, [np.zeros(2)])

    with pytest.raises(RecordError, match="shapes"):
        aggregator.add(1, FitRes([np.zeros(3)], 1))


def test_an_evaluate_override_gives_the_loss_too() -> None:
    class Evaluated(QFedAvg):
        def evaluate(self, server_round: int, parameters: NDArrays) -> tuple[float, Metrics]:
            return 2.0, {}

    new = play_round(
        Evaluated(q_param=1.0, qffl_learning_rate=0.5),
        1,
        [np.array([1.0, 1.0])],
        FitRes([np.array([0.5, 1.0])], 1),
        FitRes([np.array([1.0, 2.0])], 1),
    )

    np.testing.assert_allclose(new[0], [1 - 2 / 13, 1 + 4 / 13], rtol=1e-9)


# --- bad input ----------------------------------------------------------------------------


def test_without_server_side_evaluation_qfedavg_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="evaluate_fn") as error:
        QFedAvg()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"q_param": -0.1}, r"QFedAvg\(q_param=-0.1\): must be >= 0"),
        ({"qffl_learning_rate": 0.0}, r"QFedAvg\(qffl_learning_rate=0.0\): must be > 0"),
        ({"qffl_learning_rate": -1.0}, r"qffl_learning_rate=-1.0"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(arguments: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as error:
        QFedAvg(evaluate_fn=loss_of(1.0), **arguments)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_an_evaluation_without_a_loss_stops_the_round_with_a_reason() -> None:
    strategy = QFedAvg(evaluate_fn=lambda r, p, c: None)

    with pytest.raises(
        RunError, match="round 1: QFedAvg's server-side evaluation returned no loss"
    ):
        strategy.fit_aggregator(1, [np.zeros(2)])


@pytest.mark.parametrize("loss", [-0.5, float("nan"), float("inf")])
def test_a_loss_q_ffl_cannot_raise_to_a_power_stops_the_round(loss: float) -> None:
    strategy = QFedAvg(evaluate_fn=loss_of(loss))

    with pytest.raises(RunError, match="needs a finite loss >= 0"):
        strategy.fit_aggregator(1, [np.zeros(2)])
