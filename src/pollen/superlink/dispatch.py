"""Task delivery and result fan-out, in memory, over the durable `State`.

Every method runs on the SuperLink's event loop and calls the state
synchronously, so a subscription that registers its queue and then reads its
pending tasks cannot interleave with a concurrent push: no task is lost or
delivered twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pollen.records.messages import Result, Task
from pollen.superlink.state import State

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(eq=False)
class Subscription:
    """One open task stream of one node. ``None`` in the queue closes it."""

    node_id: int
    queue: asyncio.Queue[Task | None] = field(default_factory=asyncio.Queue)
    close_reason: str = ""
    closed: bool = False

    def close(self, reason: str) -> None:
        """End the stream now: tasks still queued here are not sent on it."""
        self.close_reason = reason
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Dispatcher:
    """Pushes tasks to subscribed nodes and results to listening ServerApps."""

    def __init__(self, state: State, clock: Clock = time.time) -> None:
        self.state = state
        self.clock = clock
        self.closing = False
        self._subscriptions: dict[int, Subscription] = {}
        self._last_seen: dict[int, float] = {}
        self._listeners: dict[int, set[asyncio.Queue[Result | None]]] = {}

    # nodes
    def online_nodes(self) -> list[int]:
        return sorted(self._subscriptions)

    def subscribe(self, node_id: int) -> Subscription:
        """Open ``node_id``'s stream; a newer stream replaces an older one."""
        # The state first: if the disk refuses, no half-open subscription stays behind.
        now = self.clock()
        # Tasks sent on a stream that broke unnoticed may never have arrived: send again.
        self.state.requeue_delivered(node_id)
        pending = self.state.pending_tasks(node_id)
        self.state.set_node_status(node_id, "online", now)
        old = self._subscriptions.get(node_id)
        if old is not None:
            old.close("replaced by a newer subscription of the same node")
        subscription = Subscription(node_id)
        self._subscriptions[node_id] = subscription
        self._last_seen[node_id] = now
        for task in pending:
            subscription.queue.put_nowait(task)
        logger.info("node %d connected", node_id)
        return subscription

    def unsubscribe(self, subscription: Subscription, reason: str) -> None:
        """The stream ended: the node is offline at once and its open tasks fail."""
        if self._subscriptions.get(subscription.node_id) is not subscription:
            return
        del self._subscriptions[subscription.node_id]
        self._last_seen.pop(subscription.node_id, None)
        if self.closing:
            return  # a restart must not fail tasks that nodes can still answer
        node_id = subscription.node_id
        node = self.state.get_node(node_id)
        if node is not None and node.status == "online":
            self.state.set_node_status(node_id, "offline", self.clock())
        reason = subscription.close_reason or reason
        logger.info("node %d disconnected: %s", node_id, reason)
        self.fail_open_tasks(node_id, f"node {node_id} went offline ({reason})")

    def unregister(self, node_id: int) -> None:
        """A node left for good: it is never sampled again."""
        self.state.set_node_status(node_id, "left", self.clock())
        subscription = self._subscriptions.get(node_id)
        if subscription is not None:
            subscription.close("the node unregistered")
        self.fail_open_tasks(node_id, f"node {node_id} unregistered")

    def disconnect(self, node_id: int, reason: str) -> None:
        """Close ``node_id``'s open stream (its key was revoked or replaced)."""
        subscription = self._subscriptions.get(node_id)
        if subscription is not None:
            subscription.close(reason)

    def heartbeat(self, node_id: int) -> None:
        """``node_id`` is alive: a heartbeat, or a chunk of a blob it moves, arrived."""
        if node_id in self._last_seen:  # only a node with an open stream can go stale
            self._last_seen[node_id] = self.clock()

    def close_stale(self, max_silence: float) -> list[int]:
        """Close the streams of nodes silent for longer than ``max_silence`` seconds."""
        now = self.clock()
        stale = [n for n, seen in self._last_seen.items() if now - seen > max_silence]
        for node_id in stale:
            subscription = self._subscriptions.get(node_id)
            if subscription is not None:
                subscription.close(f"no heartbeat for {now - self._last_seen[node_id]:.1f} s")
        return stale

    def close_all(self) -> None:
        self.closing = True
        for subscription in list(self._subscriptions.values()):
            subscription.close("the SuperLink is shutting down")

    # tasks and results
    def push_tasks(self, tasks: Sequence[Task], again: Sequence[Task] = ()) -> None:
        """Store ``tasks`` and hand each to its node's open stream, or fail it at once.

        ``again``: tasks stored by an earlier push that may not have reached a
        stream (that push failed part-way); a task already sent or answered is
        skipped when its stream takes it, so none is delivered twice.
        """
        self.state.add_tasks(tasks)
        unconnected = []
        for task in [*tasks, *again]:  # every stream first: failing the others writes
            subscription = self._subscriptions.get(task.node_id)
            if subscription is not None:
                subscription.queue.put_nowait(task)
            else:
                unconnected.append(task)
        for task in unconnected:
            self._fail(task, f"node {task.node_id} is not connected")

    def fail_open_tasks(self, node_id: int, reason: str) -> None:
        for task in self.state.open_tasks(node_id):
            self._fail(task, reason)

    def expire_tasks(self, ttl: float) -> int:
        """Fail tasks left unanswered for longer than ``ttl`` seconds; return how many."""
        expired = self.state.open_tasks_created_before(self.clock() - ttl)
        for task in expired:
            self._fail(task, f"no answer within the task TTL of {ttl:g} s")
        return len(expired)

    def end_run(self, run_id: int, reason: str) -> None:
        """A finished run's unanswered tasks fail and leave the nodes' queues."""
        for task in self.state.open_tasks_of_run(run_id):
            self._fail(task, reason)

    def _fail(self, task: Task, reason: str) -> None:
        self.add_result(Result(task.task_id, task.run_id, task.node_id, task.kind, error=reason))

    def add_result(self, result: Result) -> bool:
        """Store a result and wake the ServerApps waiting for its run."""
        if not self.state.add_result(result):
            return False
        for queue in self._listeners.get(result.run_id, ()):
            queue.put_nowait(result)
        return True

    def listen(self, run_id: int) -> asyncio.Queue[Result | None]:
        """A queue of the run's results as they arrive (``None`` tells the listener to stop)."""
        queue: asyncio.Queue[Result | None] = asyncio.Queue()
        self._listeners.setdefault(run_id, set()).add(queue)
        return queue

    def unlisten(self, run_id: int, queue: asyncio.Queue[Result | None]) -> None:
        listeners = self._listeners.get(run_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[run_id]
