"""The privacy a DP run has spent: ε after r rounds, from Google's `dp-accounting`.

Each round is one Gaussian mechanism (noise multiplier z: noise of standard
deviation z * clipping_norm on the sum of the clipped updates, whose sensitivity to
one node is clipping_norm) applied to a sample of the nodes, each node in it with
probability q (``sampling_rate``). The rounds compose; the accountant (Rényi DP,
Mironov 2017, with amplification by Poisson subsampling, Mironov et al. 2019)
turns the composition into the smallest ε it can prove for ``target_delta``.
No composition math is written here: the library does all of it.

ε after round r depends only on r and the settings, so it is recomputed from the
round number each round (about 50 ms): nothing to save, and a resumed run
continues the count where it stood.

`dp-accounting` is an optional dependency (``pip install 'pollen[dp]'``), imported
only when an accountant is made.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from typing import Any

from pollen.errors import ConfigurationError


def _library() -> tuple[Any, Any]:
    try:
        return (
            importlib.import_module("dp_accounting"),
            importlib.import_module("dp_accounting.rdp"),
        )
    except ImportError:
        raise ConfigurationError(
            "target_delta needs the privacy accountant dp-accounting, which is not installed: "
            "pip install 'pollen[dp]' (or leave target_delta unset to run without one)"
        ) from None


@contextlib.contextmanager
def _quiet_orders() -> Iterator[None]:
    # The RDP accountant logs a warning for each fractional order whose series does
    # not converge and leaves that order out: harmless, and one line per order.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


class PrivacyAccountant:
    """ε spent after a number of rounds, each a Poisson-subsampled Gaussian mechanism.

    ``noise_multiplier``: z, the noise's standard deviation over the clipping norm on
    the sum of updates. ``sampling_rate``: the probability that a node takes part in
    a round. ``target_delta``: the δ of the (ε, δ) guarantee, in (0, 1). Node-level
    privacy under add-or-remove-one-node neighbouring.
    """

    def __init__(self, noise_multiplier: float, sampling_rate: float, target_delta: float) -> None:
        self._dp, self._rdp = _library()
        self.noise_multiplier = noise_multiplier
        self.sampling_rate = sampling_rate
        self.target_delta = target_delta

    def epsilon(self, rounds: int) -> float:
        """ε after ``rounds`` rounds (infinite without noise, 0 after no round)."""
        if rounds <= 0:
            return 0.0
        dp = self._dp
        event = dp.SelfComposedDpEvent(
            dp.PoissonSampledDpEvent(self.sampling_rate, dp.GaussianDpEvent(self.noise_multiplier)),
            rounds,
        )
        accountant = self._rdp.RdpAccountant()
        with _quiet_orders():
            accountant.compose(event)
            return float(accountant.get_epsilon(self.target_delta))
