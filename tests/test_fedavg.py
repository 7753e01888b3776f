"""FedAvg: weighted means checked against numbers worked out by hand, and node sampling."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pollen.aggregation.weighted_mean import (
    RunningWeightedMean,
    weighted_loss_avg,
    weighted_metrics_avg,
)
from pollen.errors import ConfigurationError, RecordError
from pollen.records.replies import EvaluateRes, FitRes
from pollen.records.typing import ndarrays_to_parameters
from pollen.server.server_app import ServerApp, ServerConfig
from pollen.server.strategy import EvaluateIns, FedAvg, FitIns


def aggregate(reference: list[np.ndarray], *results: FitRes, strategy: FedAvg | None = None):
    aggregator = (strategy or FedAvg()).fit_aggregator(1, reference)
    for node_id, result in enumerate(results):
        aggregator.add(node_id, result)
    return aggregator.finish()


# --- the weighted mean, by hand -----------------------------------------------------------


def test_fedavg_weights_each_update_by_its_examples() -> None:
    reference = [np.zeros(2, np.float64), np.zeros((2, 2), np.float64)]
    a = FitRes([np.array([1.0, 2.0]), np.array([[0.0, 4.0], [8.0, -4.0]])], num_examples=1)
    b = FitRes([np.array([5.0, 6.0]), np.array([[4.0, 0.0], [0.0, 4.0]])], num_examples=3)

    parameters, _ = aggregate(reference, a, b)

    # (1*a + 3*b) / 4
    np.testing.assert_allclose(parameters[0], [4.0, 5.0])
    np.testing.assert_allclose(parameters[1], [[3.0, 1.0], [2.0, 2.0]])


def test_fedavg_of_one_result_is_that_result() -> None:
    update = [np.array([0.5, -1.5], np.float32)]

    parameters, _ = aggregate([np.zeros(2, np.float32)], FitRes(update, 17))

    np.testing.assert_array_equal(parameters[0], update[0])


def test_fedavg_with_three_results_and_uneven_weights() -> None:
    results = [
        FitRes([np.array([10.0])], 2),
        FitRes([np.array([20.0])], 3),
        FitRes([np.array([40.0])], 5),
    ]

    parameters, _ = aggregate([np.zeros(1)], *results)

    # (2*10 + 3*20 + 5*40) / 10 = 280 / 10
    np.testing.assert_allclose(parameters[0], [28.0])


def test_integer_arrays_are_rounded_not_truncated() -> None:
    reference = [np.zeros(3, np.int64)]
    a = FitRes([np.array([1, 2, 0], np.int64)], 1)
    b = FitRes([np.array([2, 3, 1], np.int64)], 3)

    parameters, _ = aggregate(reference, a, b)

    # (1*[1, 2, 0] + 3*[2, 3, 1]) / 4 = [1.75, 2.75, 0.75]
    np.testing.assert_array_equal(parameters[0], [2, 3, 1])
    assert parameters[0].dtype == np.int64


def test_bool_arrays_are_averaged_as_a_weighted_vote() -> None:
    reference = [np.zeros(2, bool)]
    a = FitRes([np.array([True, False])], 1)
    b = FitRes([np.array([False, True])], 3)

    parameters, _ = aggregate(reference, a, b)

    np.testing.assert_array_equal(parameters[0], [False, True])
    assert parameters[0].dtype == np.bool_


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.uint8])
def test_result_keeps_the_reference_dtype(dtype: type) -> None:
    reference = [np.zeros(2, dtype)]
    update = [np.array([2.0, 4.0], np.float64)]  # the node sent float64

    parameters, _ = aggregate(reference, FitRes(update, 1), FitRes(update, 2))

    assert parameters[0].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(parameters[0], np.array([2, 4], dtype))


def test_complex_arrays_are_averaged() -> None:
    reference = [np.zeros(1, np.complex64)]
    a = FitRes([np.array([1 + 1j], np.complex64)], 1)
    b = FitRes([np.array([5 - 3j], np.complex64)], 3)

    parameters, _ = aggregate(reference, a, b)

    np.testing.assert_allclose(parameters[0], [4 - 2j])
    assert parameters[0].dtype == np.complex64


def test_0d_arrays_are_averaged() -> None:
    parameters, _ = aggregate(
        [np.array(0.0)], FitRes([np.array(1.0)], 3), FitRes([np.array(5.0)], 1)
    )

    assert parameters[0].shape == ()
    assert float(parameters[0]) == 2.0


@pytest.mark.parametrize(
    "dtype",
    [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, bool],
)
def test_0d_integer_arrays_stay_arrays_and_are_rounded(dtype: type) -> None:
    # BatchNorm's num_batches_tracked: a 0-d int64 array in every state_dict
    reference = [np.zeros(2, np.float32), np.array(0, dtype)]
    a = FitRes([np.ones(2, np.float32), np.array(1, dtype)], 1)
    b = FitRes([np.ones(2, np.float32), np.array(0 if dtype is bool else 2, dtype)], 3)

    parameters, _ = aggregate(reference, a, b)

    assert isinstance(parameters[1], np.ndarray)
    assert parameters[1].shape == ()
    assert parameters[1].dtype == np.dtype(dtype)
    # (1*1 + 3*2) / 4 = 1.75 -> 2; bool: (1*True + 3*False) / 4 = 0.25 -> False
    assert parameters[1] == (False if dtype is bool else 2)


def test_finish_with_nothing_added_returns_none_and_no_metrics() -> None:
    assert aggregate([np.zeros(3)]) == (None, {})


def test_aggregation_does_not_modify_the_results() -> None:
    update = np.array([1.0, 2.0])

    aggregate([np.zeros(2)], FitRes([update], 3), FitRes([np.array([3.0, 4.0])], 1))

    np.testing.assert_array_equal(update, [1.0, 2.0])


# --- refused results ----------------------------------------------------------------------


def test_result_with_wrong_shape_is_refused_stating_both_shapes() -> None:
    aggregator = FedAvg().fit_aggregator(1, [np.zeros((2, 3)), np.zeros(4)])

    with pytest.raises(RecordError) as info:
        aggregator.add(1, FitRes([np.zeros((3, 2)), np.zeros(4)], 5))

    message = str(info.value)
    assert "(3, 2), (4,)" in message  # what the node returned
    assert "(2, 3), (4,)" in message  # what the global model has


def test_result_with_wrong_number_of_arrays_is_refused_stating_both() -> None:
    aggregator = FedAvg().fit_aggregator(1, [np.zeros(2), np.zeros(3)])

    with pytest.raises(RecordError) as info:
        aggregator.add(1, FitRes([np.zeros(2)], 5))

    message = str(info.value)
    assert "1 arrays" in message and "(2,)" in message
    assert "2 arrays" in message and "(2,), (3,)" in message


@pytest.mark.parametrize("num_examples", [0, -1])
def test_result_without_training_examples_is_refused(num_examples: int) -> None:
    aggregator = FedAvg().fit_aggregator(1, [np.zeros(2)])

    with pytest.raises(RecordError, match="0 training examples"):
        aggregator.add(1, FitRes([np.ones(2)], num_examples))


def test_refused_results_do_not_count_in_the_mean_or_metrics() -> None:
    aggregator = FedAvg().fit_aggregator(1, [np.zeros(2)])
    aggregator.add(1, FitRes([np.array([1.0, 1.0])], 1, {"acc": 0.5}))
    with pytest.raises(RecordError):
        aggregator.add(2, FitRes([np.zeros(3)], 100, {"acc": 0.0}))
    with pytest.raises(RecordError):
        aggregator.add(3, FitRes([np.zeros(2)], 0, {"acc": 0.0}))
    aggregator.add(4, FitRes([np.array([3.0, 5.0])], 1, {"acc": 1.0}))

    parameters, metrics = aggregator.finish()

    np.testing.assert_allclose(parameters[0], [2.0, 3.0])
    assert metrics == {"acc": 0.75}


def test_complex_result_for_a_real_model_is_refused_with_record_error() -> None:
    # A node can send any numeric dtype; one that cannot be cast into the model's
    # accumulator must be rejected as that node's fault, not crash the round.
    mean = RunningWeightedMean([np.zeros(2)])

    with pytest.raises(RecordError):
        mean.add([np.array([1 + 1j, 2 + 0j])], 1)


def test_a_result_refused_midway_leaves_the_running_mean_untouched() -> None:
    mean = RunningWeightedMean([np.zeros(2), np.zeros(2)])

    with pytest.raises((RecordError, TypeError)):
        mean.add([np.array([100.0, 100.0]), np.array([1j, 1j])], 1)
    mean.add([np.array([1.0, 1.0]), np.array([2.0, 2.0])], 1)

    parameters = mean.result()
    np.testing.assert_allclose(parameters[0], [1.0, 1.0])
    np.testing.assert_allclose(parameters[1], [2.0, 2.0])


# --- RunningWeightedMean directly -----------------------------------------------------------


def test_running_mean_counts_results_and_weights() -> None:
    mean = RunningWeightedMean([np.zeros(1)])
    assert mean.result() is None

    mean.add([np.array([2.0])], 3)
    mean.add([np.array([6.0])], 1)

    assert (mean.count, mean.total_weight) == (2, 4)
    np.testing.assert_allclose(mean.result()[0], [3.0])


def test_running_mean_check_accepts_matching_arrays() -> None:
    mean = RunningWeightedMean([np.zeros((2, 2), np.float32)])

    mean.check([np.ones((2, 2), np.float64)])  # no error


# --- loss and metrics -----------------------------------------------------------------------


def test_fit_metrics_are_averaged_weighted_by_examples() -> None:
    _, metrics = aggregate(
        [np.zeros(1)],
        FitRes([np.zeros(1)], 1, {"acc": 0.5, "loss": 2.0}),
        FitRes([np.zeros(1)], 3, {"acc": 0.9, "loss": 1.0}),
    )

    # acc: (1*0.5 + 3*0.9) / 4 = 0.8; loss: (1*2 + 3*1) / 4 = 1.25
    assert metrics == pytest.approx({"acc": 0.8, "loss": 1.25})


def test_fit_metrics_aggregation_fn_replaces_the_default() -> None:
    seen = []

    def total_examples(results):
        seen.extend(results)
        return {"examples": sum(n for n, _ in results)}

    strategy = FedAvg(fit_metrics_aggregation_fn=total_examples)
    _, metrics = aggregate(
        [np.zeros(1)],
        FitRes([np.zeros(1)], 4, {"acc": 1.0}),
        FitRes([np.zeros(1)], 6, {"acc": 0.0}),
        strategy=strategy,
    )

    assert metrics == {"examples": 10}
    assert seen == [(4, {"acc": 1.0}), (6, {"acc": 0.0})]


def test_weighted_loss_avg_by_hand() -> None:
    # (1*2.0 + 3*4.0) / 4 = 3.5
    assert weighted_loss_avg([(1, 2.0), (3, 4.0)]) == pytest.approx(3.5)
    # (10*0.1 + 30*0.5 + 60*0.2) / 100 = 0.28
    assert weighted_loss_avg([(10, 0.1), (30, 0.5), (60, 0.2)]) == pytest.approx(0.28)


def test_weighted_loss_avg_without_examples_is_the_plain_mean() -> None:
    assert weighted_loss_avg([(0, 1.0), (0, 3.0)]) == pytest.approx(2.0)
    assert weighted_loss_avg([]) == 0.0


def test_weighted_metrics_avg_by_hand() -> None:
    results = [
        (1, {"acc": 0.5, "f1": 0.2, "name": "a", "converged": True}),
        (3, {"acc": 0.9}),
        (4, {"acc": 0.1, "f1": 0.6, "count": 7}),
    ]

    metrics = weighted_metrics_avg(results)

    # acc: (0.5 + 2.7 + 0.4) / 8 = 0.45; f1 only from the 1st and 3rd:
    # (0.2 + 2.4) / 5 = 0.52; count: 7. Strings and bools are not averaged.
    assert metrics == pytest.approx({"acc": 0.45, "f1": 0.52, "count": 7.0})


def test_weighted_metrics_avg_of_nothing_is_empty() -> None:
    assert weighted_metrics_avg([]) == {}


def test_aggregate_evaluate_by_hand() -> None:
    results = [
        (1, EvaluateRes(loss=2.0, num_examples=1, metrics={"acc": 0.5})),
        (2, EvaluateRes(loss=4.0, num_examples=3, metrics={"acc": 0.9})),
    ]

    loss, metrics = FedAvg().aggregate_evaluate(1, results)

    assert loss == pytest.approx(3.5)
    assert metrics == pytest.approx({"acc": 0.8})


def test_aggregate_evaluate_without_results_gives_no_loss() -> None:
    assert FedAvg().aggregate_evaluate(1, []) == (None, {})


def test_evaluate_metrics_aggregation_fn_is_used() -> None:
    strategy = FedAvg(evaluate_metrics_aggregation_fn=lambda results: {"n": len(results)})

    _, metrics = strategy.aggregate_evaluate(1, [(1, EvaluateRes(1.0, 1)), (2, EvaluateRes(1, 1))])

    assert metrics == {"n": 2}


# --- sampling -------------------------------------------------------------------------------

NODES = list(range(100, 120))


def fit_nodes(strategy: FedAvg, nodes: list[int], seed: int = 7) -> list[int]:
    return [n for n, _ in strategy.configure_fit(1, [], nodes, random.Random(seed))]


def test_configure_fit_with_the_same_seed_picks_the_same_nodes() -> None:
    strategy = FedAvg(fraction_fit=0.3)

    first = fit_nodes(strategy, NODES, seed=42)
    again = fit_nodes(strategy, NODES, seed=42)
    shuffled = fit_nodes(strategy, list(reversed(NODES)), seed=42)

    assert first == again == shuffled


def test_configure_fit_with_different_seeds_can_pick_different_nodes() -> None:
    strategy = FedAvg(fraction_fit=0.3)

    picks = {tuple(fit_nodes(strategy, NODES, seed=seed)) for seed in range(10)}

    assert len(picks) > 1


@pytest.mark.parametrize(
    ("fraction", "minimum", "expected"),
    [(1.0, 2, 20), (0.5, 2, 10), (0.25, 2, 5), (0.1, 2, 2), (0.1, 5, 5), (0.01, 1, 1)],
)
def test_configure_fit_samples_fraction_of_nodes_but_at_least_the_minimum(
    fraction: float, minimum: int, expected: int
) -> None:
    strategy = FedAvg(fraction_fit=fraction, min_fit_clients=minimum)

    chosen = fit_nodes(strategy, NODES)

    assert len(chosen) == expected
    assert len(set(chosen)) == expected
    assert set(chosen) <= set(NODES)


@pytest.mark.parametrize("available", [0, 1, 2, 3])
def test_configure_fit_never_samples_more_nodes_than_available(available: int) -> None:
    strategy = FedAvg(fraction_fit=1.0, min_fit_clients=5)

    chosen = fit_nodes(strategy, NODES[:available])

    assert sorted(chosen) == NODES[:available]


def test_configure_fit_passes_on_fit_config_fn_config_to_every_node() -> None:
    rounds = []

    def fit_config(server_round: int) -> dict:
        rounds.append(server_round)
        return {"server_round": server_round, "lr": 0.05, "tag": "x"}

    strategy = FedAvg(on_fit_config_fn=fit_config)

    instructions = strategy.configure_fit(3, [], [1, 2, 3], random.Random(0))

    assert rounds == [3]
    assert len(instructions) == 3
    for _, ins in instructions:
        assert isinstance(ins, FitIns)
        assert ins.config == {"server_round": 3, "lr": 0.05, "tag": "x"}


def test_each_node_gets_its_own_copy_of_the_fit_config() -> None:
    strategy = FedAvg(on_fit_config_fn=lambda r: {"lr": 0.1})
    (_, first), (_, second) = strategy.configure_fit(1, [], [1, 2], random.Random(0))

    first.config["lr"] = 99

    assert second.config == {"lr": 0.1}


def test_configure_fit_without_config_fn_sends_empty_config() -> None:
    instructions = FedAvg().configure_fit(1, [], [1, 2], random.Random(0))

    assert [ins.config for _, ins in instructions] == [{}, {}]


def test_configure_evaluate_returns_nothing_when_fraction_evaluate_is_zero() -> None:
    strategy = FedAvg(fraction_evaluate=0.0, on_evaluate_config_fn=lambda r: {"x": 1})

    assert strategy.configure_evaluate(1, [], NODES, random.Random(0)) == []


def test_configure_evaluate_samples_and_passes_config() -> None:
    strategy = FedAvg(
        fraction_evaluate=0.5, min_evaluate_clients=2, on_evaluate_config_fn=lambda r: {"r": r}
    )

    instructions = strategy.configure_evaluate(4, [], NODES, random.Random(1))

    assert len(instructions) == 10
    assert all(isinstance(ins, EvaluateIns) and ins.config == {"r": 4} for _, ins in instructions)
    again = strategy.configure_evaluate(4, [], NODES, random.Random(1))
    assert [n for n, _ in instructions] == [n for n, _ in again]


# --- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("fraction_fit", [0, 0.0, -0.5, 1.5, 2])
def test_fraction_fit_outside_zero_one_is_refused(fraction_fit: float) -> None:
    with pytest.raises(ConfigurationError, match="fraction_fit"):
        FedAvg(fraction_fit=fraction_fit)


@pytest.mark.parametrize("fraction_evaluate", [-0.1, 1.01])
def test_fraction_evaluate_outside_zero_one_is_refused(fraction_evaluate: float) -> None:
    with pytest.raises(ConfigurationError, match="fraction_evaluate"):
        FedAvg(fraction_evaluate=fraction_evaluate)


@pytest.mark.parametrize(
    "name", ["min_fit_clients", "min_evaluate_clients", "min_available_clients"]
)
def test_minimum_client_counts_below_one_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        FedAvg(**{name: 0})


def test_initial_parameters_given_as_parameters_come_back_as_ndarrays() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64)]
    strategy = FedAvg(initial_parameters=ndarrays_to_parameters(arrays))

    initial = strategy.initialize_parameters()

    assert isinstance(initial, list)
    for got, expected in zip(initial, arrays, strict=True):
        assert isinstance(got, np.ndarray)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_initial_parameters_given_as_ndarrays_are_returned() -> None:
    arrays = [np.ones(3)]

    initial = FedAvg(initial_parameters=arrays).initialize_parameters()

    assert len(initial) == 1
    np.testing.assert_array_equal(initial[0], np.ones(3))


def test_no_initial_parameters_means_ask_a_node() -> None:
    assert FedAvg().initialize_parameters() is None


def test_server_side_evaluate_calls_evaluate_fn() -> None:
    calls = []

    def evaluate_fn(server_round, parameters, config):
        calls.append((server_round, len(parameters), config))
        return 0.5, {"acc": 1.0}

    assert FedAvg().evaluate(1, [np.zeros(1)]) is None
    assert FedAvg(evaluate_fn=evaluate_fn).evaluate(2, [np.zeros(1)]) == (0.5, {"acc": 1.0})
    assert calls == [(2, 1, {})]


@pytest.mark.parametrize("num_rounds", [0, -1, 1.5, "3"])
def test_server_config_refuses_bad_num_rounds(num_rounds: object) -> None:
    with pytest.raises(ConfigurationError, match="num_rounds"):
        ServerConfig(num_rounds=num_rounds)  # type: ignore[arg-type]


@pytest.mark.parametrize("round_timeout", [0, -5.0])
def test_server_config_refuses_non_positive_round_timeout(round_timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="round_timeout"):
        ServerConfig(round_timeout=round_timeout)


def test_server_app_defaults_to_one_round_of_fedavg() -> None:
    app = ServerApp()

    assert app.config.num_rounds == 1
    assert isinstance(app.strategy, FedAvg)


def test_flowers_inplace_argument_is_accepted() -> None:
    strategy = FedAvg(inplace=False, min_available_clients=1)
    parameters, _ = aggregate([np.zeros(1)], FitRes([np.ones(1)], 2), strategy=strategy)
    np.testing.assert_array_equal(parameters[0], [1.0])


def test_float32_accumulation_stays_within_1e_5_of_float64_over_100_results() -> None:
    """The measured basis for summing float32 models in float32 (weighted_mean.py)."""
    rng = np.random.default_rng(7)
    updates = [rng.standard_normal(10_000).astype(np.float32) for _ in range(100)]
    weights = rng.integers(1, 1000, size=100)
    mean = RunningWeightedMean([np.zeros(10_000, np.float32)])
    for update, weight in zip(updates, weights, strict=True):
        mean.add([update], int(weight))
    [result] = mean.result() or []
    exact = sum(w * u.astype(np.float64) for u, w in zip(updates, weights, strict=True))
    exact /= weights.sum()
    assert result.dtype == np.float32
    assert np.max(np.abs(result - exact)) / np.max(np.abs(exact)) < 1e-5


def test_a_large_array_is_folded_in_blocks_exactly() -> None:
    size = (1 << 18) * 2 + 123  # spans several scratch blocks with a partial last one
    mean = RunningWeightedMean([np.zeros(size, np.float32)])
    mean.add([np.full(size, 1.0, np.float32)], 1)
    mean.add([np.full(size, 4.0, np.float32)], 2)
    [result] = mean.result() or []
    np.testing.assert_array_equal(result, np.full(size, 3.0, np.float32))
