"""A ServerApp misconfigured on purpose: a fraction of nodes above 1."""

from pollen.server import ServerApp
from pollen.server.strategy import FedAvg

app = ServerApp(strategy=FedAvg(fraction_fit=1.5))
