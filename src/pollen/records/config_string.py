"""Parsing of ``key=value,key=value`` strings (``--node-config``, ``--run-config``)."""

from __future__ import annotations

from pollen.errors import ConfigurationError
from pollen.records.typing import Scalar, UserConfig


def parse_value(text: str) -> Scalar:
    """``true``/``false`` become bool, numbers int or float, quoted text str."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_config_string(text: str, option: str = "--node-config") -> UserConfig:
    """Parse ``a=1,b=x`` into ``{"a": 1, "b": "x"}``; an empty string gives ``{}``."""
    config: UserConfig = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(
                f"{option}: {item!r} is not key=value; write e.g. {option} partition-id=0,lr=0.1"
            )
        config[key.strip()] = parse_value(value.strip())
    return config
