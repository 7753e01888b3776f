"""Federations of virtual nodes in one process: the same apps, no network."""

from pollen.simulation.in_process_grid import InProcessGrid, partition_config

__all__ = ["InProcessGrid", "partition_config"]
