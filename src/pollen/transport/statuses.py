"""Former home of what a SuperLink status tells a client: now `retry_policy`.

Only the names that files being rewritten elsewhere still import are left here;
remove this module once ``superlink/sessions.py``, ``superlink/fleet_service.py``
and ``supernode/task_runner.py`` import them from `pollen.transport.retry_policy`.
"""

from __future__ import annotations

from pollen.transport.retry_policy import DISPLACED, storage_full

__all__ = ["DISPLACED", "storage_full"]
