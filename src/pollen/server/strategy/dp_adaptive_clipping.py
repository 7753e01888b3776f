"""Central differential privacy with adaptive clipping (Andrew et al., 2021), on the
server or on the nodes: Flower's wrappers of these names, following the paper.

The bound follows a quantile of the update norms: after each round it is multiplied
by ``exp(-clip_norm_lr * (b - target_clipped_quantile))``, ``b`` being the noised
fraction of updates left *unclipped* (norm at most the bound). More unclipped
updates than the target: the bound shrinks; fewer: it grows.

Flower 1.42 puts the fraction of *clipped* updates in that formula, so its bound
moves the wrong way: with ten updates of norm 1.0 and a bound of 0.1 (all clipped)
Flower shrinks the bound to 0.037 in ten rounds, where the paper's rule grows it
(to 0.27 after ten rounds, then settling around 1.0). Pollen follows the paper.
Flower also calibrates a round's noise to the bound *after* that update, not to the
one the round's updates were clipped to; Pollen uses the latter, so that the noise
matches the updates' sensitivity.
"""

from __future__ import annotations

import logging

import numpy as np

from pollen.aggregation.dp_clipping import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    adaptive_noise_params,
    check_clipped,
    clip_update,
    next_clipping_norm,
)
from pollen.errors import ConfigurationError, RecordError
from pollen.records.replies import FitRes
from pollen.records.typing import Metrics, NDArrays
from pollen.server.strategy.dp_wrapper import DPRound, DPWrapper
from pollen.server.strategy.strategy import Strategy

logger = logging.getLogger(__name__)

CLIPPING_NORM_METRIC = "dp_clipping_norm"
"""Fit metric: the bound a round's updates were clipped to."""
NEXT_CLIPPING_NORM_METRIC = "dp_next_clipping_norm"
"""Fit metric: the bound of the next round (give it as ``initial_clipping_norm`` to
continue a resumed run with it)."""


class _AdaptiveClipping(DPWrapper):
    """The bound's adaptation and the split of the noise budget, for both sides, with
    Flower's arguments and defaults."""

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        num_sampled_clients: int,
        initial_clipping_norm: float = 0.1,
        target_clipped_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        *,
        target_delta: float | None = None,
        sampling_rate: float | None = None,
        noise_generator: np.random.Generator | None = None,
    ) -> None:
        owner = type(self).__name__
        if initial_clipping_norm <= 0:
            raise ConfigurationError(
                f"{owner}(initial_clipping_norm={initial_clipping_norm}): must be > 0 "
                "(Andrew et al. recommend 0.1)"
            )
        if not 0 <= target_clipped_quantile <= 1:
            raise ConfigurationError(
                f"{owner}(target_clipped_quantile={target_clipped_quantile}): must be in [0, 1]"
            )
        if clip_norm_lr <= 0:
            raise ConfigurationError(
                f"{owner}(clip_norm_lr={clip_norm_lr}): must be > 0 (Andrew et al. recommend 0.2)"
            )
        if clipped_count_stddev is not None and clipped_count_stddev < 0:
            raise ConfigurationError(
                f"{owner}(clipped_count_stddev={clipped_count_stddev}): must be >= 0"
            )
        super().__init__(
            strategy,
            noise_multiplier,
            num_sampled_clients,
            initial_clipping_norm,
            target_delta=target_delta,
            sampling_rate=sampling_rate,
            noise_generator=noise_generator,
        )
        self.target_clipped_quantile = target_clipped_quantile
        self.clip_norm_lr = clip_norm_lr
        try:
            self.clipped_count_stddev, self._update_noise_multiplier = adaptive_noise_params(
                noise_multiplier, self.num_sampled_clients, clipped_count_stddev
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"{owner}: {exc}") from None

    def update_noise_multiplier(self) -> float:
        return self._update_noise_multiplier

    def adapt(self, state: DPRound) -> None:
        self.clipping_norm = next_clipping_norm(
            state.clipping_norm,
            state.unclipped,
            state.count,
            target_quantile=self.target_clipped_quantile,
            learning_rate=self.clip_norm_lr,
            count_stddev=self.clipped_count_stddev,
            rng=self._noise,
        )
        logger.info(
            "round %d: %d of %d updates unclipped at clipping norm %.4g; next %.4g",
            state.server_round,
            state.unclipped,
            state.count,
            state.clipping_norm,
            self.clipping_norm,
        )

    def release(
        self, state: DPRound, parameters: NDArrays | None, metrics: Metrics
    ) -> tuple[NDArrays | None, Metrics]:
        parameters, metrics = super().release(state, parameters, metrics)
        if parameters is not None:
            metrics[CLIPPING_NORM_METRIC] = state.clipping_norm
            metrics[NEXT_CLIPPING_NORM_METRIC] = self.clipping_norm
        return parameters, metrics


