"""The allow-list: the public keys that may join, read from a file and reloaded when it changes.

Two layouts are accepted, mixed freely: the seed's ``client_public_keys.csv``
(keys on one line, comma-separated) and one key per line, with ``#`` comments.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pollen.errors import ConfigurationError
from pollen.transport import keys

logger = logging.getLogger(__name__)


_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL)


def parse_allowlist(text: str, path: Path) -> dict[str, keys.PublicKey]:
    """Keys by fingerprint; errors name the file and the line."""
    allowed: dict[str, keys.PublicKey] = {}
    for block in _PEM_BLOCK.finditer(text):
        start = text.count("\n", 0, block.start()) + 1
        key = keys.parse_public_key(block.group(), f"{path} line {start}")
        allowed[keys.fingerprint(key)] = key
    # blank PEM blocks out, keeping line numbers for the OpenSSH keys around them
    text = _PEM_BLOCK.sub(lambda m: "\n" * m.group().count("\n"), text)
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        entries = [part.strip() for part in content.split(",")]
        for index, item in enumerate(entries, start=1):
            if item:
                where = f"{path} line {number}"
                if len(entries) > 1:  # the seed's layout: say which key of the line
                    where += f" entry {index} of {len(entries)} ({_excerpt(item)!r})"
                key = keys.parse_public_key(item, where)
                allowed[keys.fingerprint(key)] = key
    return allowed


def _excerpt(item: str, width: int = 48) -> str:
    """An entry short enough for a one-line error: its start and its comment, if any.

    Keys of one type all start alike; the comment (``pollen-client-3``) tells them apart.
    """
    if len(item) <= width:
        return item
    fields = item.split(None, 2)
    comment = f" {fields[2][:24]}" if len(fields) == 3 else ""
    return f"{item[:28]}...{comment}"


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


@dataclass
class AllowList:
    """The keys of one file, as last read successfully."""

    path: Path
    keys: dict[str, keys.PublicKey] = field(default_factory=dict)
    _seen: tuple[int, int, int] | None = None
    _pending: tuple[int, int, int] | None = None

    @classmethod
    def load(cls, path: Path) -> AllowList:
        """Read ``path``; a missing or malformed file is a `ConfigurationError`."""
        allowlist = cls(path)
        signature = _signature(path)
        if signature is None:
            raise ConfigurationError(f"{path}: allow-list file not found")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{path}: cannot read the allow-list ({exc})") from None
        allowlist.keys = parse_allowlist(text, path)
        allowlist._seen = signature
        return allowlist

    def __contains__(self, fingerprint: str) -> bool:
        return fingerprint in self.keys

    def reload_if_changed(self) -> tuple[set[str], set[str]] | None:
        """Re-read the file if it changed; return (added, removed) fingerprints, or None.

        A change is applied once the file has stayed the same for one more check,
        so that a file caught half-written is not taken for the new list. A file
        that is malformed or gone keeps the previous keys in force (a typo must
        not lock every node out) and is logged as an error.
        """
        signature = _signature(self.path)
        if signature == self._seen:
            self._pending = None
            return None
        if signature != self._pending:
            self._pending = signature
            return None
        self._seen, self._pending = signature, None
        try:
            fresh = AllowList.load(self.path).keys
        except ConfigurationError as exc:
            logger.error("allow-list not reloaded, previous keys stay in force: %s", exc)
            return None
        added = set(fresh) - set(self.keys)
        removed = set(self.keys) - set(fresh)
        self.keys = fresh
        return added, removed
