"""The allow-list: the public keys that may join, read from a file and reloaded when it changes.

Two layouts are accepted, mixed freely: the ``client_public_keys.csv`` of
Flower's client-authentication example (keys on one line, comma-separated) and one key per line,
with ``#`` comments.

A reload fails closed: a key gone from the file loses access even when the file
has errors elsewhere, and a key new in it waits until the file is clean. A file
that is missing or unreadable revokes nobody, but closes the door to new joins
until it is back.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pollen.errors import ConfigurationError
from pollen.transport import keys

logger = logging.getLogger(__name__)


_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL)

RELOAD_SECONDS = 0.5
"""How often allow-list files (keys, operators, administrators) are checked for changes."""

MISSING_LOG_SECONDS = 60.0
"""While the file stays missing, its error is logged again this often."""

ERRORS_LOGGED = 5
"""Errors of one reload named in its warning; the rest are counted."""


@dataclass
class ParsedList:
    """The keys a file holds, and the errors of the entries that could not be read."""

    keys: dict[str, keys.PublicKey] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)
    """(line, message) of each entry that is not a key, in the order of the file."""

    def add(self, item: str, where: str, line: int) -> None:
        try:
            key = keys.parse_public_key(item, where)
        except ConfigurationError as exc:
            self.errors.append((line, str(exc)))
            return
        self.keys[keys.fingerprint(key)] = key


def read_allowlist(text: str, path: Path) -> ParsedList:
    """Every key of ``text`` that can be read, and an error naming the line of each that cannot."""
    parsed = ParsedList()
    text = text.replace("\ufeff", "")  # byte-order marks, as editors on Windows write them
    for block in _PEM_BLOCK.finditer(text):
        start = text.count("\n", 0, block.start()) + 1
        parsed.add(block.group(), f"{path} line {start}", start)
    # blank PEM blocks out, keeping line numbers for the OpenSSH keys around them
    text = _PEM_BLOCK.sub(lambda m: "\n" * m.group().count("\n"), text)
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        entries = [part.strip() for part in content.split(",")]
        for index, item in enumerate(entries, start=1):
            if item:
                where = f"{path} line {number}"
                if len(entries) > 1:  # the example's layout: say which key of the line
                    where += f" entry {index} of {len(entries)} ({_excerpt(item)!r})"
                if "\ufffd" in item:
                    parsed.errors.append((number, f"{where}: not UTF-8 text; save it as UTF-8"))
                else:
                    parsed.add(item, where, number)
    parsed.errors.sort(key=lambda error: error[0])
    return parsed


def parse_allowlist(text: str, path: Path) -> dict[str, keys.PublicKey]:
    """Keys by fingerprint; the first error, naming the file and the line, is raised."""
    parsed = read_allowlist(text, path)
    if parsed.errors:
        raise ConfigurationError(parsed.errors[0][1])
    return parsed.keys


def _excerpt(item: str, width: int = 48) -> str:
    """An entry short enough for a one-line error: its start and its comment, if any.

    Keys of one type all start alike; the comment (``pollen-client-3``) tells them apart.
    """
    if len(item) <= width:
        return item
    fields = item.split(None, 2)
    comment = f" {fields[2][:24]}" if len(fields) == 3 else ""
    return f"{item[:28]}...{comment}"


def _decode(data: bytes) -> str:
    """The file's text: UTF-8, or UTF-16 where a byte-order mark says so (Windows tools)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8", errors="replace")  # bad bytes are named by their line


def _read(path: Path) -> str:
    try:
        return _decode(path.read_bytes())
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: allow-list file not found") from None
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the allow-list ({exc.strerror or exc})"
        ) from None


Signature = tuple[int, ...]
"""What tells one version of the file from another; empty when there is no file."""


def _signature(path: Path) -> Signature:
    try:
        stat = os.stat(path)
    except OSError:
        return ()
    # st_ctime_ns: a chmod that makes an unreadable file readable is a change too
    return (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)


@dataclass(frozen=True)
class Reload:
    """What one reload of the file changed."""

    added: frozenset[str]
    """Keys admitted now."""
    removed: frozenset[str]
    """Keys revoked now: gone from the file, or on a line that could not be read."""
    waiting: frozenset[str]
    """Keys new in a file with errors: not admitted until the file is clean."""
    errors: tuple[str, ...]
    """The errors of the file as read, one per entry that is not a key."""


