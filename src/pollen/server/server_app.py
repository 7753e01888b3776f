"""`ServerApp` and `ServerConfig`: what ``pollen serverapp MODULE:ATTR`` runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pollen.errors import ConfigurationError
from pollen.records.context import Context
from pollen.records.typing import Scalar, UserConfig
from pollen.server.strategy.fedavg import FedAvg
from pollen.server.strategy.flower_overrides import overrides_aggregate_fit
from pollen.server.strategy.strategy import Strategy

logger = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """How a run proceeds.

    ``round_timeout``: seconds a round waits for results (None: until every
    sampled node answers or fails). ``node_wait_timeout``: seconds to wait for
    ``min_available_clients`` nodes before giving up. ``seed``: makes node
    sampling repeatable.
    """

    num_rounds: int = 1
    round_timeout: float | None = None
    node_wait_timeout: float = 120.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_rounds, int) or self.num_rounds < 1:
            raise ConfigurationError(
                f"ServerConfig(num_rounds={self.num_rounds!r}): must be an int of at least 1"
            )
        if self.round_timeout is not None and self.round_timeout <= 0:
            raise ConfigurationError(
                f"ServerConfig(round_timeout={self.round_timeout}): must be > 0 or None"
            )


@dataclass
class ServerAppComponents:
    """What Flower's ``server_fn(context)`` returns: the run's strategy and config.
    Flower's ``server`` and ``client_manager`` have no counterpart and are refused."""

    strategy: Strategy | None = None
    config: ServerConfig | None = None
    server: object = None
    client_manager: object = None


ServerFn = Callable[[Context], ServerAppComponents]


class ServerApp:
    """A federated algorithm: a strategy (FedAvg by default) and a number of rounds.

    ``run_config`` declares the app's settings and their defaults (as Flower apps
    do in ``[tool.flwr.app.config]``); ``--run-config`` may then override only
    those, with values of the same type. Every ClientApp sees the result as
    ``context.run_config``.

    Or, as in Flower, ``server_fn(context)`` builds the strategy and config of each
    run from ``context.run_config`` (``num-server-rounds``, say), returning
    `ServerAppComponents`; `for_run` calls it.
    """

    def __init__(
        self,
        *,
        config: ServerConfig | None = None,
        strategy: Strategy | None = None,
        run_config: UserConfig | None = None,
        server_fn: ServerFn | None = None,
    ) -> None:
        if server_fn is not None and (config is not None or strategy is not None):
            raise ConfigurationError(
                "ServerApp(server_fn=..., config/strategy=...): give either server_fn, which "
                "returns ServerAppComponents(strategy=..., config=...), or config and strategy"
            )
        self.server_fn = server_fn
        self._config = config or ServerConfig()
        self._strategy = strategy or FedAvg()
        _check_aggregates(self._strategy)
        self.run_config: UserConfig = dict(run_config or {})
        self._warned: set[tuple[str, ...]] = set()

    @property
    def config(self) -> ServerConfig:
        self._check_built()
        return self._config

    @property
    def strategy(self) -> Strategy:
        self._check_built()
        return self._strategy

    def _check_built(self) -> None:
        if self.server_fn is not None:
            raise ConfigurationError(
                "this ServerApp builds its strategy and config in server_fn: use "
                "app.for_run(run_config) to get those of a run"
            )

    def for_run(self, run_config: UserConfig) -> ServerApp:
        """The app a run with ``run_config`` (merged, `merged_run_config`) runs: this one,
        or the strategy and config its ``server_fn`` builds for that run config."""
        if self.server_fn is None:
            return self
        components = self.server_fn(Context(0, {}, 0, dict(run_config)))
        if not isinstance(components, ServerAppComponents):
            raise ConfigurationError(
                f"server_fn returned {type(components).__name__}; return "
                "ServerAppComponents(strategy=..., config=ServerConfig(...))"
            )
        for name in ("server", "client_manager"):
            if getattr(components, name) is not None:
                raise ConfigurationError(
                    f"ServerAppComponents({name}=...): not supported by Pollen; leave it out "
                    "(give strategy=... and config=ServerConfig(...))"
                )
        built = ServerApp(
            config=components.config, strategy=components.strategy, run_config=self.run_config
        )
        built._warned = self._warned
        return built

    def merged_run_config(self, overrides: UserConfig, option: str = "--run-config") -> UserConfig:
        """The declared settings with ``overrides`` applied, each checked against its default.

        An app that declares no settings takes any key, unchecked: a warning
        (logged once per app and keys) names them, since a misspelt key would
        otherwise be ignored without a word.
        """
        if not self.run_config:
            unchecked = tuple(sorted(overrides))
            if unchecked and unchecked not in self._warned:
                self._warned.add(unchecked)
                logger.warning(
                    "%s %s: this ServerApp declares no settings, so Pollen cannot check these "
                    "names and a misspelt one is ignored; declare them with their defaults, "
                    "ServerApp(..., run_config={...}), to have them checked",
                    option,
                    ", ".join(unchecked),
                )
            return dict(overrides)
        merged = dict(self.run_config)
        for key, value in overrides.items():
            if key not in self.run_config:
                known = ", ".join(sorted(self.run_config))
                raise ConfigurationError(
                    f"{option} {key}: not a setting of this app; its settings are {known}"
                )
            merged[key] = _same_type(key, self.run_config[key], value, option)
        return merged


def _same_type(key: str, default: Scalar, value: Scalar, option: str) -> Scalar:
    """``value`` as the type of ``default``; an int is a fine float, a bool is no number."""
    if isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    if isinstance(default, bool) or isinstance(value, bool):
        accepted = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        accepted = isinstance(value, int | float)
        value = float(value) if accepted and not isinstance(value, str | bytes) else value
    else:
        accepted = type(value) is type(default)
    if not accepted:
        kind = type(default).__name__
        article = "an" if kind[0] in "aeiou" else "a"
        raise ConfigurationError(
            f"{option} {key}={value!r}: expected {article} {kind} like {default!r}"
        )
    return value


def _check_aggregates(strategy: Strategy) -> None:
    """A strategy aggregates fit results one way or the other: by a `FitAggregator`
    (Pollen's) or by an `aggregate_fit` override (Flower's)."""
    own = type(strategy).fit_aggregator is not Strategy.fit_aggregator
    if not own and not overrides_aggregate_fit(strategy):
        raise ConfigurationError(
            f"strategy {type(strategy).__name__} implements neither fit_aggregator (Pollen's: "
            "results folded in as they arrive) nor aggregate_fit (Flower's: all at once); "
            "implement one of them (see docs/strategies.md)"
        )
