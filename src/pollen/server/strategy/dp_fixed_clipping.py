"""Central differential privacy with a fixed clipping norm (McMahan et al., 2018;
Geyer et al., 2017), on the server or on the nodes: Flower's wrappers of these names."""

from __future__ import annotations

import numpy as np

from pollen.aggregation.dp_clipping import KEY_CLIPPING_NORM, check_clipped, clip_update
from pollen.records.replies import FitRes
from pollen.server.strategy.dp_wrapper import DPRound, DPWrapper
from pollen.server.strategy.strategy import Strategy


class _FixedClipping(DPWrapper):
    """A fixed bound, for both sides: Flower's arguments, in Flower's order."""

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        target_delta: float | None = None,
        sampling_rate: float | None = None,
        noise_generator: np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            strategy,
            noise_multiplier,
            num_sampled_clients,
            clipping_norm,
            target_delta=target_delta,
            sampling_rate=sampling_rate,
            noise_generator=noise_generator,
        )


class DifferentialPrivacyServerSideFixedClipping(_FixedClipping):
    """Central DP with server-side fixed clipping, around any Pollen strategy.

    Each node's update (its weights minus the round's global model) is clipped to an
    L2 norm of ``clipping_norm`` on the server as it arrives and folded into
    ``strategy``'s aggregator; Gaussian noise of standard deviation ``noise_multiplier
    * clipping_norm / num_sampled_clients`` is added to the new model. Sampling,
    configuration and evaluation are ``strategy``'s.

    Arguments as Flower 1.42's class of this name, and keyword-only:

    - ``target_delta``: with it, the ε spent so far is logged after each round and
      recorded as ``dp_epsilon`` in the round's fit metrics (``metrics.json``), by
      dp-accounting's RDP accountant (``pip install 'pollen[dp]'``); a resumed run
      goes on counting from its round number.
    - ``sampling_rate``: the probability of a node taking part in a round, for the
      accountant; by default ``num_sampled_clients / min_available_clients`` of the
      wrapped strategy (an upper bound: the round loop waits for that many nodes).
      Fixed-size sampling is accounted as Poisson sampling of that rate, as is usual.
    - ``noise_generator``: a `numpy.random.Generator` for the noise (by default one
      seeded from the operating system; give a seeded one only to reproduce an
      experiment).

    The guarantee is node-level (ε, δ) differential privacy of the sequence of
    global models, towards anyone who sees them; the ServerApp itself sees each
    update (central DP). As in Flower, the noise assumes that no node weighs more
    than ``1 / num_sampled_clients`` in the aggregate: FedAvg weighs results by their
    examples, so for the stated guarantee have the nodes report equal ``num_examples``.

    As Flower's: a round with a failed or rejected result keeps the model (the
    noise is calibrated to ``num_sampled_clients`` results). Unlike Flower's, a round
    in which the wrapped strategy samples another number of nodes than
    ``num_sampled_clients`` stops the run before any node is asked (Flower warns
    after the round). Memory: the global model, the wrapped aggregator's running
    state and one result: O(model) whatever the number of nodes.
    """

    def admit(self, state: DPRound, result: FitRes) -> tuple[FitRes, bool]:
        arrays, clipped = clip_update(result.parameters, state.reference, state.clipping_norm)
        return FitRes(arrays, result.num_examples, result.metrics), not clipped


class DifferentialPrivacyClientSideFixedClipping(_FixedClipping):
    """Central DP with fixed clipping on the nodes: their ClientApp runs
    ``pollen.client.mod.fixedclipping_mod``, the server adds the noise.

    The bound goes to every sampled node in its fit config (``clipping_norm``, Flower's
    key); each node clips its own update before sending it. The server checks each
    arriving update against the bound (beyond Flower, which trusts the node): one that
    exceeds it (a ClientApp without the mod) is rejected with its reason, and the round
    keeps its model. Then ``strategy`` aggregates, and Gaussian noise of standard
    deviation ``noise_multiplier * clipping_norm / num_sampled_clients`` is added.

    Arguments as `DifferentialPrivacyServerSideFixedClipping`'s (Flower's, plus
    ``target_delta``, ``sampling_rate`` and ``noise_generator``).
    """

    def fit_config_extra(self) -> dict[str, float]:
        return {KEY_CLIPPING_NORM: self.clipping_norm}

    def admit(self, state: DPRound, result: FitRes) -> tuple[FitRes, bool]:
        norm = check_clipped(result.parameters, state.reference, state.clipping_norm)
        return result, norm < state.clipping_norm