@dataclass
class AllowList:
    """The keys of one file that may join now."""

    path: Path
    keys: dict[str, keys.PublicKey] = field(default_factory=dict)
    """The keys in force."""
    clock: Callable[[], float] = time.monotonic
    waiting: frozenset[str] = frozenset()
    """Keys listed in a file with errors, not admitted until it is clean."""
    missing: str = ""
    """Why the file cannot be read, while it cannot: new joins are refused meanwhile."""
    errors: tuple[str, ...] = ()
    """The errors of the file as last read."""
    _seen: Signature | None = None
    _pending: Signature | None = None
    _missing_logged: float | None = None
    MISSING_MEANS = (
        "every new join is refused until it is back (sessions already open go on, "
        "keys stay as they were)"
    )
    """What a missing file means for this list, in its error."""

    @classmethod
    def load(cls, path: Path, clock: Callable[[], float] = time.monotonic) -> AllowList:
        """Read ``path``; a missing or malformed file is a `ConfigurationError`."""
        allowlist = cls(path, clock=clock)
        signature = _signature(path)
        allowlist.keys = parse_allowlist(_read(path), path)
        allowlist._seen = signature
        return allowlist

    def __contains__(self, fingerprint: str) -> bool:
        """Whether ``fingerprint`` may join now (nobody may while the file is missing)."""
        return not self.missing and fingerprint in self.keys

    def reload_if_changed(self) -> Reload | None:
        """Re-read the file if it changed; return what changed, or None.

        A change is applied once the file has stayed the same for one more check,
        so that a file caught half-written is not taken for the new list. A file
        with errors is applied in part (see `Reload`); a missing one changes no
        key but refuses every join until it is back, and says so in the log.
        """
        signature = _signature(self.path)
        if signature == self._seen:
            self._pending = None
            if self.missing:
                self._log_missing()
            return None
        if signature != self._pending:
            self._pending = signature
            return None
        self._seen, self._pending = signature, None
        try:
            text = _read(self.path)
        except ConfigurationError as exc:
            self.missing, self._missing_logged = str(exc), None
            self._log_missing()
            return None
        if self.missing:
            logger.warning("allow-list %s is back: new joins are admitted again", self.path)
            self.missing = ""
        return self._apply(read_allowlist(text, self.path))

    def _log_missing(self) -> None:
        now = self.clock()
        if self._missing_logged is not None and now - self._missing_logged < MISSING_LOG_SECONDS:
            return
        self._missing_logged = now
        logger.error("%s; %s; restore the file or write it anew", self.missing, self.MISSING_MEANS)

    def _apply(self, parsed: ParsedList) -> Reload:
        removed = frozenset(self.keys) - frozenset(parsed.keys)
        errors = tuple(message for _, message in parsed.errors)
        had_errors, self.errors = self.errors, errors
        if not errors:
            added = frozenset(parsed.keys) - frozenset(self.keys)
            if had_errors:
                logger.warning("allow-list %s is clean again: all its keys apply", self.path)
            self.keys, self.waiting = dict(parsed.keys), frozenset()
            return Reload(added, removed, frozenset(), errors)
        self.waiting = frozenset(parsed.keys) - frozenset(self.keys)
        self.keys = {f: key for f, key in self.keys.items() if f in parsed.keys}
        logger.warning(
            "allow-list %s applied in part, it has %s: %s; revoked (gone from it or on a line "
            "with an error): %s; new keys waiting until the file is clean: %s",
            self.path,
            _count(len(errors), "error"),
            _listed(errors),
            ", ".join(sorted(removed)) or "none",
            ", ".join(sorted(self.waiting)) or "none",
        )
        return Reload(frozenset(), removed, self.waiting, errors)


def _count(number: int, word: str) -> str:
    return f"{number} {word}" + ("" if number == 1 else "s")


def _listed(errors: tuple[str, ...]) -> str:
    shown = "; ".join(errors[:ERRORS_LOGGED])
    hidden = len(errors) - ERRORS_LOGGED
    return shown + (f"; and {_count(hidden, 'more error')}" if hidden > 0 else "")
