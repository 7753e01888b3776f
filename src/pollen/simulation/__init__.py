"""Federations of virtual nodes in one process: the same apps, no network."""

from pollen.simulation.backends import BACKENDS
from pollen.simulation.in_process_grid import InProcessGrid, partition_config
from pollen.simulation.pool_grid import ProcessPoolGrid
from pollen.simulation.simulate import run_simulation, start_simulation

__all__ = [
    "BACKENDS",
    "InProcessGrid",
    "ProcessPoolGrid",
    "partition_config",
    "run_simulation",
    "start_simulation",
]
