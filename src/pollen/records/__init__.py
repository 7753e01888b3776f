"""Records: arrays, configs and metrics as data, with their byte layouts and digests.

This layer knows nothing of SuperLink, SuperNodes or strategies.
"""
