"""Strategies: FedAvg and the `Strategy` interface to write others."""

from pollen.records.replies import EvaluateIns, FitIns
from pollen.server.strategy.bulyan import Bulyan
from pollen.server.strategy.dp_adaptive_clipping import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
)
from pollen.server.strategy.dp_fixed_clipping import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from pollen.server.strategy.fault_tolerant_fedavg import FaultTolerantFedAvg
from pollen.server.strategy.fedavg import FedAvg
from pollen.server.strategy.fedavgm import FedAvgM
from pollen.server.strategy.fedmedian import FedMedian
from pollen.server.strategy.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from pollen.server.strategy.fedprox import FedProx
from pollen.server.strategy.fedtrimmedavg import FedTrimmedAvg
from pollen.server.strategy.krum import Krum
from pollen.server.strategy.qfedavg import QFedAvg
from pollen.server.strategy.strategy import FitAggregator, Strategy

__all__ = [
    "Bulyan",
    "DifferentialPrivacyClientSideAdaptiveClipping",
    "DifferentialPrivacyClientSideFixedClipping",
    "DifferentialPrivacyServerSideAdaptiveClipping",
    "DifferentialPrivacyServerSideFixedClipping",
    "EvaluateIns",
    "FaultTolerantFedAvg",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "FitAggregator",
    "FitIns",
    "Krum",
    "QFedAvg",
    "Strategy",
]
