"""The Driver API: what ServerApps call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc

from pollen.errors import RecordError
from pollen.proto import common_pb2 as pb
from pollen.proto import driver_pb2 as dpb
from pollen.proto import driver_pb2_grpc
from pollen.records.messages import Message
from pollen.records.run_reports import RoundReport
from pollen.superlink.blob_gc import BlobCollector
from pollen.superlink.blob_transfer import receive_upload, send_download
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.dispatch import Dispatcher
from pollen.superlink.peers import peer_address
from pollen.superlink.request_verification import current_session
from pollen.superlink.run_access import RunAccess
from pollen.superlink.run_reports import RunLogFeed, report_problem, round_line, round_seconds
from pollen.superlink.stream_limits import DEFAULT_TRANSFERS_PER_OPERATOR, BlobStreams, Party
from pollen.transport.chunk_codec import Chunk
from pollen.transport.convert import map_from_proto, message_from_proto, message_to_proto
from pollen.transport.run_report_protos import (
    details_to_proto,
    line_to_proto,
    node_to_proto,
    summary_to_proto,
)

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class DriverService(driver_pb2_grpc.DriverServicer):
    def __init__(
        self,
        dispatcher: Dispatcher,
        blobs: BlobStore,
        collector: BlobCollector,
        transfers: BlobStreams | None = None,
        access: RunAccess | None = None,
        on_round_reported: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        """``on_round_reported``: called with a round's duration when a ServerApp reports
        it (the SuperLink's metrics count rounds there)."""
        self._transfers = transfers or BlobStreams(
            DEFAULT_TRANSFERS_PER_OPERATOR, "--max-transfers-per-operator"
        )
        self._dispatcher = dispatcher
        self._state = dispatcher.state
        self._blobs = blobs
        self._collector = collector
        self._streams: dict[str, set[asyncio.Queue[Message | None]]] = {}
        self._access = access or RunAccess(self._state)
        self._run_logs = RunLogFeed()
        self._on_round_reported = on_round_reported

    def _run_changed(self, run_id: int) -> None:
        """Wake the followers of the run's log and the dashboard's live pages."""
        self._run_logs.notify(run_id)
        self._dispatcher.telemetry.run_changed(run_id)

    def revoke(self, fingerprint: str) -> None:
        """An operator key was revoked: its open reply streams and blob transfers end now."""
        for queue in self._streams.pop(fingerprint, set()):
            queue.put_nowait(None)
        self._run_logs.revoke(fingerprint)
        self._transfers.cut(
            fingerprint, grpc.StatusCode.UNAUTHENTICATED, "the operator key was revoked"
        )

    @staticmethod
    def _party() -> tuple[Party | None, object | None]:
        """An operator key holds the stream; without operator keys nobody is counted (the
        Driver API then listens on loopback only)."""
        session = current_session.get()
        if session is None:
            return None, None
        return Party(session.fingerprint, f"operator key {session.fingerprint}"), session

    async def _running_run(self, run_id: int, context: Context) -> None:
        await self._access.check_run(run_id, context)
        run = self._state.get_run(run_id)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run {run_id} does not exist")
        if run.status != "running":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"run {run_id} is {run.status}"
            )

    async def CreateRun(
        self, request: dpb.CreateRunRequest, context: Context
    ) -> dpb.CreateRunReply:
        try:
            run_config = map_from_proto(request.run_config)
        except RecordError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        run_id = self._state.create_run(
            request.app, run_config, self._dispatcher.clock(), RunAccess.caller()
        )
        self._run_changed(run_id)
        logger.info("run %d created (%s)", run_id, request.app or "unnamed app")
        return dpb.CreateRunReply(run_id=run_id, superlink_id=self._state.superlink_id())

    async def PruneRuns(
        self, request: dpb.PruneRunsRequest, context: Context
    ) -> dpb.PruneRunsReply:
        now = self._dispatcher.clock()
        before = now - max(request.older_than_seconds, 0.0)
        owner = self._access.owner_filter()  # an operator prunes its own runs only
        if request.abandoned:
            for run_id in self._state.idle_running_runs(before, owner):
                self._dispatcher.end_run(run_id, f"run {run_id} abandoned")
                self._state.abandon_run(run_id, "abandoned: no task or result for too long")
                self._run_changed(run_id)
        run_ids = self._state.prune_runs(before, owner)
        deleted = self._collector.sweep(grace=0.0) if run_ids else 0
        logger.info("pruned runs %s (%d blobs deleted)", run_ids, deleted)
        return dpb.PruneRunsReply(run_ids=run_ids, blobs_deleted=deleted)

    async def ResumeRun(
        self, request: dpb.ResumeRunRequest, context: Context
    ) -> dpb.ResumeRunReply:
        run_id, digest = request.run_id, request.checkpoint_digest
        await self._access.check_run(run_id, context)
        if digest:
            await self._access.check_blob(digest, context)
        run = self._state.get_run(run_id)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run {run_id} does not exist")
        if run.status == "finished":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"run {run_id} already finished"
            )
        own_id = self._state.superlink_id()
        if request.superlink_id and request.superlink_id != own_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the checkpoint is of run {run_id} of another SuperLink database "
                f"({request.superlink_id}; this one is {own_id}): the run ids restarted, "
                "so this is another run",
            )
        if digest and not (self._state.has_blob(digest) and self._blobs.exists(digest)):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the checkpoint's model (blob {digest[:12]}) is no longer on this SuperLink "
                "(the run was pruned); start a new run",
            )
        # Checked before anything changes: a refused resume leaves the run as it was.
        if digest:
            self._state.hold_blobs(run_id, [digest])
        # what the previous ServerApp left in flight is nobody's any more
        self._dispatcher.end_run(run_id, "the ServerApp restarted")
        self._state.reopen_run(run_id, self._dispatcher.clock())
        self._run_changed(run_id)
        logger.info("run %d resumed", run_id)
        return dpb.ResumeRunReply(superlink_id=own_id)

    async def GetNodes(self, request: dpb.GetNodesRequest, context: Context) -> dpb.GetNodesReply:
        await self._running_run(request.run_id, context)
        return dpb.GetNodesReply(node_ids=self._dispatcher.online_nodes())

    async def _instruction(self, proto: pb.Message, run_id: int, context: Context) -> Message:
        """An instruction of run ``run_id``, its blobs uploaded and the caller's to name."""
        try:
            message = message_from_proto(proto)
        except RecordError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if message.reply_to or message.error:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"message {message.message_id[:12]!r} is a reply; push instructions only",
            )
        for ref in message.content.blobs():
            await self._access.check_blob(ref.digest, context)  # it would become this run's
            if not self._blobs.exists(ref.digest):
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"blob {ref.digest[:12]} was not uploaded; upload it first",
                )
        message.run_id = run_id
        return message

    async def PushMessages(
        self, request: dpb.PushMessagesRequest, context: Context
    ) -> dpb.PushMessagesReply:
        await self._running_run(request.run_id, context)
        messages: list[Message] = []
        again: list[Message] = []
        for proto in request.messages:
            message = await self._instruction(proto, request.run_id, context)
            stored = self._state.get_message(message.message_id) if message.message_id else None
            if stored is not None and stored.run_id == request.run_id:
                again.append(stored)  # pushed before a break: the retry must not duplicate it
                continue
            taken = any(m.message_id == message.message_id for m in messages)
            if not message.message_id or taken or stored is not None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"message id {message.message_id!r} is empty or taken",
                )
            messages.append(message)
        held = {ref.digest for m in messages for ref in m.content.blobs()}
        self._state.hold_blobs(request.run_id, held)
        self._dispatcher.telemetry.blobs_of_run(request.run_id, held)  # downloads count for it
        self._dispatcher.push_messages(messages, again)
        return dpb.PushMessagesReply(message_ids=[m.message_id for m in request.messages])

    async def StreamReplies(
        self, request: dpb.StreamRepliesRequest, context: Context
    ) -> AsyncIterator[pb.Message]:
        await self._access.check_run(request.run_id, context)
        if self._state.get_run(request.run_id) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id} does not exist")
        wanted = set(request.message_ids)
        queue = self._dispatcher.listen(request.run_id)
        session = current_session.get()
        if session is not None:
            self._streams.setdefault(session.fingerprint, set()).add(queue)
        try:
            stored = [r for r in self._state.get_replies(wanted) if r.run_id == request.run_id]
            wanted.difference_update(r.reply_to for r in stored)
            for message_id in wanted:  # an instruction the run does not have: no reply ever
                instruction = self._state.get_message(message_id)
                if instruction is None or instruction.run_id != request.run_id:
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"message {message_id[:12]!r} is not an instruction of run "
                        f"{request.run_id}",
                    )
            for reply in stored:
                yield message_to_proto(reply)
            while wanted:
                arrived = await queue.get()
                if arrived is None:
                    await context.abort(
                        grpc.StatusCode.UNAUTHENTICATED, "the operator key was revoked"
                    )
                if arrived.reply_to in wanted:
                    wanted.discard(arrived.reply_to)
                    yield message_to_proto(arrived)
        finally:
            self._dispatcher.unlisten(request.run_id, queue)
            if session is not None:
                self._streams.get(session.fingerprint, set()).discard(queue)

    async def FinishRun(
        self, request: dpb.FinishRunRequest, context: Context
    ) -> dpb.FinishRunReply:
        await self._running_run(request.run_id, context)
        status = request.status if request.status in ("finished", "failed") else "finished"
        # Marked finished last: if the disk refuses a step, the retry finds the run
        # still running and does it all again (each step can be repeated).
        self._dispatcher.end_run(request.run_id, f"run {request.run_id} ended")
        keep = list(request.keep_digests) if status == "failed" else []
        self._collector.release(request.run_id, keep=keep)  # a failed run stays resumable
        self._state.finish_run(request.run_id, status, request.message, self._dispatcher.clock())
        self._run_changed(request.run_id)
        logger.info("run %d %s %s", request.run_id, status, request.message)
        return dpb.FinishRunReply()

    async def ReleaseBlobs(
        self, request: dpb.ReleaseBlobsRequest, context: Context
    ) -> dpb.ReleaseBlobsReply:
        await self._access.check_run(request.run_id, context)
        if self._state.get_run(request.run_id) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id} does not exist")
        deleted = self._collector.release(request.run_id, list(request.digests))
        return dpb.ReleaseBlobsReply(deleted=deleted)

    async def ReportRound(
        self, request: dpb.ReportRoundRequest, context: Context
    ) -> dpb.ReportRoundReply:
        await self._running_run(request.run_id, context)
        problem = report_problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self._state.set_run_plan(request.run_id, request.num_rounds, request.output_dir)
        if request.round:
            report = RoundReport(request.round, request.record_json, self._dispatcher.clock())
            self._state.report_round(request.run_id, report, round_line(request))
            self._on_round_reported(round_seconds(request.record_json))
        self._run_changed(request.run_id)
        return dpb.ReportRoundReply()

    async def ListRuns(self, request: dpb.ListRunsRequest, context: Context) -> dpb.ListRunsReply:
        runs = self._state.list_runs(self._access.owner_filter())
        return dpb.ListRunsReply(runs=[summary_to_proto(r) for r in runs])

    async def GetRunDetails(
        self, request: dpb.GetRunDetailsRequest, context: Context
    ) -> dpb.RunDetails:
        await self._access.check_visible(request.run_id, context)
        details = self._state.run_details(request.run_id)
        if details is None:  # pruned meanwhile
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id}: no such run")
        return details_to_proto(details)

    async def StreamRunLog(
        self, request: dpb.StreamRunLogRequest, context: Context
    ) -> AsyncIterator[dpb.RunLogLine]:
        run_id = request.run_id
        await self._access.check_visible(run_id, context)
        caller = RunAccess.caller()
        wake = self._run_logs.listen(run_id, caller)
        try:
            last = 0
            while True:
                run = self._state.get_run(run_id)  # before the lines: a last line is not lost
                for line in self._state.run_log(run_id, last):
                    last = line.line_id
                    yield line_to_proto(line)
                if not request.follow or run is None or run.status != "running":
                    return
                if not await _woken(wake):
                    await context.abort(
                        grpc.StatusCode.UNAUTHENTICATED, "the operator key was revoked"
                    )
        finally:
            self._run_logs.unlisten(run_id, caller, wake)

    async def ListNodes(
        self, request: dpb.ListNodesRequest, context: Context
    ) -> dpb.ListNodesReply:
        """Every node of the federation, for any operator key: nodes are not a run's."""
        online = set(self._dispatcher.online_nodes())
        addresses = self._dispatcher.addresses()
        now = self._dispatcher.clock()
        nodes = []
        for node in self._state.node_summaries():
            node = replace(node, address=peer_address(addresses.get(node.node_id, "")))
            if node.node_id in online:  # connected now, its stream kept alive by heartbeats
                node = replace(node, status="online", last_seen=now)
            elif node.status == "online":  # the state's word, from before a restart
                node = replace(node, status="offline")
            nodes.append(node_to_proto(node))
        return dpb.ListNodesReply(nodes=nodes)

    async def UploadBlob(
        self, request_iterator: AsyncIterable[Chunk], context: Context
    ) -> pb.BlobRef:
        party, session = self._party()
        async with self._transfers.open("upload", context, party, session) as transfer:
            return await receive_upload(
                self._owned_upload(request_iterator, context),
                self._blobs,
                self._state,
                self._dispatcher.clock,
                context,
                transfer,
            )

    async def DownloadBlob(
        self, request: pb.DownloadBlobRequest, context: Context
    ) -> AsyncIterator[bytes]:
        await self._access.check_blob(request.digest, context)
        party, session = self._party()
        async with self._transfers.open("download", context, party, session) as transfer:
            async for chunk in send_download(request, self._blobs, context, transfer):
                yield chunk

    async def _owned_upload(
        self, chunks: AsyncIterable[Chunk], context: Context
    ) -> AsyncIterator[Chunk]:
        """An upload for a run (which then holds the blob) only for a run of the caller."""
        first = True
        async for chunk in chunks:
            if first and chunk.run_id:
                await self._access.check_run(chunk.run_id, context)
            first = False
            yield chunk


async def _woken(wake: asyncio.Queue[bool]) -> bool:
    """Wait up to a second for the run's log to grow; False: the caller's key was revoked."""
    try:
        async with asyncio.timeout(1.0):
            return await wake.get()
    except TimeoutError:
        return True
