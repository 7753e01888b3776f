"""Configs and metrics as JSON text (for the state store), bytes included."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from pollen.errors import RecordError
from pollen.records.typing import Scalar

_BYTES_TAG = "__bytes_base64__"


def config_to_json(config: Mapping[str, Scalar]) -> str:
    """Encode a config; bytes values survive as tagged base64."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, bytes):
            out[key] = {_BYTES_TAG: base64.b64encode(value).decode()}
        elif isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            raise RecordError(
                f"config value {key!r} is a {type(value).__name__}; "
                "use bool, int, float, str or bytes"
            )
    return json.dumps(out, separators=(",", ":"))


def config_from_json(text: str) -> dict[str, Scalar]:
    """Decode what `config_to_json` wrote."""
    raw = json.loads(text)
    return {
        key: base64.b64decode(value[_BYTES_TAG]) if isinstance(value, dict) else value
        for key, value in raw.items()
    }
