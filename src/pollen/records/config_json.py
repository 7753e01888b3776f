"""Configs, metrics and message contents as JSON text (for the state store), bytes included."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from pollen.errors import RecordError
from pollen.records.messages import BlobRef, Records
from pollen.records.typing import Scalar

_BYTES_TAG = "__bytes_base64__"


def _scalars_out(config: Mapping[str, Scalar]) -> dict[str, object]:
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
    return out


def _scalars_in(raw: Mapping[str, Any]) -> dict[str, Scalar]:
    return {
        key: base64.b64decode(value[_BYTES_TAG]) if isinstance(value, dict) else value
        for key, value in raw.items()
    }


def config_to_json(config: Mapping[str, Scalar]) -> str:
    """Encode a config; bytes values survive as tagged base64."""
    return json.dumps(_scalars_out(config), separators=(",", ":"))


def config_from_json(text: str) -> dict[str, Scalar]:
    """Decode what `config_to_json` wrote."""
    return _scalars_in(json.loads(text))


def records_to_json(records: Records[BlobRef]) -> str:
    """Encode a message's content: blobs as ``[digest, size]``, scalar records as above."""
    return json.dumps(
        {
            "arrays": {name: [ref.digest, ref.size] for name, ref in records.arrays.items()},
            "metrics": {name: _scalars_out(m) for name, m in records.metrics.items()},
            "configs": {name: _scalars_out(c) for name, c in records.configs.items()},
        },
        separators=(",", ":"),
    )


def records_from_json(text: str) -> Records[BlobRef]:
    """Decode what `records_to_json` wrote."""
    raw = json.loads(text)
    return Records(
        arrays={name: BlobRef(digest, int(size)) for name, (digest, size) in raw["arrays"].items()},
        metrics={name: _scalars_in(m) for name, m in raw["metrics"].items()},
        configs={name: _scalars_in(c) for name, c in raw["configs"].items()},
    )
