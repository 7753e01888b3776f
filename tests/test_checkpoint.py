"""metrics.json as the checkpoint writes it after every round."""

from __future__ import annotations

import json
from pathlib import Path

from pollen.records.messages import BlobRef
from pollen.server.checkpoint import read_checkpoints, write_checkpoint, write_finished
from pollen.server.history import History, NodeFit, RoundRecord

MODEL = BlobRef("ab" * 32, 10)


def _round(number: int) -> RoundRecord:
    nodes = [NodeFit(node, 5, {"loss": 0.5, "tag": b"\x01"}) for node in (1, 2)]
    return RoundRecord(number, seconds=0.01 * number, fit_results=2, fit_nodes=nodes)


def _document(directory: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((directory / "metrics.json").read_text())
    return loaded


def test_each_checkpoint_holds_every_round_so_far_as_history_to_json_writes_it(
    tmp_path: Path,
) -> None:
    history = History(7, superlink_id="s", run_config={"lr": 0.1})
    for number in (1, 2, 3):
        history.rounds.append(_round(number))
        write_checkpoint(tmp_path, number, MODEL, history)
        expected = {**history.to_json(), "completed_rounds": number, "finished": False}
        expected["checkpoint"] = {"digest": MODEL.digest, "size": MODEL.size}
        assert _document(tmp_path) == expected
    history.finished_at = "2026-01-01T00:00:00.000+00:00"
    write_finished(tmp_path, history, "final_model.npz")
    document = _document(tmp_path)
    assert document["finished"] is True and document["finished_at"] == history.finished_at
    assert document["rounds"] == history.to_json()["rounds"]


def test_runs_written_in_turn_and_a_resumed_history_keep_their_own_rounds(tmp_path: Path) -> None:
    first, second = History(1), History(2)
    for number in (1, 2):
        first.rounds.append(_round(number))
        write_checkpoint(tmp_path / "a", number, MODEL, first)
        second.rounds.append(_round(10 + number))
        write_checkpoint(tmp_path / "b", number, MODEL, second)
    assert [r["round"] for r in _document(tmp_path / "a")["rounds"]] == [1, 2]  # type: ignore[index]
    assert [r["round"] for r in _document(tmp_path / "b")["rounds"]] == [11, 12]  # type: ignore[index]

    [resumed] = read_checkpoints([tmp_path / "a"], 1)
    resumed.history.rounds.append(_round(3))
    write_checkpoint(tmp_path / "a", 3, MODEL, resumed.history)
    assert _document(tmp_path / "a")["rounds"] == resumed.history.to_json()["rounds"]
    assert len(resumed.history.rounds) == 3


def test_a_metrics_json_from_before_node_fit_times_loads_with_zero_seconds(
    tmp_path: Path,
) -> None:
    history = History(7)
    history.rounds.append(_round(1))
    history.rounds[0].fit_nodes[0].seconds = 0.25
    write_checkpoint(tmp_path, 1, MODEL, history)
    document = _document(tmp_path)
    nodes = document["rounds"][0]["fit_nodes"]  # type: ignore[index]
    assert [node["seconds"] for node in nodes] == [0.25, 0.0]
    for node in nodes:
        del node["seconds"]  # as a run of an earlier Pollen wrote it
    (tmp_path / "metrics.json").write_text(json.dumps(document))

    [older] = read_checkpoints([tmp_path], 7)
    assert [(n.node_id, n.seconds) for n in older.history.rounds[0].fit_nodes] == [
        (1, 0.0),
        (2, 0.0),
    ]
