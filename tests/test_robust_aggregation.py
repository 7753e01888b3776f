"""FedMedian, FedTrimmedAvg, Krum, multi-Krum and Bulyan: numbers worked out by hand,
Byzantine nodes that do not move them, and configurations refused before any round."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import pytest

from pollen.aggregation.robust import (
    BulyanRule,
    KrumRule,
    aggregate_bulyan,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)
from pollen.errors import ConfigurationError, RunError
from pollen.records.replies import FitRes
from pollen.records.typing import Metrics, NDArray, NDArrays
from pollen.server.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy


def aggregate(
    strategy: Strategy, results: list[NDArrays], examples: list[int] | None = None
) -> tuple[NDArrays, Metrics]:
    aggregator = strategy.fit_aggregator(1, [np.zeros_like(a) for a in results[0]])
    for node_id, arrays in enumerate(results):
        weight = examples[node_id] if examples else 10
        aggregator.add(node_id, FitRes(arrays, weight, {"acc": float(node_id)}))
    parameters, metrics = aggregator.finish()
    assert parameters is not None
    return parameters, metrics


def points(*values: float) -> list[NDArrays]:
    """One update per value: a 1-element array and a 2-element one (value, -value)."""
    return [[np.array([v], np.float32), np.array([[v, -v]], np.float32)] for v in values]


# --- median and trimmed mean, by hand -----------------------------------------------------


def test_median_of_an_odd_count_is_the_middle_value_of_each_coordinate() -> None:
    results = [
        [np.array([1.0, 5.0, 3.0], np.float32)],
        [np.array([2.0, 0.0, 9.0], np.float32)],
        [np.array([4.0, 4.0, 4.0], np.float32)],
    ]

    parameters, _ = aggregate(FedMedian(), results, examples=[1, 1, 100])

    # per coordinate: median(1, 2, 4), median(5, 0, 4), median(3, 9, 4); examples do not weigh
    np.testing.assert_array_equal(parameters[0], [2.0, 4.0, 4.0])
    assert parameters[0].dtype == np.float32


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values() -> None:
    results = [
        [np.array([1.0, -2.0]), np.array(7.0)],
        [np.array([2.0, 8.0]), np.array(1.0)],
        [np.array([10.0, 0.0]), np.array(3.0)],
        [np.array([4.0, 6.0]), np.array(5.0)],
    ]

    parameters, _ = aggregate(FedMedian(), results)

    # sorted (1, 2, 4, 10) -> (2 + 4) / 2; (-2, 0, 6, 8) -> 3; (1, 3, 5, 7) -> 4
    np.testing.assert_array_equal(parameters[0], [3.0, 3.0])
    assert parameters[1].shape == () and float(parameters[1]) == 4.0


def test_trimmed_mean_drops_int_beta_n_values_at_each_end() -> None:
    values = [0.0, 1.0, 2.0, 3.0, 100.0]  # one coordinate
    results = [[np.array([v, -v], np.float32)] for v in values]

    trimmed, _ = aggregate(FedTrimmedAvg(beta=0.2), results)  # int(0.2 * 5) = 1 per end
    plain, _ = aggregate(FedTrimmedAvg(beta=0.0), results)
    two, _ = aggregate(FedTrimmedAvg(beta=0.4), results)  # int(0.4 * 5) = 2 per end

    np.testing.assert_allclose(trimmed[0], [(1 + 2 + 3) / 3, -(1 + 2 + 3) / 3])
    np.testing.assert_allclose(plain[0], [106 / 5, -106 / 5])
    np.testing.assert_allclose(two[0], [2.0, -2.0])


def test_trimmed_mean_with_four_values_and_beta_0_2_trims_nothing() -> None:
    results = [[np.array([v])] for v in (0.0, 1.0, 2.0, 9.0)]

    parameters, _ = aggregate(FedTrimmedAvg(), results)  # int(0.2 * 4) = 0

    np.testing.assert_allclose(parameters[0], [3.0])


def test_integer_arrays_come_back_rounded_in_their_dtype() -> None:
    results = [[np.array([1, 10], np.int64)], [np.array([2, 20], np.int64)]]

    parameters, _ = aggregate(FedMedian(), results)

    # medians 1.5 and 15: rounded half to even, as np.rint does
    np.testing.assert_array_equal(parameters[0], [2, 15])
    assert parameters[0].dtype == np.int64


# --- Krum and multi-Krum, by hand ---------------------------------------------------------


def test_krum_scores_sum_the_squared_distances_to_the_n_minus_f_minus_2_nearest() -> None:
    rule = KrumRule([np.zeros(1, np.float32)], num_malicious=0)
    for value in (0.0, 1.0, 3.0, 10.0):
        rule.add([np.array([value], np.float32)], 1)

    scores = rule.scores()
    rule.close()

    # n - f - 2 = 2 nearest: 0 -> 1 + 9; 1 -> 1 + 4; 3 -> 4 + 9; 10 -> 49 + 81
    assert scores == [10.0, 5.0, 13.0, 130.0]


def test_krum_returns_the_best_scored_update_itself() -> None:
    results = points(0.0, 1.0, 3.0, 10.0)

    parameters, _ = aggregate(Krum(min_fit_clients=4), results)

    np.testing.assert_array_equal(parameters[0], [1.0])
    np.testing.assert_array_equal(parameters[1], [[1.0, -1.0]])


def test_krum_with_one_malicious_node_looks_at_n_minus_3_neighbours() -> None:
    results = points(0.0, 1.0, 2.0, 3.0, 100.0)
    strategy = Krum(num_malicious_clients=1, min_fit_clients=5)

    parameters, _ = aggregate(strategy, results)

    # 2 nearest each (distances doubled by the second array): 0 -> 2 * (1 + 4);
    # 1 -> 2 * (1 + 1); 2 -> 2 * (1 + 1); 3 -> 2 * (1 + 4); the first of the ties wins
    np.testing.assert_array_equal(parameters[0], [1.0])


def test_multi_krum_averages_the_best_scored_updates_weighted_by_examples() -> None:
    results = points(0.0, 1.0, 3.0, 10.0)
    strategy = Krum(num_clients_to_keep=2, min_fit_clients=4)

    parameters, _ = aggregate(strategy, results, examples=[1, 3, 5, 7])

    # best two: 1 (score 5) and 0 (score 10); (1 * 0 + 3 * 1) / (1 + 3)
    np.testing.assert_allclose(parameters[0], [0.75])
    np.testing.assert_allclose(parameters[1], [[0.75, -0.75]])


def test_multi_krum_keeping_more_than_there_are_averages_them_all() -> None:
    results = points(0.0, 2.0, 4.0)

    parameters, _ = aggregate(Krum(num_clients_to_keep=5, min_fit_clients=3), results)

    np.testing.assert_allclose(parameters[0], [2.0])


# --- Bulyan, by hand ----------------------------------------------------------------------


def test_bulyan_picks_by_repeated_krum_then_averages_the_values_nearest_the_median() -> None:
    results = points(0.0, 1.0, 2.0, 3.0, 4.0, 50.0, 60.0)
    strategy = Bulyan(num_malicious_clients=1, min_fit_clients=7)

    rule = BulyanRule([np.zeros(1, np.float32), np.zeros((1, 2), np.float32)], 1)
    for arrays in results:
        rule.add(arrays, 1)
    selection = rule.selection()
    rule.close()
    parameters, _ = aggregate(strategy, results)

    # theta = 7 - 2 = 5 picks, each the Krum choice among those left (n - f - 2 nearest):
    # 2 (score 10 of 4 nearest), 1 (14, first of a tie with 3), 3 (10), 0 (16, first of a
    # tie with 4), then among 4, 50, 60 with one neighbour: 50 (100) -- a Byzantine one.
    assert [results[i][0][0] for i in selection] == [2.0, 1.0, 3.0, 0.0, 50.0]
    # beta = 5 - 2 = 3 values nearest the median 2 of (0, 1, 2, 3, 50): 1, 2, 3
    np.testing.assert_allclose(parameters[0], [2.0])
    np.testing.assert_allclose(parameters[1], [[2.0, -2.0]])


def test_bulyan_without_malicious_nodes_is_the_plain_mean() -> None:
    results = points(1.0, 2.0, 6.0)

    parameters, _ = aggregate(Bulyan(min_fit_clients=3), results, examples=[1, 1, 50])

    np.testing.assert_allclose(parameters[0], [3.0])  # theta = beta = 3, unweighted


def test_flower_named_functions_give_the_strategies_numbers() -> None:
    results = [(arrays, 1) for arrays in points(0.0, 1.0, 2.0, 3.0, 4.0, 50.0, 60.0)]

    assert float(aggregate_median(results)[0][0]) == 3.0
    # int(0.2 * 7) = 1 per end: (1 + 2 + 3 + 4 + 50) / 5
    assert float(aggregate_trimmed_avg(results, 0.2)[0][0]) == pytest.approx(12.0)
    assert float(aggregate_krum(results, 1, 0)[0][0]) == 2.0
    assert float(aggregate_bulyan(results, 1, aggregate_krum, to_keep=0)[0][0]) == 2.0
    assert len(results) == 7  # Flower's aggregate_bulyan empties the caller's list; not here


def test_fit_metrics_are_aggregated_as_fedavgs() -> None:
    _, metrics = aggregate(FedMedian(), points(1.0, 2.0), examples=[1, 3])

    assert metrics == {"acc": 0.75}  # node 0 reported 0.0, node 1 reported 1.0


# --- robustness: Byzantine nodes among honest ones ----------------------------------------

HONEST, BYZANTINE, DIM = 10, 2, 400


def federation(attack: str, seed: int) -> tuple[list[NDArrays], NDArray, NDArray]:
    """Updates of HONEST honest nodes (global model + mean direction + noise, sigma 0.1)
    and BYZANTINE attackers, shuffled; with the honest updates stacked."""
    rng = np.random.default_rng(seed)
    global_model = rng.normal(size=DIM).astype(np.float32)
    direction = rng.normal(size=DIM)
    deltas = direction + 0.1 * rng.normal(size=(HONEST + BYZANTINE, DIM))
    honest = global_model + deltas[:HONEST]
    scale = 1e3 if attack == "scaled" else -1.0
    byzantine = global_model + scale * deltas[HONEST:]
    stacked = np.vstack([honest, byzantine]).astype(np.float32)
    order = rng.permutation(len(stacked))
    results = [[stacked[i, :300].copy(), stacked[i, 300:].reshape(10, 10).copy()] for i in order]
    return results, honest.astype(np.float32), global_model


def flat(arrays: NDArrays) -> NDArray:
    return np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in arrays])


ROBUST: dict[str, Callable[[int], Strategy]] = {
    "FedMedian": lambda n: FedMedian(min_fit_clients=n),
    "FedTrimmedAvg": lambda n: FedTrimmedAvg(min_fit_clients=n, beta=0.2),
    "Krum": lambda n: Krum(min_fit_clients=n, num_malicious_clients=BYZANTINE),
    "multi-Krum": lambda n: Krum(
        min_fit_clients=n, num_malicious_clients=BYZANTINE, num_clients_to_keep=HONEST - 2
    ),
    "Bulyan": lambda n: Bulyan(min_fit_clients=n, num_malicious_clients=BYZANTINE),
}


@pytest.mark.parametrize("attack", ["scaled", "sign-flipped"])
@pytest.mark.parametrize("name", sorted(ROBUST))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_rules_stay_among_the_honest_updates(name: str, attack: str, seed: int) -> None:
    """The bound: the result is (a) inside the honest updates' range in every coordinate
    and (b) no farther from the honest mean than the farthest honest update is. Any
    honest update meets both, so a rule that does is no worse than trusting one honest
    node, whatever the attackers send (here: 1e3 x their update, or its opposite)."""
    results, honest, _ = federation(attack, seed)
    strategy = ROBUST[name](HONEST + BYZANTINE)

    parameters, _ = aggregate(strategy, results)

    result = flat(parameters)
    assert np.all(result >= honest.min(axis=0) - 1e-6)
    assert np.all(result <= honest.max(axis=0) + 1e-6)
    mean = honest.astype(np.float64).mean(axis=0)
    radius = np.linalg.norm(honest - mean, axis=1).max()
    assert np.linalg.norm(result - mean) <= radius


@pytest.mark.parametrize("attack", ["scaled", "sign-flipped"])
def test_fedavg_is_dragged_away_by_the_same_attackers(attack: str) -> None:
    results, honest, _ = federation(attack, seed=0)

    parameters, _ = aggregate(FedAvg(min_fit_clients=HONEST + BYZANTINE), results)

    mean = honest.astype(np.float64).mean(axis=0)
    radius = np.linalg.norm(honest - mean, axis=1).max()
    distance = np.linalg.norm(flat(parameters) - mean)
    # scaled: 2/12 of 1e3 x the update; flipped: the mean update shrinks to (10 - 2) / 12
    assert distance > (100 if attack == "scaled" else 2) * radius
    assert np.any(flat(parameters) > honest.max(axis=0))


# --- bad input: refused at construction, or the round stops with one line -----------------


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.9])
def test_beta_outside_0_to_half_is_refused(beta: float) -> None:
    with pytest.raises(ConfigurationError, match=r"beta=.*must be in \[0, 0.5\)") as info:
        FedTrimmedAvg(beta=beta)
    assert "\n" not in str(info.value)


def test_krum_needs_more_than_2f_plus_2_nodes_per_round() -> None:
    with pytest.raises(ConfigurationError) as info:
        Krum(num_malicious_clients=2)
    message = str(info.value)
    assert "\n" not in message
    assert "at least 7 results" in message and "set min_fit_clients=7" in message

    Krum(num_malicious_clients=2, min_fit_clients=7)
    Krum(num_malicious_clients=2, min_available_clients=7)  # fraction_fit=1.0 samples all
    with pytest.raises(ConfigurationError):
        Krum(num_malicious_clients=2, min_available_clients=7, fraction_fit=0.5)
    Krum()  # no malicious node: any number does


def test_bulyan_needs_4f_plus_3_nodes_per_round() -> None:
    with pytest.raises(ConfigurationError, match=r"at least 7 results.*min_fit_clients=6"):
        Bulyan(num_malicious_clients=1, min_fit_clients=6)
    with pytest.raises(ConfigurationError, match="at least 3 results"):
        Bulyan()  # f = 0 still needs 3, as Flower's check says; defaults sample 2

    Bulyan(num_malicious_clients=1, min_fit_clients=7)
    Bulyan(min_available_clients=3)


@pytest.mark.parametrize(
    ("build", "text"),
    [
        (lambda: Krum(num_malicious_clients=-1), "num_malicious_clients=-1"),
        (lambda: Krum(num_clients_to_keep=-1), "num_clients_to_keep=-1"),
        (lambda: Bulyan(min_fit_clients=3, first_aggregation_rule=sorted), "Krum only"),
        (lambda: Bulyan(min_fit_clients=3, to_keep=2), "to_keep=2"),
        (lambda: Bulyan(min_fit_clients=3, num_closest=2), "num_closest"),
    ],
)
def test_other_bad_arguments_are_one_line_errors(build: Callable[[], object], text: str) -> None:
    with pytest.raises(ConfigurationError, match=text) as info:
        build()
    assert "\n" not in str(info.value)


def test_a_round_that_ends_with_too_few_results_stops_with_one_line() -> None:
    strategy = Bulyan(num_malicious_clients=1, min_available_clients=8)

    with pytest.raises(RunError) as info:
        aggregate(strategy, points(0.0, 1.0, 2.0, 3.0, 4.0, 5.0))  # 6 < 7

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("round 1: 6 usable fit results;")
    assert "needs at least 7 (n >= 4f + 3)" in message

    krum = Krum(num_malicious_clients=1, min_available_clients=5)
    with pytest.raises(RunError, match="Krum with num_malicious_clients=1 needs at least 5"):
        aggregate(krum, points(0.0, 1.0, 2.0, 3.0))


# --- Flower's names, arguments and defaults -----------------------------------------------

FLOWER_FIRST = [
    "fraction_fit",
    "fraction_evaluate",
    "min_fit_clients",
    "min_evaluate_clients",
    "min_available_clients",
]
FLOWER_LAST = [
    "evaluate_fn",
    "on_fit_config_fn",
    "on_evaluate_config_fn",
    "accept_failures",
    "initial_parameters",
    "fit_metrics_aggregation_fn",
    "evaluate_metrics_aggregation_fn",
]


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (FedMedian, [*FLOWER_FIRST, *FLOWER_LAST, "inplace"]),
        (FedTrimmedAvg, [*FLOWER_FIRST, *FLOWER_LAST, "beta"]),
        (Krum, [*FLOWER_FIRST, "num_malicious_clients", "num_clients_to_keep", *FLOWER_LAST]),
        (
            Bulyan,
            [
                *FLOWER_FIRST,
                "num_malicious_clients",
                *FLOWER_LAST,
                "first_aggregation_rule",
                "aggregation_rule_kwargs",
            ],
        ),
    ],
)
def test_constructors_take_flowers_keyword_arguments(cls: type, expected: list[str]) -> None:
    parameters = inspect.signature(cls).parameters

    assert list(parameters) == expected
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in parameters.values())


def test_defaults_are_flowers() -> None:
    assert FedTrimmedAvg().beta == 0.2
    krum = Krum()
    assert (krum.num_malicious_clients, krum.num_clients_to_keep) == (0, 0)
    bulyan = Bulyan(min_fit_clients=3)
    assert bulyan.num_malicious_clients == 0
    assert bulyan.first_aggregation_rule is aggregate_krum
    for strategy in (FedMedian(), FedTrimmedAvg(), krum, bulyan):
        assert (strategy.fraction_fit, strategy.min_fit_clients, strategy.accept_failures) == (
            1.0,
            2 if strategy is not bulyan else 3,
            True,
        )
    assert repr(krum) == "Krum(accept_failures=True)"
