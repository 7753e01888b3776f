"""Task delivery and node liveness in the SuperLink's dispatcher, with an injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pollen.errors import StorageFull
from pollen.records.messages import Result, Task
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


def drain(queue: asyncio.Queue[Task | None]) -> list[Task | None]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_tasks_pushed_before_subscribing_are_delivered_once(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    dispatcher.state.add_tasks([Task(run_id, 7, "fit")])  # stored while the node was away
    subscription = dispatcher.subscribe(7)
    dispatcher.push_tasks([Task(run_id, 7, "evaluate")])
    delivered = drain(subscription.queue)
    assert [t.kind for t in delivered if t] == ["fit", "evaluate"]


def test_task_for_a_node_that_is_not_connected_fails_at_once(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    task = Task(run_id, 7, "fit")
    dispatcher.push_tasks([task])
    [result] = dispatcher.state.get_results([task.task_id])
    assert "is not connected" in result.error


def test_stream_closing_fails_open_tasks_and_wakes_the_listener(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    listener = dispatcher.listen(run_id)
    subscription = dispatcher.subscribe(7)
    task = Task(run_id, 7, "fit")
    dispatcher.push_tasks([task])
    dispatcher.unsubscribe(subscription, "its task stream closed")
    result = listener.get_nowait()
    assert result.task_id == task.task_id
    assert "went offline (its task stream closed)" in result.error
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
    dispatcher.push_tasks([Task(run_id, 7, "fit")])
    assert len(drain(new.queue)) == 1


def test_shutdown_does_not_fail_tasks(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    subscription = dispatcher.subscribe(7)
    task = Task(run_id, 7, "fit")
    dispatcher.push_tasks([task])
    dispatcher.close_all()
    dispatcher.unsubscribe(subscription, "closed")
    assert dispatcher.state.get_results([task.task_id]) == []


def test_unregistered_node_is_left_and_its_tasks_fail(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    dispatcher.subscribe(7)
    task = Task(run_id, 7, "fit")
    dispatcher.push_tasks([task])
    dispatcher.unregister(7)
    assert dispatcher.state.list_nodes("left") == [7]
    [result] = dispatcher.state.get_results([task.task_id])
    assert "unregistered" in result.error


def test_a_task_unanswered_past_its_ttl_fails_as_expired(tmp_path: Path) -> None:
    dispatcher, clock, run_id = make(tmp_path)
    dispatcher.subscribe(7)
    task = Task(run_id, 7, "fit", created_at=clock())
    dispatcher.push_tasks([task])
    clock.now += 100
    assert dispatcher.expire_tasks(ttl=200) == 0
    clock.now += 101
    assert dispatcher.expire_tasks(ttl=200) == 1
    [result] = dispatcher.state.get_results([task.task_id])
    assert "task TTL" in result.error


def test_a_push_the_disk_cuts_short_reaches_connected_nodes_and_its_retry_finishes_it(
    tmp_path: Path,
) -> None:
    dispatcher, clock, run_id = make(tmp_path)
    dispatcher.state.add_node(8, clock())
    subscription = dispatcher.subscribe(8)
    offline, online = Task(run_id, 7, "fit"), Task(run_id, 8, "fit")
    store_result = dispatcher.state.add_result

    def full_disk(result: Result) -> bool:
        raise StorageFull("SuperLink storage full: test")

    dispatcher.state.add_result = full_disk  # type: ignore[method-assign]
    with pytest.raises(StorageFull):  # failing the task of the offline node
        dispatcher.push_tasks([offline, online])
    assert [t.task_id for t in drain(subscription.queue) if t] == [online.task_id]
    dispatcher.state.add_result = store_result  # type: ignore[method-assign]
    dispatcher.push_tasks([], again=[offline, online])  # the ServerApp's retry
    [failed] = dispatcher.state.get_results([offline.task_id])
    assert "node 7 is not connected" in failed.error


def test_a_replaced_stream_sends_nothing_more_and_the_task_goes_out_once(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    old = dispatcher.subscribe(7)
    dispatcher.push_tasks([Task(run_id, 7, "fit")])
    new = dispatcher.subscribe(7)
    assert drain(old.queue) == [None] and old.closed
    assert len([t for t in drain(new.queue) if t is not None]) == 1


def test_a_task_delivered_on_a_stream_that_broke_unnoticed_is_sent_again(tmp_path: Path) -> None:
    dispatcher, _, run_id = make(tmp_path)
    first = dispatcher.subscribe(7)
    task = Task(run_id, 7, "fit")
    dispatcher.push_tasks([task])
    assert dispatcher.state.mark_delivered(task.task_id)
    drain(first.queue)
    again = dispatcher.subscribe(7)  # the node reconnected before the old stream was noticed
    assert [t.task_id for t in drain(again.queue) if t is not None] == [task.task_id]


def test_finishing_a_run_fails_its_open_tasks_and_nodes_no_longer_get_them(
    tmp_path: Path,
) -> None:
    dispatcher, _, run_id = make(tmp_path)
    task = Task(run_id, 7, "fit")
    dispatcher.state.add_tasks([task])
    dispatcher.state.finish_run(run_id, "failed", "", 0.0)
    dispatcher.end_run(run_id, "run ended")
    assert dispatcher.state.get_results([task.task_id])[0].error == "run ended"
    assert drain(dispatcher.subscribe(7).queue) == []
