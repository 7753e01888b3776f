"""Whose runs an operator may act on.

With operator keys (``--operator-keys``), a run belongs to the key that created
it: another operator key may read nothing of it (its nodes, results, blobs) and
change nothing (tasks, release, finish, resume, prune), unless it is listed in
``--admin-keys``. Listing and reading runs (``pollen runs``) follows the same rule;
the nodes (``pollen nodes``) are the federation's, listed to every operator key.
Without operator keys the Driver API listens on loopback only,
nobody is identified, and every caller may act on every run, as before.

A run created without operator keys belongs to no key: once operator keys are
required, only administrators may act on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import grpc

from pollen.errors import ConfigurationError
from pollen.superlink.allowlist import RELOAD_SECONDS, AllowList
from pollen.superlink.request_verification import current_session
from pollen.superlink.state import State
from pollen.superlink.supervisor import Step

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class AdminKeys(AllowList):
    """The operator keys that may act on every run: a file in the allow-list format,
    watched the same way. While it is missing or unreadable no key is an
    administrator; a file with errors keeps only the administrators still in it."""

    MISSING_MEANS = (
        "no operator key is an administrator until it is back (each acts on its own runs only)"
    )


def load_admin_keys(path: Path, operator_keys: AllowList) -> AdminKeys:
    """Read ``--admin-keys``; every key in it must be an operator key too."""
    admins = AdminKeys.load(path, time.monotonic)
    assert isinstance(admins, AdminKeys)  # `load` makes its own class
    strangers = sorted(set(admins.keys) - set(operator_keys.keys))
    if strangers:
        raise ConfigurationError(
            f"--admin-keys {path} lists {', '.join(strangers)}, which --operator-keys "
            f"{operator_keys.path} does not; an administrator joins with an operator key: "
            "list it there too"
        )
    logger.info("Driver API: %d administrator keys (%s)", len(admins.keys), path)
    return admins


class RunAccess:
    """The rule of who may act on which run, applied by the Driver API to every call."""

    def __init__(self, state: State, admins: AdminKeys | None = None) -> None:
        self._state = state
        self._admins = admins

    @staticmethod
    def caller() -> str:
        """The operator key of the call being served ("" without operator keys)."""
        session = current_session.get()
        return session.fingerprint if session is not None else ""

    def _sees_all(self, caller: str) -> bool:
        return not caller or (self._admins is not None and caller in self._admins)

    def owner_filter(self) -> str | None:
        """Whose runs the caller may list and prune: None for all of them."""
        caller = self.caller()
        return None if self._sees_all(caller) else caller

    async def check_run(self, run_id: int, context: Context) -> None:
        """Refuse the call unless the caller may act on ``run_id`` (a run that does
        not exist is left to the caller to report)."""
        caller = self.caller()
        if self._sees_all(caller):
            return
        owner = self._state.run_owner(run_id)
        if owner is not None and owner != caller:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"run {run_id} belongs to another operator key",
            )

    async def check_visible(self, run_id: int, context: Context) -> None:
        """Refuse to show ``run_id`` unless it exists and the caller may read it; both
        refusals read the same, so that another operator's runs stay unknown."""
        caller = self.caller()
        owner = self._state.run_owner(run_id)
        if owner is None or not (self._sees_all(caller) or owner == caller):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run {run_id}: no such run")

    async def check_blob(self, digest: str, context: Context) -> None:
        """Refuse the call unless the caller may read ``digest``: a blob that runs hold
        is read only by the owners of those runs."""
        caller = self.caller()
        if self._sees_all(caller):
            return
        owners = self._state.blob_owners(digest)
        if owners and caller not in owners:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"blob {digest[:12]} belongs to runs of another operator key",
            )

    def reload_step(self) -> Step | None:
        """One check of the administrators' file for edits (None: there is none)."""
        admins = self._admins
        if admins is None:
            return None

        async def reload() -> None:
            await asyncio.sleep(RELOAD_SECONDS)
            admins.reload_if_changed()

        return reload
