"""Delivery of instructions and fan-out of replies, in memory, over the durable `State`.

Every method runs on the SuperLink's event loop and calls the state
synchronously, so a subscription that registers its queue and then reads its
pending instructions cannot interleave with a concurrent push: none is lost or
delivered twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pollen.records.messages import Message
from pollen.superlink.state import State
from pollen.superlink.telemetry import Telemetry

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(eq=False)
class Subscription:
    """One open instruction stream of one node. ``None`` in the queue closes it."""

    node_id: int
    queue: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    close_reason: str = ""
    closed: bool = False

    def close(self, reason: str) -> None:
        """End the stream now: instructions still queued here are not sent on it."""
        self.close_reason = reason
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Dispatcher:
    """Pushes instructions to subscribed nodes and replies to listening ServerApps."""

    def __init__(
        self, state: State, clock: Clock = time.time, telemetry: Telemetry | None = None
    ) -> None:
        self.state = state
        self.clock = clock
        self.telemetry = telemetry or Telemetry()
        self.closing = False
        self._subscriptions: dict[int, Subscription] = {}
        self._last_seen: dict[int, float] = {}
        self._addresses: dict[int, str] = {}
        """Each node's peer address on its current or last stream, as gRPC names it
        (``ipv4:HOST:PORT``): in memory only, one entry per node."""
        self._listeners: dict[int, set[asyncio.Queue[Message | None]]] = {}

    # nodes
    def online_nodes(self) -> list[int]:
        return sorted(self._subscriptions)

    def addresses(self) -> dict[int, str]:
        """Each node's address on its current or last stream (a copy; none: unknown)."""
        return dict(self._addresses)

    def subscribe(self, node_id: int, peer: str = "") -> Subscription:
        """Open ``node_id``'s stream from ``peer`` (gRPC's name of the address, "":
        unknown); a newer stream replaces an older one."""
        # The state first: if the disk refuses, no half-open subscription stays behind.
        now = self.clock()
        # Instructions sent on a stream that broke unnoticed may not have arrived: send again.
        self.state.requeue_delivered(node_id)
        pending = self.state.pending_messages(node_id)
        self.state.set_node_status(node_id, "online", now)
        old = self._subscriptions.get(node_id)
        if old is not None:
            old.close("replaced by a newer subscription of the same node")
        subscription = Subscription(node_id)
        self._subscriptions[node_id] = subscription
        self._last_seen[node_id] = now
        if peer:
            self._addresses[node_id] = peer
        for message in pending:
            subscription.queue.put_nowait(message)
        self.telemetry.nodes_connected(len(self._subscriptions))
        logger.info("node %d connected", node_id)
        return subscription

    def unsubscribe(self, subscription: Subscription, reason: str) -> None:
        """The stream ended: the node is offline at once and its open instructions fail."""
        if self._subscriptions.get(subscription.node_id) is not subscription:
            return
        del self._subscriptions[subscription.node_id]
        self._last_seen.pop(subscription.node_id, None)
        self.telemetry.nodes_connected(len(self._subscriptions))
        if self.closing:
            return  # a restart must not fail instructions that nodes can still answer
        node_id = subscription.node_id
        node = self.state.get_node(node_id)
        if node is not None and node.status == "online":
            self.state.set_node_status(node_id, "offline", self.clock())
        reason = subscription.close_reason or reason
        logger.info("node %d disconnected: %s", node_id, reason)
        self.fail_open_messages(node_id, f"node {node_id} went offline ({reason})")

    def unregister(self, node_id: int) -> None:
        """A node left for good: it is never sampled again."""
        self.state.set_node_status(node_id, "left", self.clock())
        subscription = self._subscriptions.get(node_id)
        if subscription is not None:
            subscription.close("the node unregistered")
        self.fail_open_messages(node_id, f"node {node_id} unregistered")

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

    # instructions and replies
    def push_messages(self, messages: Sequence[Message], again: Sequence[Message] = ()) -> None:
        """Store instructions and hand each to its node's open stream, or fail it at once.

        ``again``: instructions stored by an earlier push that may not have reached
        a stream (that push failed part-way); one already sent or answered is
        skipped when its stream takes it, so none is delivered twice.
        """
        self.state.add_messages(messages)
        unconnected = []
        for message in [*messages, *again]:  # every stream first: failing the others writes
            subscription = self._subscriptions.get(message.node_id)
            if subscription is not None:
                subscription.queue.put_nowait(message)
            else:
                unconnected.append(message)
        for message in unconnected:
            self._fail(message, f"node {message.node_id} is not connected")

    def fail_open_messages(self, node_id: int, reason: str) -> None:
        for message in self.state.open_messages(node_id):
            self._fail(message, reason)

    def expire_messages(self, ttl: float) -> int:
        """Fail instructions left unanswered for longer than ``ttl`` seconds; how many."""
        expired = self.state.open_messages_created_before(self.clock() - ttl)
        for message in expired:
            self._fail(message, f"no answer within the task TTL of {ttl:g} s")
        return len(expired)

    def end_run(self, run_id: int, reason: str) -> None:
        """A finished run's unanswered instructions fail and leave the nodes' queues."""
        for message in self.state.open_messages_of_run(run_id):
            self._fail(message, reason)

    def _fail(self, instruction: Message, reason: str) -> None:
        self.add_reply(instruction.reply(error=reason))

    def add_reply(self, reply: Message) -> bool:
        """Store a reply and wake the ServerApps waiting for its run."""
        if not self.state.add_reply(reply):
            return False
        self.telemetry.task_answered(reply.message_type, bool(reply.error))
        for queue in self._listeners.get(reply.run_id, ()):
            queue.put_nowait(reply)
        return True

    def listen(self, run_id: int) -> asyncio.Queue[Message | None]:
        """A queue of the run's replies as they arrive (``None`` tells the listener to stop)."""
        queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._listeners.setdefault(run_id, set()).add(queue)
        return queue

    def unlisten(self, run_id: int, queue: asyncio.Queue[Message | None]) -> None:
        listeners = self._listeners.get(run_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[run_id]
