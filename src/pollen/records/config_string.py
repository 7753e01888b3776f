"""Parsing of ``key=value,key=value`` strings (``--node-config``, ``--run-config``).

Settings are separated by commas. A value in quotes (``name="a,b;c=d"``) is
text as written; an unquoted value holding ``=`` or ``;`` is refused, because
it is almost always two settings run together (``partition-id=0;num-partitions=2``
would otherwise give ``partition-id`` the text ``0;num-partitions=2``).
"""

from __future__ import annotations

import re

from pollen.errors import ConfigurationError
from pollen.records.typing import Scalar, UserConfig

_QUOTES = "\"'"
_SEPARATOR_LOOKALIKES = ";="
# ';' between settings, or blanks before the next ``key=``: what a comma was meant to be
_MISTAKEN_SEPARATOR = re.compile(r"\s*;\s*|\s+(?=[^\s=;,]+=)")


def parse_value(text: str) -> Scalar:
    """``true``/``false`` become bool, numbers int or float, quoted text str."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
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
    """Parse ``a=1,b=x`` into ``{"a": 1, "b": "x"}``; an empty string gives ``{}``.

    Raises `ConfigurationError` for an item that is not ``key=value``, a key given
    twice, an unclosed quote, and an unquoted value holding ``=`` or ``;``.
    """
    config: UserConfig = {}
    raw_values: dict[str, str] = {}
    for item in (part.strip() for part in _split_items(text, option)):
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ConfigurationError(
                f"{option}: {item!r} is not key=value; write e.g. {option} partition-id=0,lr=0.1"
            )
        if key in config:
            raise ConfigurationError(
                f"{option} {key}: given twice ({key}={raw_values[key]} and {key}={raw}); "
                "give each setting once"
            )
        config[key] = _item_value(key, raw, item, option)
        raw_values[key] = raw
    return config


def _split_items(text: str, option: str) -> list[str]:
    """``text`` cut at the commas that are not inside a quoted value."""
    items: list[str] = []
    current = ""
    quote = ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in _QUOTES and _at_value_start(current):
            quote = char
        elif char == ",":
            items.append(current)
            current = ""
            continue
        current += char
    if quote:
        raise ConfigurationError(
            f"{option} {current.strip()}: the quote {quote} is not closed; "
            f"end the value with {quote}"
        )
    items.append(current)
    return items


def _at_value_start(item: str) -> bool:
    """Whether ``item`` so far is ``key=`` and blanks: a quote here opens a quoted value."""
    _, sep, value = item.partition("=")
    return bool(sep) and not value.strip()


def _item_value(key: str, raw: str, item: str, option: str) -> Scalar:
    if raw and raw[0] in _QUOTES:
        if len(raw) < 2 or raw[-1] != raw[0]:
            raise ConfigurationError(
                f"{option} {item}: text follows the closing quote; quote the whole value "
                f"({key}={raw[0]}...{raw[0]}) and separate settings with commas"
            )
        return raw[1:-1]
    found = [char for char in _SEPARATOR_LOOKALIKES if char in raw]
    if found:
        raise ConfigurationError(_mistaken_separator(key, raw, item, option, found))
    return parse_value(raw)


def _mistaken_separator(key: str, raw: str, item: str, option: str, found: list[str]) -> str:
    held = " and ".join(repr(char) for char in found)
    fixed = _MISTAKEN_SEPARATOR.sub(",", item)
    suggestion = fixed != item and all("=" in part for part in fixed.split(","))
    commas = f" ({fixed})" if suggestion else ""
    return (
        f"{option} {item}: the value {raw!r} holds {held}, which looks like another setting; "
        f"separate settings with commas{commas}, or quote a value that holds {held} on purpose "
        f"({option} '{key}=\"{raw}\"')"
    )
