"""Aggregation rules as plain computations over arriving updates.

Each rule is written once, here, independent of any strategy class: the
1.8-era strategies (`pollen.server.strategy`) and later front doors call it.
"""
