"""What an app knows about where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pollen.records.typing import UserConfig


@dataclass
class Context:
    """The node and run an app is executing for.

    ``node_config`` comes from the SuperNode's ``--node-config``; ``run_config``
    from the ServerApp's ``--run-config``. ``state`` survives between tasks of the
    same run on the same node.
    """

    node_id: int
    node_config: UserConfig
    run_id: int = 0
    run_config: UserConfig = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
