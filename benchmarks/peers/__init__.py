"""Peers of Pollen's benchmarks: the same workloads run on other systems.

``peers.flower`` runs them on Flower 1.42.0, installed in its own virtual
environment, so that a benchmark can print Pollen's figure and Flower's from one run.
"""