class DifferentialPrivacyServerSideAdaptiveClipping(_AdaptiveClipping):
    """Central DP with server-side adaptive clipping (Andrew et al., 2021), around any
    Pollen strategy.

    As `DifferentialPrivacyServerSideFixedClipping`, with a bound that starts at
    ``initial_clipping_norm`` and after each round moves towards the
    ``target_clipped_quantile`` quantile of the update norms (the paper's rule, see the
    module's docstring: where Flower's bound moves the wrong way, Pollen's follows the
    paper). The count of unclipped updates is noised with ``clipped_count_stddev``
    (default ``num_sampled_clients / 20``) and the model's noise multiplier is raised
    to ``(noise_multiplier⁻² - (2 clipped_count_stddev)⁻²)^-1/2``, so that the round
    costs what one Gaussian mechanism of ``noise_multiplier`` costs: the ε reported
    with ``target_delta`` is that of ``noise_multiplier``.

    Arguments and defaults as Flower 1.42's class, plus ``target_delta``,
    ``sampling_rate`` and ``noise_generator`` (see the fixed-clipping wrapper). Each
    round's fit metrics record the bound used (``dp_clipping_norm``) and the next one
    (``dp_next_clipping_norm``). On ``--resume`` the bound starts again from
    ``initial_clipping_norm``: pass the last round's ``dp_next_clipping_norm`` there to
    continue with it.
    """

    def admit(self, state: DPRound, result: FitRes) -> tuple[FitRes, bool]:
        arrays, clipped = clip_update(result.parameters, state.reference, state.clipping_norm)
        return FitRes(arrays, result.num_examples, result.metrics), not clipped


class DifferentialPrivacyClientSideAdaptiveClipping(_AdaptiveClipping):
    """Central DP with adaptive clipping on the nodes: their ClientApp runs
    ``pollen.client.mod.adaptiveclipping_mod``, the server adds the noise and moves
    the bound.

    The round's bound goes to every sampled node in its fit config (``clipping_norm``);
    each node clips its update and reports in its fit metrics whether it had to
    (``norm_bit``: 1 clipped, 0 not, Flower's key and meaning). The server checks each
    update against the bound (a node without the mod is rejected with its reason) and
    counts the unclipped ones for the paper's update of the bound (see
    `DifferentialPrivacyServerSideAdaptiveClipping`). ``norm_bit`` is not passed on to
    the wrapped strategy's metrics aggregation: the round's fit metrics hold only the
    noised outcome (the next bound), not the exact count.

    Arguments and defaults as Flower 1.42's class, plus ``target_delta``,
    ``sampling_rate`` and ``noise_generator``.
    """

    def fit_config_extra(self) -> dict[str, float]:
        return {KEY_CLIPPING_NORM: self.clipping_norm}

    def admit(self, state: DPRound, result: FitRes) -> tuple[FitRes, bool]:
        bit = result.metrics.get(KEY_NORM_BIT)
        if not isinstance(bit, int) or bit not in (0, 1):  # a bool is an int too
            raise RecordError(
                f"its fit metrics report {KEY_NORM_BIT}={bit!r:.20}, expected 0 or 1: add "
                "adaptiveclipping_mod to its ClientApp's mods"
            )
        check_clipped(result.parameters, state.reference, state.clipping_norm)
        metrics = {k: v for k, v in result.metrics.items() if k != KEY_NORM_BIT}
        return FitRes(result.parameters, result.num_examples, metrics), bit == 0
