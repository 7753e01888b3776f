"""What the robust strategies share: an aggregator over a rule that keeps the round's
updates on disk, the disk it needs, and the check that rounds have enough nodes."""

from __future__ import annotations

from collections.abc import Callable

from pollen.aggregation.robust import SpilledRule
from pollen.errors import ConfigurationError, RunError
from pollen.records.replies import FitRes
from pollen.records.typing import Metrics, NDArrays
from pollen.server.strategy.strategy import FitAggregator

MetricsAggregationFn = Callable[[list[tuple[int, Metrics]]], Metrics]


class SpilledAggregator(FitAggregator):
    """Spills each result as it arrives; ``finish`` computes the rule block by block and
    frees the spill. ``minimum``: results the rule needs; with fewer, ``finish`` raises
    RunError (one line: ``shortfall`` says what needs them and the fix) and the run stops
    with the last round's model."""

    def __init__(
        self,
        rule: SpilledRule,
        metrics_fn: MetricsAggregationFn,
        server_round: int,
        minimum: int = 0,
        shortfall: str = "",
    ) -> None:
        self._rule = rule
        self._round = server_round
        self._metrics: list[tuple[int, Metrics]] = []
        self._metrics_fn = metrics_fn
        self._minimum = minimum
        self._shortfall = shortfall

    def add(self, node_id: int, result: FitRes) -> None:
        self._rule.add(result.parameters, result.num_examples)
        self._metrics.append((result.num_examples, result.metrics))

    def finish(self) -> tuple[NDArrays | None, Metrics]:
        count = self._rule.count
        if 0 < count < self._minimum:
            self._rule.close()
            raise RunError(
                f"round {self._round}: {count} usable fit result{'s' if count != 1 else ''}; "
                f"{self._shortfall}"
            )
        parameters = self._rule.result()
        return parameters, self._metrics_fn(self._metrics) if self._metrics else {}


def spill_disk_needed(model_bytes: int, num_results: int) -> int:
    """Every result of the round, kept on disk until the round ends."""
    return model_bytes * num_results


def fewest_sampled(fraction_fit: float, min_fit_clients: int, min_available_clients: int) -> int:
    """The fewest nodes a fit round samples: FedAvg samples
    ``max(int(fraction_fit * available), min_fit_clients)`` of at least
    ``min_available_clients`` connected nodes."""
    return max(min_fit_clients, int(fraction_fit * min_available_clients))


def check_enough_nodes(
    owner: str,
    num_malicious_clients: int,
    required: int,
    rule: str,
    fraction_fit: float,
    min_fit_clients: int,
    min_available_clients: int,
) -> None:
    """ConfigurationError (one line) when a round may sample fewer than ``required`` nodes."""
    if num_malicious_clients < 0:
        raise ConfigurationError(
            f"{owner}(num_malicious_clients={num_malicious_clients}): must be 0 or more"
        )
    sampled = fewest_sampled(fraction_fit, min_fit_clients, min_available_clients)
    if sampled >= required:
        return
    raise ConfigurationError(
        f"{owner}(num_malicious_clients={num_malicious_clients}): {rule} needs at least "
        f"{required} results per round, but with min_fit_clients={min_fit_clients}, "
        f"min_available_clients={min_available_clients} and fraction_fit={fraction_fit} "
        f"a round may sample {sampled}; set min_fit_clients={required} (or more), "
        "or lower num_malicious_clients"
    )
