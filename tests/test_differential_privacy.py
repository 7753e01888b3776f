"""Differential privacy: clipping, noise, adaptive bounds, client mods and ε accounting.

Numbers are those of the papers' formulas worked by hand on small arrays: fixed
clipping (McMahan et al., 2018), adaptive clipping (Andrew et al., 2021), Gaussian
noise of stddev noise_multiplier * clipping_norm / num_sampled_clients (Flower's);
ε is the one dp-accounting computes for the same inputs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollen.aggregation.dp_clipping import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    check_clipped,
    clip_update,
    update_norm,
)
from pollen.aggregation.privacy_accountant import PrivacyAccountant
from pollen.client import ClientApp, NumPyClient
from pollen.client.client_app import Content, Handler
from pollen.client.mod import adaptiveclipping_mod, fixedclipping_mod
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.errors import ClientAppError, ConfigurationError, RecordError, RunError
from pollen.records import fit_evaluate
from pollen.records.replies import FitRes
from pollen.server import ServerApp, ServerConfig
from pollen.server.run import ServerAppConfig, run_on_grid
from pollen.server.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    Strategy,
)
from pollen.simulation import InProcessGrid
from pollen.transport.addresses import Address

needs_accounting = pytest.mark.skipif(
    importlib.util.find_spec("dp_accounting") is None, reason="pip install 'pollen[dp]'"
)


def fedavg(nodes: int, **kwargs: Any) -> FedAvg:
    """FedAvg that samples exactly ``nodes`` nodes of ``nodes`` available."""
    return FedAvg(min_fit_clients=nodes, min_available_clients=nodes, **kwargs)


def one_round(
    strategy: Strategy, global_model: NDArrays, results: list[FitRes], server_round: int = 1
) -> tuple[NDArrays | None, Metrics]:
    """configure_fit for ``len(results)`` nodes, then fold ``results`` in and finish."""
    nodes = list(range(1, len(results) + 1))
    strategy.configure_fit(server_round, global_model, nodes, random.Random(0))
    aggregator = strategy.fit_aggregator(server_round, global_model)
    for node, result in zip(nodes, results, strict=True):
        aggregator.add(node, result)
    return aggregator.finish()


# --- the clipping rule -----------------------------------------------------------------------


def test_an_update_above_the_bound_is_scaled_down_to_it_along_its_direction() -> None:
    reference = [np.array([1.0, 1.0]), np.array([[2.0]])]
    trained = [np.array([4.0, 5.0]), np.array([[2.0]])]  # update (3, 4, 0): norm 5

    clipped, was_clipped = clip_update(trained, reference, clipping_norm=1.0)

    assert was_clipped
    np.testing.assert_allclose(clipped[0], [1.0 + 0.6, 1.0 + 0.8])
    np.testing.assert_allclose(clipped[1], [[2.0]])


def test_an_update_within_the_bound_is_left_as_it_is() -> None:
    reference = [np.zeros(2)]
    trained = [np.array([0.3, 0.4])]

    clipped, was_clipped = clip_update(trained, reference, clipping_norm=0.5)

    assert not was_clipped and clipped[0] is trained[0]
    np.testing.assert_array_equal(clipped[0], [0.3, 0.4])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_clipped_update_obeys_the_norm_bound(dtype: type[np.floating[Any]]) -> None:
    rng = np.random.default_rng(7)
    reference = [rng.normal(size=(40, 30)).astype(dtype), rng.normal(size=17).astype(dtype)]
    for scale in (1e-3, 0.1, 1.0, 10.0, 1e3):
        for bound in (0.01, 0.5, 3.0):
            trained = [r + scale * np.asarray(rng.normal(size=r.shape), dtype) for r in reference]
            before = update_norm(trained, reference)

            clipped, was_clipped = clip_update(trained, reference, bound)

            after = update_norm(clipped, reference)
            assert was_clipped == (before > bound)
            # float64: to its precision; float32: within the rounding of reference + update
            tolerance = 1e-12 if dtype == np.float64 else 1e-6 * math.sqrt(1200) * 4
            assert after <= bound + tolerance, (scale, bound, after)
            check_clipped(clipped, reference, bound)  # the server's check agrees


def test_the_servers_check_rejects_an_update_the_node_did_not_clip() -> None:
    reference = [np.zeros(3, np.float32)]
    with pytest.raises(RecordError, match=r"norm 2.*clipping_norm=1.*fixedclipping_mod"):
        check_clipped([np.array([2.0, 0.0, 0.0], np.float32)], reference, 1.0)


def test_a_result_of_other_shapes_is_rejected_before_any_clipping() -> None:
    with pytest.raises(RecordError, match=r"returned 1 arrays with shapes \(3,\)"):
        clip_update([np.zeros(3)], [np.zeros(2)], 1.0)


# --- server-side fixed clipping -------------------------------------------------------------


def test_server_side_fixed_clipping_averages_the_clipped_updates() -> None:
    global_model = [np.array([1.0, 1.0], np.float32)]
    strategy = DifferentialPrivacyServerSideFixedClipping(
        fedavg(3), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
    )
    results = [
        FitRes([np.array([4.0, 5.0], np.float32)], 1),  # update (3, 4) -> (0.6, 0.8)
        FitRes([np.array([1.0, 1.5], np.float32)], 2),  # update (0, 0.5): within the bound
        FitRes([np.array([-1.0, 1.0], np.float32)], 1),  # update (-2, 0) -> (-1, 0)
    ]

    model, _ = one_round(strategy, global_model, results)

    assert model is not None
    expected = 1.0 + (1 * np.array([0.6, 0.8]) + 2 * np.array([0, 0.5]) + np.array([-1, 0])) / 4
    np.testing.assert_allclose(model[0], expected, rtol=1e-6)


def test_any_strategy_can_be_wrapped_here_a_median_of_the_clipped_updates() -> None:
    median = FedMedian(min_fit_clients=3, min_available_clients=3)
    strategy = DifferentialPrivacyServerSideFixedClipping(median, 0.0, 1.0, 3)
    zeros = [np.zeros(2, np.float32)]
    results = [
        FitRes([np.array([30.0, 40.0], np.float32)], 1),  # -> (0.6, 0.8)
        FitRes([np.array([0.1, 0.2], np.float32)], 5),
        FitRes([np.array([0.0, -2.0], np.float32)], 1),  # -> (0, -1)
    ]

    model, _ = one_round(strategy, zeros, results)

    assert model is not None
    np.testing.assert_allclose(model[0], [0.1, 0.2], rtol=1e-6)  # the median per weight
    assert strategy.disk_needed(1000, 3) == median.disk_needed(1000, 3) > 0


def test_the_noise_has_stddev_noise_multiplier_times_clipping_norm_over_num_sampled() -> None:
    size = 200_000
    global_model = [np.zeros(size, np.float32)]
    strategy = DifferentialPrivacyServerSideFixedClipping(
        fedavg(4),
        noise_multiplier=2.0,
        clipping_norm=0.5,
        num_sampled_clients=4,
        noise_generator=np.random.default_rng(12345),
    )
    unchanged = [FitRes([np.zeros(size, np.float32)], 10) for _ in range(4)]

    model, _ = one_round(strategy, global_model, unchanged)

    assert model is not None
    expected = 2.0 * 0.5 / 4
    noise = model[0].astype(np.float64)
    # sample stddev of 200 000 draws: its standard error is 0.16 % of sigma
    assert np.std(noise) == pytest.approx(expected, rel=0.01)
    assert abs(np.mean(noise)) < 5 * expected / math.sqrt(size)


def test_the_noise_is_calibrated_to_the_bound_the_round_was_clipped_with() -> None:
    # adaptive: the bound moves after the round, the round's noise uses the old one
    size = 100_000
    strategy = DifferentialPrivacyServerSideAdaptiveClipping(
        fedavg(2),
        noise_multiplier=0.5,
        num_sampled_clients=2,
        initial_clipping_norm=1.0,
        clipped_count_stddev=10.0,
        noise_generator=np.random.default_rng(3),
    )
    global_model = [np.zeros(size, np.float32)]

    model, metrics = one_round(
        strategy, global_model, [FitRes([np.zeros(size, np.float32)], 1) for _ in range(2)]
    )

    assert model is not None and metrics["dp_clipping_norm"] == 1.0
    update_multiplier = (0.5**-2 - 20.0**-2) ** -0.5  # Andrew et al.'s split of the budget
    assert np.std(model[0]) == pytest.approx(update_multiplier * 1.0 / 2, rel=0.015)


# --- adaptive clipping ----------------------------------------------------------------------


def unit_updates(count: int, size: int = 4) -> list[FitRes]:
    """``count`` results whose update from a zero model has norm 1.0."""
    return [FitRes([np.full(size, 1.0 / math.sqrt(size), np.float32)], 1) for _ in range(count)]


def test_adaptive_clipping_grows_a_bound_that_clips_every_update_as_the_paper_says() -> None:
    # ten updates of norm 1.0, bound 0.1: every update is clipped, none is left unclipped,
    # so the bound grows by exp(0.2 * 0.5) a round. Flower 1.42 counts the clipped ones
    # instead and shrinks it to 0.1 * exp(-1) = 0.037 in ten rounds.
    strategy = DifferentialPrivacyServerSideAdaptiveClipping(
        fedavg(10), noise_multiplier=0.0, num_sampled_clients=10
    )
    zeros = [np.zeros(4, np.float32)]
    for server_round in range(1, 11):
        _, metrics = one_round(strategy, zeros, unit_updates(10), server_round)

    assert strategy.clipping_norm == pytest.approx(0.1 * math.exp(1.0))
    assert metrics["dp_next_clipping_norm"] == strategy.clipping_norm

    for server_round in range(11, 41):
        one_round(strategy, zeros, unit_updates(10), server_round)
    # it crossed 1.0 and now steps around it: above, all unclipped (shrink); below, grow
    assert math.exp(-0.1) <= strategy.clipping_norm <= math.exp(0.1) * 1.0 + 1e-9


def test_adaptive_clipping_shrinks_a_bound_that_clips_no_update() -> None:
    strategy = DifferentialPrivacyServerSideAdaptiveClipping(
        fedavg(4),
        noise_multiplier=0.0,
        num_sampled_clients=4,
        initial_clipping_norm=10.0,
        target_clipped_quantile=0.25,
    )

    one_round(strategy, [np.zeros(4, np.float32)], unit_updates(4))

    # all four unclipped: b = 1, the bound is multiplied by exp(-0.2 * (1 - 0.25))
    assert strategy.clipping_norm == pytest.approx(10.0 * math.exp(-0.15))


def test_adaptive_clipping_splits_the_noise_as_flower_does() -> None:
    strategy = DifferentialPrivacyServerSideAdaptiveClipping(
        fedavg(40), noise_multiplier=1.0, num_sampled_clients=40
    )
    assert strategy.clipped_count_stddev == 2.0  # num_sampled_clients / 20
    assert strategy.update_noise_multiplier() == pytest.approx((1.0 - 4.0**-2) ** -0.5)


# --- client-side clipping: the wrappers -------------------------------------------------------


def test_client_side_wrappers_send_the_bound_in_every_fit_config() -> None:
    fixed = DifferentialPrivacyClientSideFixedClipping(
        fedavg(2, on_fit_config_fn=lambda r: {"epochs": 2}),
        noise_multiplier=1.0,
        clipping_norm=0.7,
        num_sampled_clients=2,
    )
    adaptive = DifferentialPrivacyClientSideAdaptiveClipping(
        fedavg(2), noise_multiplier=0.0, num_sampled_clients=2, initial_clipping_norm=0.3
    )
    model = [np.zeros(2)]

    configs = [ins.config for _, ins in fixed.configure_fit(1, model, [1, 2], random.Random(0))]
    assert configs == [{"epochs": 2, KEY_CLIPPING_NORM: 0.7}] * 2
    [(_, ins), _] = adaptive.configure_fit(1, model, [1, 2], random.Random(0))
    assert ins.config == {KEY_CLIPPING_NORM: 0.3}


def test_client_side_clipping_rejects_an_update_the_node_did_not_clip() -> None:
    strategy = DifferentialPrivacyClientSideFixedClipping(
        fedavg(2), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=2
    )
    zeros = [np.zeros(2, np.float32)]
    aggregator = strategy.fit_aggregator(1, zeros)

    aggregator.add(1, FitRes([np.array([0.6, 0.8], np.float32)], 1))
    with pytest.raises(RecordError, match="did not clip it"):
        aggregator.add(2, FitRes([np.array([3.0, 4.0], np.float32)], 1))
    assert not strategy.accept_failures  # so the round keeps its model, as Flower's


def test_client_side_adaptive_clipping_counts_the_nodes_norm_bits() -> None:
    strategy = DifferentialPrivacyClientSideAdaptiveClipping(
        fedavg(3), noise_multiplier=0.0, num_sampled_clients=3, initial_clipping_norm=1.0
    )
    zeros = [np.zeros(2, np.float32)]
    results = [
        FitRes([np.array([0.6, 0.8], np.float32)], 1, {KEY_NORM_BIT: 1, "acc": 0.5}),
        FitRes([np.array([0.1, 0.0], np.float32)], 1, {KEY_NORM_BIT: 0, "acc": 0.5}),
        FitRes([np.array([0.0, 0.2], np.float32)], 1, {KEY_NORM_BIT: 0, "acc": 0.5}),
    ]

    _, metrics = one_round(strategy, zeros, results)

    # two of three unclipped: exp(-0.2 * (2/3 - 0.5))
    assert strategy.clipping_norm == pytest.approx(math.exp(-0.2 / 6))
    assert KEY_NORM_BIT not in metrics and metrics["acc"] == 0.5
    aggregator = strategy.fit_aggregator(2, zeros)
    with pytest.raises(RecordError, match=r"norm_bit=None.*adaptiveclipping_mod"):
        aggregator.add(1, FitRes([np.zeros(2, np.float32)], 1))


# --- client-side clipping: the mods on the node -----------------------------------------------


class StepClient(NumPyClient):
    """Trains its received arrays in place, adding ``step``, and reports one metric."""

    def __init__(self, step: list[float]) -> None:
        self.step = step

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        for array, step in zip(parameters, self.step, strict=True):
            array += step  # in place: the mod must have kept the global model apart
        return parameters, 3, {"loss": 0.25}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return 0.5, 3, {}


def node_context() -> Context:
    return Context(node_id=5, node_config={}, run_id=1, run_config={})


def fit_through(app: ClientApp, model: NDArrays, config: Config) -> Content:
    return app.handle("train", fit_evaluate.instruction(model, config), node_context())


def test_fixedclipping_mod_clips_the_update_on_the_node() -> None:
    app = ClientApp(client_fn=lambda context: StepClient([3.0, 4.0]), mods=[fixedclipping_mod])
    model = [np.array([1.0], np.float32), np.array([2.0], np.float32)]

    reply = fit_through(app, [m.copy() for m in model], {KEY_CLIPPING_NORM: 1.0})

    weights = fit_evaluate.model_of(reply)
    assert weights is not None
    np.testing.assert_allclose(weights[0], [1.6], rtol=1e-6)
    np.testing.assert_allclose(weights[1], [2.8], rtol=1e-6)
    assert update_norm(weights, model) == pytest.approx(1.0, rel=1e-6)
    assert fit_evaluate.metrics_of(reply) == {"loss": 0.25}


def test_adaptiveclipping_mod_reports_whether_it_clipped() -> None:
    app = ClientApp(client_fn=lambda context: StepClient([0.3]), mods=[adaptiveclipping_mod])
    model = [np.zeros(1, np.float32)]

    clipped = fit_through(app, [m.copy() for m in model], {KEY_CLIPPING_NORM: 0.1})
    unclipped = fit_through(app, [m.copy() for m in model], {KEY_CLIPPING_NORM: 0.5})

    assert fit_evaluate.metrics_of(clipped) == {"loss": 0.25, KEY_NORM_BIT: 1}
    assert fit_evaluate.metrics_of(unclipped) == {"loss": 0.25, KEY_NORM_BIT: 0}
    clipped_weights = fit_evaluate.model_of(clipped)
    assert clipped_weights is not None
    np.testing.assert_allclose(clipped_weights[0], [0.1], rtol=1e-6)


def test_a_clipping_mod_without_the_servers_bound_says_which_wrapper_to_use() -> None:
    app = ClientApp(client_fn=lambda context: StepClient([1.0]), mods=[fixedclipping_mod])

    with pytest.raises(ClientAppError, match="DifferentialPrivacyClientSideFixedClipping"):
        fit_through(app, [np.zeros(1)], {})


def test_the_clipping_mods_let_other_messages_through() -> None:
    app = ClientApp(client_fn=lambda context: StepClient([1.0]), mods=[adaptiveclipping_mod])

    reply = app.handle("evaluate", fit_evaluate.instruction([np.zeros(1)], {}), node_context())

    assert fit_evaluate.loss_of(reply) == 0.5


def test_mods_wrap_every_handler_call_the_first_outermost() -> None:
    calls: list[str] = []

    def recording(name: str) -> Any:
        def mod(message_type: str, content: Content, context: Context, call_next: Handler) -> Any:
            calls.append(f"{name}>{message_type}")
            reply = call_next(content, context)
            calls.append(f"{name}<")
            return reply

        return mod

    app = ClientApp(
        client_fn=lambda context: StepClient([1.0]), mods=[recording("a"), recording("b")]
    )
    app.handle("evaluate", fit_evaluate.instruction([np.zeros(1)], {}), node_context())

    assert calls == ["a>evaluate", "b>evaluate", "b<", "a<"]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -0.1}, r"noise_multiplier=-0.1\): must be >= 0"),
        ({"clipping_norm": 0.0}, r"clipping_norm=0.0\): must be > 0"),
        ({"clipping_norm": -1.0}, r"clipping_norm=-1.0\): must be > 0"),
        ({"target_delta": 0.0}, r"target_delta=0.0\): must be in \(0, 1\)"),
        ({"target_delta": 1.0}, r"target_delta=1.0\): must be in \(0, 1\)"),
        ({"target_delta": -1e-5}, r"target_delta=-1e-05\): must be in \(0, 1\)"),
        ({"sampling_rate": 1.5}, r"sampling_rate=1.5\): must be in \(0, 1\]"),
        ({"num_sampled_clients": 0}, r"num_sampled_clients=0\): must be an int of at least 1"),
        ({"num_sampled_clients": 1}, r"min_fit_clients=2 results a round"),
    ],
)
def test_bad_settings_are_refused_at_construction_in_one_line(
    kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {
        "noise_multiplier": 1.0,
        "clipping_norm": 1.0,
        "num_sampled_clients": 2,
        **kwargs,
    }
    for wrapper in (
        DifferentialPrivacyServerSideFixedClipping,
        DifferentialPrivacyClientSideFixedClipping,
    ):
        with pytest.raises(ConfigurationError, match=message) as raised:
            wrapper(FedAvg(), **arguments)
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -1.0}, r"noise_multiplier=-1.0\): must be >= 0"),
        ({"initial_clipping_norm": 0.0}, r"initial_clipping_norm=0.0\): must be > 0"),
        ({"target_clipped_quantile": 1.5}, r"target_clipped_quantile=1.5\): must be in"),
        ({"clip_norm_lr": 0.0}, r"clip_norm_lr=0.0\): must be > 0"),
        ({"clipped_count_stddev": -1.0}, r"clipped_count_stddev=-1.0\): must be >= 0"),
        ({"noise_multiplier": 1.0}, r"clipped_count_stddev above noise_multiplier / 2"),
    ],
)
def test_bad_adaptive_settings_are_refused_at_construction(
    kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"noise_multiplier": 0.5, "num_sampled_clients": 2, **kwargs}
    for wrapper in (
        DifferentialPrivacyServerSideAdaptiveClipping,
        DifferentialPrivacyClientSideAdaptiveClipping,
    ):
        with pytest.raises(ConfigurationError, match=message):
            wrapper(FedAvg(), **arguments)


def test_a_strategy_that_samples_another_number_of_nodes_is_stopped_before_any_is_asked() -> None:
    strategy = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2
    )

    with pytest.raises(ConfigurationError, match=r"sampled 3 of 3 nodes in round 1"):
        strategy.configure_fit(1, [np.zeros(1)], [1, 2, 3], random.Random(0))


def test_a_run_whose_strategy_samples_another_number_of_nodes_stops_as_a_configuration_error(
    tmp_path: Path,
) -> None:
    """Exit code 2 (fix the settings), not 1: no node was asked anything."""
    inner = FedAvg(min_fit_clients=2, min_available_clients=3, fraction_evaluate=0.0)
    inner.initial_parameters = [np.zeros(2, np.float32)]
    strategy = DifferentialPrivacyServerSideFixedClipping(
        inner, noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2
    )
    app = ServerApp(config=ServerConfig(num_rounds=1), strategy=strategy)
    grid = InProcessGrid(dp_client_app, num_nodes=3)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)

    with pytest.raises(ConfigurationError, match=r"run 1 stopped .*sampled 3 of 3 nodes") as stop:
        asyncio.run(run_on_grid(app, config, grid))
    assert stop.value.exit_code == 2


def test_without_dp_accounting_target_delta_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # as if not installed

    with pytest.raises(ConfigurationError, match=r"pip install 'pollen\[dp\]'"):
        DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 1.0, 2, target_delta=1e-5)
    DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 1.0, 2)  # no accountant: fine


# --- the privacy accountant -----------------------------------------------------------------


def library_epsilon(noise: float, rate: float, delta: float, rounds: int) -> float:
    dp_accounting = pytest.importorskip("dp_accounting")
    importlib.import_module("dp_accounting.rdp")
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), rounds
    )
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


@needs_accounting
@pytest.mark.parametrize(
    ("noise", "rate", "delta", "rounds"),
    [(1.0, 1.0, 1e-5, 1), (1.1, 0.01, 1e-5, 1000), (0.8, 0.25, 1e-3, 20), (4.0, 0.5, 1e-6, 3)],
)
def test_epsilon_is_the_libraries_for_the_same_inputs(
    noise: float, rate: float, delta: float, rounds: int
) -> None:
    accountant = PrivacyAccountant(noise, rate, delta)

    assert accountant.epsilon(rounds) == pytest.approx(
        library_epsilon(noise, rate, delta, rounds), rel=1e-12
    )
    assert accountant.epsilon(rounds + 1) > accountant.epsilon(rounds)


@needs_accounting
def test_the_wrapper_records_epsilon_for_the_sampling_rate_it_assumes() -> None:
    # 2 nodes sampled of at least 8 available: q = 2 / 8 unless sampling_rate says otherwise
    inner = FedAvg(fraction_fit=0.25, min_fit_clients=2, min_available_clients=8)
    strategy = DifferentialPrivacyServerSideFixedClipping(
        inner, 1.2, 1.0, 2, target_delta=1e-5, noise_generator=np.random.default_rng(0)
    )
    stated = DifferentialPrivacyServerSideFixedClipping(
        inner, 1.2, 1.0, 2, target_delta=1e-5, sampling_rate=0.1
    )
    zeros = [np.zeros(2, np.float32)]

    nodes = list(range(1, 9))
    strategy.configure_fit(3, zeros, nodes, random.Random(0))
    aggregator = strategy.fit_aggregator(3, zeros)
    for node in (1, 2):
        aggregator.add(node, FitRes([np.zeros(2, np.float32)], 1))
    _, metrics = aggregator.finish()

    assert strategy.sampling_rate == 0.25 and stated.sampling_rate == 0.1
    assert metrics["dp_epsilon"] == pytest.approx(library_epsilon(1.2, 0.25, 1e-5, 3))


# --- a whole run on virtual nodes, and its resume ---------------------------------------------


class NoisyStepClient(NumPyClient):
    """Adds 1 to every weight (an update of norm 2 on a 4-element model)."""

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        return [p + 1.0 for p in parameters], 1, {}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return 0.0, 1, {}


dp_client_app = ClientApp(client_fn=lambda context: NoisyStepClient(), mods=[fixedclipping_mod])


def dp_server_app(failing_round: int | None) -> ServerApp:
    failed: list[int] = []

    def evaluate_fn(server_round: int, parameters: NDArrays, config: Config) -> None:
        if server_round == failing_round and not failed:
            failed.append(server_round)
            raise RuntimeError("the ServerApp crashed")

    inner = FedAvg(
        fraction_fit=0.5,
        fraction_evaluate=0.0,
        min_fit_clients=2,
        min_available_clients=4,
        initial_parameters=[np.zeros(4, np.float32)],
        evaluate_fn=evaluate_fn,
    )
    strategy = DifferentialPrivacyClientSideFixedClipping(
        inner, noise_multiplier=1.0, clipping_norm=0.5, num_sampled_clients=2, target_delta=1e-5
    )
    return ServerApp(config=ServerConfig(num_rounds=4, seed=3), strategy=strategy)


@needs_accounting
def test_a_wrapped_fedavg_on_virtual_nodes_records_epsilon_per_round_and_resumes_the_count(
    tmp_path: Path,
) -> None:
    grid = InProcessGrid(dp_client_app, num_nodes=4)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)

    with pytest.raises(RunError, match=r"after round 2 of 4.*the ServerApp crashed"):
        asyncio.run(run_on_grid(dp_server_app(failing_round=3), config, grid))
    config.resume = 1
    outcome, directory = asyncio.run(run_on_grid(dp_server_app(None), config, grid))

    rounds = json.loads((directory / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    expected = [library_epsilon(1.0, 2 / 4, 1e-5, r) for r in (1, 2, 3, 4)]
    assert [r["fit_metrics"]["dp_epsilon"] for r in rounds] == pytest.approx(expected)
    assert all(r["fit_results"] == 2 and not r["fit_failures"] for r in rounds)
    # each round moved the model by a clipped update of norm 0.5 plus noise of stddev 0.25
    assert outcome.parameters[0].shape == (4,)


def test_clipping_and_noise_allocate_about_one_model_whatever_the_number_of_nodes() -> None:
    import tracemalloc

    size = 4_000_000  # 16 MB of float32
    model = [np.zeros(size, np.float32)]
    strategy = DifferentialPrivacyServerSideFixedClipping(fedavg(8), 1.0, 1.0, 8)
    strategy.configure_fit(1, model, list(range(1, 9)), random.Random(0))
    rng = np.random.default_rng(0)
    peaks = []
    tracemalloc.start()
    try:
        aggregator = strategy.fit_aggregator(1, model)
        for node in range(1, 9):
            result = FitRes([rng.standard_normal(size, dtype=np.float32)], 1)
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            aggregator.add(node, result)  # clipped in place, folded into the running sum
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
            del result
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        aggregator.finish()
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()

    model_bytes = 4 * size
    # the first result allocates the running sum (one model); then only blocks of a few MiB
    assert peaks[0] < 1.3 * model_bytes
    assert max(peaks[1:]) < 5e6 < 0.35 * model_bytes


def test_client_side_adaptive_clipping_end_to_end_moves_the_bound_from_the_nodes_bits(
    tmp_path: Path,
) -> None:
    app = ClientApp(client_fn=lambda context: NoisyStepClient(), mods=[adaptiveclipping_mod])
    grid = InProcessGrid(app, num_nodes=3)
    inner = fedavg(3, fraction_evaluate=0.0, initial_parameters=[np.zeros(4, np.float32)])
    strategy = DifferentialPrivacyClientSideAdaptiveClipping(
        inner, noise_multiplier=0.0, num_sampled_clients=3
    )
    server = ServerApp(config=ServerConfig(num_rounds=3, seed=1), strategy=strategy)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)

    outcome, directory = asyncio.run(run_on_grid(server, config, grid))

    rounds = json.loads((directory / "metrics.json").read_text())["rounds"]
    # every node's update (norm 2) is clipped, none unclipped: the bound grows by exp(0.1)
    bounds = [r["fit_metrics"]["dp_clipping_norm"] for r in rounds]
    assert bounds == pytest.approx([0.1, 0.1 * math.exp(0.1), 0.1 * math.exp(0.2)])
    assert all(n["metrics"] == {KEY_NORM_BIT: 1} for r in rounds for n in r["fit_nodes"])
    assert all(KEY_NORM_BIT not in r["fit_metrics"] for r in rounds)
    # no noise: the model moved by exactly the clipped updates' mean, 3 rounds of them
    np.testing.assert_allclose(update_norm(outcome.parameters, [np.zeros(4)]), sum(bounds))
