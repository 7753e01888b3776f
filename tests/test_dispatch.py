"""Delivery of instructions and node liveness in the dispatcher, with an injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pollen.errors import StorageFull
from pollen.records.messages import EVALUATE, TRAIN, Message
from pollen.superlink.dispatch import Dispatcher
from pollen.superlink.sqlite_state import SqliteState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path) -> tuple[Dispatcher, FakeClock, int]:
    clock = FakeClock()
    state = SqliteState(tmp_path / "s.db")
    state.add_node(7, clock())
    run_id = state.create_run("app", {}, clock())
    return Dispatcher(state, clock), clock, run_id


def drain(queue: asyncio.Queue[Message | None]) -> list[Message | None]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_instructions_pushed_before_subscribing_are_delivered_once(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    dispatcher.state.add_messages([Message(run_id, 7, TRAIN)])  # stored while the node was away
    subscription = dispatcher.subscribe(7)
    dispatcher.push_messages([Message(run_id, 7, EVALUATE)])
    delivered = drain(subscription.queue)
    assert [m.message_type for m in delivered if m] == [TRAIN, EVALUATE]


def test_instruction_for_a_node_that_is_not_connected_fails_at_once(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    instruction = Message(run_id, 7, TRAIN)
    dispatcher.push_messages([instruction])
    [reply] = dispatcher.state.get_replies([instruction.message_id])
    assert "is not connected" in reply.error


def test_stream_closing_fails_open_instructions_and_wakes_the_listener(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    listener = dispatcher.listen(run_id)
    subscription = dispatcher.subscribe(7)
    instruction = Message(run_id, 7, TRAIN)
    dispatcher.push_messages([instruction])
    dispatcher.unsubscribe(subscription, "its instruction stream closed")
    reply = listener.get_nowait()
    assert reply is not None
    assert reply.reply_to == instruction.message_id
    assert "went offline (its instruction stream closed)" in reply.error
    assert dispatcher.online_nodes() == []


def test_silent_node_is_closed_after_three_heartbeat_intervals(tmp_path: Path) -> None:
    dispatcher, clock, _ = make(tmp_path)
    subscription = dispatcher.subscribe(7)
    clock.now += 10
    dispatcher.heartbeat(7)
    clock.now += 14
    assert dispatcher.close_stale(15) == []
    clock.now += 2
    assert dispatcher.close_stale(15) == [7]
    assert drain(subscription.queue) == [None]
    assert "no heartbeat" in subscription.close_reason


def test_newer_subscription_replaces_the_older(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    old = dispatcher.subscribe(7)
    new = dispatcher.subscribe(7)
    assert drain(old.queue) == [None]
    dispatcher.unsubscribe(old, "closed")  # the old stream ending must not take the node offline
    assert dispatcher.online_nodes() == [7]
    dispatcher.push_messages([Message(run_id, 7, TRAIN)])
    assert len(drain(new.queue)) == 1


def test_shutdown_does_not_fail_instructions(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    subscription = dispatcher.subscribe(7)
    instruction = Message(run_id, 7, TRAIN)
    dispatcher.push_messages([instruction])
    dispatcher.close_all()
    dispatcher.unsubscribe(subscription, "closed")
    assert dispatcher.state.get_replies([instruction.message_id]) == []


def test_unregistered_node_is_left_and_its_instructions_fail(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    dispatcher.subscribe(7)
    instruction = Message(run_id, 7, TRAIN)
    dispatcher.push_messages([instruction])
    dispatcher.unregister(7)
    assert dispatcher.state.list_nodes("left") == [7]
    [reply] = dispatcher.state.get_replies([instruction.message_id])
    assert "unregistered" in reply.error


def test_an_instruction_unanswered_past_its_ttl_fails_as_expired(tmp_path: Path) -> None:
    dispatcher, clock, run_id = make(tmp_path)
    dispatcher.subscribe(7)
    instruction = Message(run_id, 7, TRAIN, created_at=clock())
    dispatcher.push_messages([instruction])
    clock.now += 100
    assert dispatcher.expire_messages(ttl=200) == 0
    clock.now += 101
    assert dispatcher.expire_messages(ttl=200) == 1
    [reply] = dispatcher.state.get_replies([instruction.message_id])
    assert "task TTL" in reply.error


def test_a_push_the_disk_cuts_short_reaches_connected_nodes_and_its_retry_finishes_it(
    tmp_path: Path,
) -> None:
    dispatcher, clock, run_id = make(tmp_path)
    dispatcher.state.add_node(8, clock())
    subscription = dispatcher.subscribe(8)
    offline, online = Message(run_id, 7, TRAIN), Message(run_id, 8, TRAIN)
    store_reply = dispatcher.state.add_reply

    def full_disk(reply: Message) -> bool:
        raise StorageFull("SuperLink storage full: test")

    dispatcher.state.add_reply = full_disk  # type: ignore[method-assign]
    with pytest.raises(StorageFull):  # failing the instruction of the offline node
        dispatcher.push_messages([offline, online])
    assert [m.message_id for m in drain(subscription.queue) if m] == [online.message_id]
    dispatcher.state.add_reply = store_reply  # type: ignore[method-assign]
    dispatcher.push_messages([], again=[offline, online])  # the ServerApp's retry
    [failed] = dispatcher.state.get_replies([offline.message_id])
    assert "node 7 is not connected" in failed.error


def test_a_replaced_stream_sends_nothing_more_and_the_instruction_goes_out_once(
    tmp_path: Path,
) -> None:
    dispatcher, _, run_id = make(tmp_path)
    old = dispatcher.subscribe(7)
    dispatcher.push_messages([Message(run_id, 7, TRAIN)])
    new = dispatcher.subscribe(7)
    assert drain(old.queue) == [None] and old.closed
    assert len([t for t in drain(new.queue) if t is not None]) == 1


def test_an_instruction_delivered_on_a_stream_that_broke_unnoticed_is_sent_again(
    tmp_path: Path,
) -> None:
    dispatcher, _, run_id = make(tmp_path)
    first = dispatcher.subscribe(7)
    instruction = Message(run_id, 7, TRAIN)
    dispatcher.push_messages([instruction])
    assert dispatcher.state.mark_delivered(instruction.message_id)
    drain(first.queue)
    again = dispatcher.subscribe(7)  # the node reconnected before the old stream was noticed
    assert [m.message_id for m in drain(again.queue) if m is not None] == [instruction.message_id]


def test_finishing_a_run_fails_its_open_instructions_and_nodes_no_longer_get_them(
    tmp_path: Path,
) -> None:
    dispatcher, _, run_id = make(tmp_path)
    instruction = Message(run_id, 7, TRAIN)
    dispatcher.state.add_messages([instruction])
    dispatcher.state.finish_run(run_id, "failed", "", 0.0)
    dispatcher.end_run(run_id, "run ended")
    assert dispatcher.state.get_replies([instruction.message_id])[0].error == "run ended"
    assert drain(dispatcher.subscribe(7).queue) == []
