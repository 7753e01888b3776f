"""The rows of ``pollen runs`` and ``pollen nodes`` to and from protobuf: the SuperLink
sends them, `DriverClient` reads them."""

from __future__ import annotations

from pollen.proto import driver_pb2 as dpb
from pollen.records.run_reports import (
    NodeSummary,
    RoundReport,
    RunDetails,
    RunLogLine,
    RunSummary,
)
from pollen.transport.convert import fill_map, map_from_proto


def summary_to_proto(run: RunSummary) -> dpb.RunSummary:
    return dpb.RunSummary(
        run_id=run.run_id,
        app=run.app,
        status=run.status,
        owner=run.owner,
        created_at=run.created_at,
        finished_at=run.finished_at or 0.0,
        rounds_done=run.rounds_done,
        num_rounds=run.num_rounds,
        message=run.message,
    )


def details_to_proto(details: RunDetails) -> dpb.RunDetails:
    reply = dpb.RunDetails(
        summary=summary_to_proto(details.summary),
        output_dir=details.output_dir,
        rounds=[
            dpb.RoundReport(round=r.round, record_json=r.record, reported_at=r.reported_at)
            for r in details.rounds
        ],
    )
    fill_map(reply.run_config, details.run_config)
    return reply


def line_to_proto(line: RunLogLine) -> dpb.RunLogLine:
    return dpb.RunLogLine(at=line.at, text=line.text)


def node_to_proto(node: NodeSummary) -> dpb.NodeSummary:
    return dpb.NodeSummary(
        node_id=node.node_id,
        fingerprint=node.fingerprint,
        status=node.status,
        last_seen=node.last_seen,
        tasks_done=node.tasks_done,
        tasks_failed=node.tasks_failed,
        address=node.address,
    )


def summary_from_proto(proto: dpb.RunSummary) -> RunSummary:
    return RunSummary(
        run_id=proto.run_id,
        app=proto.app,
        status=proto.status,
        owner=proto.owner,
        created_at=proto.created_at,
        finished_at=proto.finished_at or None,
        rounds_done=proto.rounds_done,
        num_rounds=proto.num_rounds,
        message=proto.message,
    )


def details_from_proto(proto: dpb.RunDetails) -> RunDetails:
    return RunDetails(
        summary=summary_from_proto(proto.summary),
        run_config=map_from_proto(proto.run_config),
        output_dir=proto.output_dir,
        rounds=[RoundReport(r.round, r.record_json, r.reported_at) for r in proto.rounds],
    )


def line_from_proto(proto: dpb.RunLogLine) -> RunLogLine:
    return RunLogLine(0, proto.at, proto.text)


def node_from_proto(proto: dpb.NodeSummary) -> NodeSummary:
    return NodeSummary(
        node_id=proto.node_id,
        fingerprint=proto.fingerprint,
        status=proto.status,
        last_seen=proto.last_seen,
        tasks_done=proto.tasks_done,
        tasks_failed=proto.tasks_failed,
        address=proto.address,
    )
