"""Loading a user's app from ``MODULE:ATTRIBUTE`` in a project directory."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TypeVar

from pollen.errors import AppLoadError, ConfigurationError

T = TypeVar("T")


def check_dir(directory: Path) -> Path:
    if not directory.is_dir():
        raise ConfigurationError(
            f"--dir {directory}: no such directory; point --dir at the folder holding your app"
        )
    return directory.resolve()


def load_app(reference: str, directory: Path, expected: type[T]) -> T:
    """Import ``module:attribute`` from ``directory`` and check it is an ``expected``."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise AppLoadError(f"{reference!r} is not MODULE:ATTRIBUTE; write e.g. client:app")
    root = check_dir(directory)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name.split(".")[0]:
            raise AppLoadError(
                f"{reference}: module {module_name!r} not found in {root}; check the name or --dir"
            ) from exc
        raise AppLoadError(f"{reference}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:  # the user's module failed at import: say so in one line
        raise AppLoadError(
            f"{reference}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise AppLoadError(
            f"{reference}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not isinstance(app, expected):
        raise AppLoadError(
            f"{reference} is a {type(app).__name__}, not a {expected.__name__}; "
            f"assign {attribute} = {expected.__name__}(...)"
        )
    return app
