"""The ServerApp's side of the Driver API: the `Grid` of a deployment, over gRPC."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence

import grpc
from google.protobuf.message import Message as ProtoMessage

from pollen.errors import ConnectionFailed, PollenError
from pollen.proto import common_pb2 as pb
from pollen.proto import driver_pb2 as dpb
from pollen.proto.driver_pb2_grpc import DriverStub
from pollen.records.arrays import ArrayBytes, buffer_in_use, decode_arrays
from pollen.records.messages import BlobRef, Message
from pollen.records.run_reports import (
    MAX_RECORD_BYTES,
    NodeSummary,
    RunDetails,
    RunLogLine,
    RunSummary,
)
from pollen.records.typing import NDArrays, UserConfig
from pollen.server.grid import Grid, RunReport
from pollen.server.history import History
from pollen.server.reconnect import Reconnector, reach_driver
from pollen.server.round_report_fit import fitted
from pollen.transport.addresses import Address
from pollen.transport.blob_stream import (
    download_blob,
    download_call,
    iter_chunks,
    stored_ref,
    upload_call,
)
from pollen.transport.channels import open_channel
from pollen.transport.chunk_codec import Chunk
from pollen.transport.connection_faults import Endpoint
from pollen.transport.convert import fill_map, message_from_proto, message_to_proto
from pollen.transport.request_signing import ClientIdentity, Metadata, RequestAuth
from pollen.transport.retry_policy import classify, refusal
from pollen.transport.run_report_protos import (
    details_from_proto,
    line_from_proto,
    node_from_proto,
    summary_from_proto,
)
from pollen.transport.transfer_progress import LOGGED_TRANSFERS, Tracked, TransferProgress

_DRIVER = "/pollen.v1.Driver/"

logger = logging.getLogger(__name__)


class DriverClient(Grid):
    """The Driver API of a SuperLink over one channel: ``await DriverClient.connect(...)``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: Address,
        auth: RequestAuth | None = None,
        identity: ClientIdentity | None = None,
        reconnect_timeout: float = 30.0,
    ) -> None:
        self._channel = channel
        self._stub = DriverStub(channel)  # type: ignore[no-untyped-call]
        self._upload = upload_call(channel, _DRIVER + "UploadBlob")
        self._download = download_call(channel, _DRIVER + "DownloadBlob")
        self._auth = auth
        self._spare: bytearray | None = None  # the last download's buffer
        self._spare_digest = ""
        self._retry = Reconnector(channel, str(address), reconnect_timeout, identity, auth)
        self._report_failed = False  # warned once: the run goes on without reports
        self.address = address
        self.transfers: TransferProgress = LOGGED_TRANSFERS  # blobs over 50 MB report here

    def _signed(self, name: str, request: ProtoMessage) -> Metadata | None:
        return self._auth.request(_DRIVER + name, request) if self._auth else None

    @classmethod
    async def connect(
        cls,
        address: Address,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 30.0,
        identity: ClientIdentity | None = None,
    ) -> DriverClient:
        """Connect, waiting up to ``timeout`` seconds for the SuperLink to answer.

        With an ``identity`` (operator key), join the Driver API's session first.
        An answer that shows a misconfiguration (TLS, CA, port, key) is a
        `ConfigurationError` without waiting. Later calls ride out a SuperLink
        restart for up to ``timeout`` seconds.
        """
        auth = RequestAuth() if identity is not None else None
        channel = open_channel(address, credentials, fixed_window=True)  # beside the SuperLink
        endpoint = Endpoint(address, "Driver", credentials is not None, identity is not None)
        try:
            await asyncio.wait_for(reach_driver(channel, endpoint, identity, auth), timeout)
        except TimeoutError:
            await channel.close()
            raise ConnectionFailed(
                f"SuperLink Driver API at {address} did not answer within {timeout:g} s; "
                "start it with `pollen superlink` or check --superlink"
            ) from None
        except BaseException:
            await channel.close()
            raise
        return cls(channel, address, auth, identity, timeout)

    async def close(self) -> None:
        await self._channel.close()

    async def create_run(self, app: str, run_config: UserConfig) -> tuple[int, str]:
        """A new run: its id and the SuperLink's (run ids are unique only within it)."""
        request = dpb.CreateRunRequest(app=app)
        fill_map(request.run_config, run_config)
        reply = await self._retry.call(
            lambda: self._stub.CreateRun(request, metadata=self._signed("CreateRun", request))
        )
        return int(reply.run_id), str(reply.superlink_id)

    async def report_round(self, run_id: int, report: RunReport) -> None:
        """Send the SuperLink the round just completed (``pollen runs`` shows it); a
        failure is logged once and otherwise ignored: the run goes on."""
        record = report.record
        request = dpb.ReportRoundRequest(
            run_id=run_id,
            round=record.round if record is not None else 0,
            # the round as metrics.json holds it (one rule: History.to_json), trimmed of
            # per-node entries to what the SuperLink takes
            record_json=json.dumps(
                fitted(History(run_id, [record]).to_json()["rounds"][0], MAX_RECORD_BYTES)
            )
            if record is not None
            else "",
            num_rounds=report.num_rounds,
            output_dir=report.output_dir,
            summary=report.summary,
        )
        try:
            await self._retry.call(
                lambda: self._stub.ReportRound(
                    request, metadata=self._signed("ReportRound", request)
                )
            )
        except PollenError as exc:
            if not self._report_failed:
                self._report_failed = True
                logger.warning(
                    "the SuperLink did not take round %d's report (%s); the run goes on, "
                    "`pollen runs show %d` may miss its rounds",
                    request.round,
                    exc,
                    run_id,
                )

    async def list_runs(self) -> list[RunSummary]:
        """The runs this operator key may see (all of them for an administrator)."""
        request = dpb.ListRunsRequest()
        reply = await self._retry.call(
            lambda: self._stub.ListRuns(request, metadata=self._signed("ListRuns", request))
        )
        return [summary_from_proto(run) for run in reply.runs]

    async def run_details(self, run_id: int) -> RunDetails:
        """A run's config, reported rounds and output folder; `CallRefused` ("not_found")
        for a run this key may not see."""
        request = dpb.GetRunDetailsRequest(run_id=run_id)
        reply = await self._retry.call(
            lambda: self._stub.GetRunDetails(
                request, metadata=self._signed("GetRunDetails", request)
            )
        )
        return details_from_proto(reply)

    async def run_log(self, run_id: int, follow: bool = False) -> AsyncIterator[RunLogLine]:
        """The run's log as the SuperLink keeps it; with ``follow``, each new line as it is
        written, until the run ends. Not resumed after a break (lines would repeat)."""
        request = dpb.StreamRunLogRequest(run_id=run_id, follow=follow)
        call = self._stub.StreamRunLog(request, metadata=self._signed("StreamRunLog", request))
        try:
            async for line in call:
                yield line_from_proto(line)
        except grpc.aio.AioRpcError as exc:
            if classify(exc) not in ("away", "passing"):  # a refusal, revocation included
                raise refusal(str(self.address), exc) from exc
            raise ConnectionFailed(
                f"SuperLink Driver API at {self.address}: the log stream broke ({exc.details()})"
            ) from None
        finally:
            call.cancel()

    async def list_nodes(self) -> list[NodeSummary]:
        """Every node of the federation (any operator key may list them)."""
        request = dpb.ListNodesRequest()
        reply = await self._retry.call(
            lambda: self._stub.ListNodes(request, metadata=self._signed("ListNodes", request))
        )
        return [node_from_proto(node) for node in reply.nodes]

    async def prune_runs(
        self, older_than_seconds: float, abandoned: bool = False
    ) -> tuple[list[int], int]:
        """Delete runs that ended longer ago than this (with ``abandoned``, also running
        runs idle that long); (their ids, blobs deleted)."""
        request = dpb.PruneRunsRequest(older_than_seconds=older_than_seconds, abandoned=abandoned)
        reply = await self._retry.call(
            lambda: self._stub.PruneRuns(request, metadata=self._signed("PruneRuns", request))
        )
        return list(reply.run_ids), int(reply.blobs_deleted)

    async def resume_run(self, run_id: int, checkpoint: str = "", superlink_id: str = "") -> str:
        """Reopen ``run_id`` if the SuperLink still holds its ``checkpoint`` model (and is
        ``superlink_id``, when given); the SuperLink's id."""
        request = dpb.ResumeRunRequest(
            run_id=run_id, checkpoint_digest=checkpoint, superlink_id=superlink_id
        )
        reply = await self._retry.call(
            lambda: self._stub.ResumeRun(request, metadata=self._signed("ResumeRun", request))
        )
        return str(reply.superlink_id)

    async def get_nodes(self, run_id: int) -> list[int]:
        request = dpb.GetNodesRequest(run_id=run_id)
        reply = await self._retry.call(
            lambda: self._stub.GetNodes(request, metadata=self._signed("GetNodes", request))
        )
        return list(reply.node_ids)

    async def send(self, run_id: int, messages: Sequence[Message]) -> None:
        request = dpb.PushMessagesRequest(
            run_id=run_id, messages=[message_to_proto(m) for m in messages]
        )
        await self._retry.call(
            lambda: self._stub.PushMessages(request, metadata=self._signed("PushMessages", request))
        )

    async def replies(self, run_id: int, message_ids: Sequence[str]) -> AsyncIterator[Message]:
        """Replies to ``message_ids``, each as soon as the SuperLink has it."""
        remaining = set(message_ids)
        attempts = self._retry.attempts()
        while remaining:
            # after a break, ask again for what is still missing: stored replies come first
            request = dpb.StreamRepliesRequest(run_id=run_id, message_ids=sorted(remaining))
            call = self._stub.StreamReplies(
                request, metadata=self._signed("StreamReplies", request)
            )
            try:
                async for proto in call:
                    reply = message_from_proto(proto)
                    if reply.reply_to in remaining:
                        remaining.discard(reply.reply_to)
                        yield reply
                return
            except grpc.aio.AioRpcError as exc:
                await attempts.failed(exc)
            finally:
                call.cancel()

    async def finish_run(
        self, run_id: int, status: str, message: str = "", keep: Sequence[BlobRef] = ()
    ) -> None:
        """End the run; a failed one keeps the blobs in ``keep`` (its checkpoint's model)."""
        request = dpb.FinishRunRequest(
            run_id=run_id, status=status, message=message, keep_digests=[r.digest for r in keep]
        )
        await self._retry.call(
            lambda: self._stub.FinishRun(request, metadata=self._signed("FinishRun", request))
        )

    def release_memory(self) -> None:
        """Free the buffer that downloads reuse (before server-side evaluation, at the end)."""
        self._spare, self._spare_digest = None, ""

    async def release_blobs(self, run_id: int, refs: Sequence[BlobRef]) -> None:
        """Tell the SuperLink that this run no longer needs these blobs."""
        request = dpb.ReleaseBlobsRequest(run_id=run_id, digests=[r.digest for r in refs])
        await self._retry.call(
            lambda: self._stub.ReleaseBlobs(request, metadata=self._signed("ReleaseBlobs", request))
        )

    async def upload_arrays(self, arrays: NDArrays, run_id: int = 0) -> BlobRef:
        """Upload ``arrays`` as one blob (in chunks), held by ``run_id``.

        Each chunk is copied straight from the arrays into its message
        (`ArrayBytes`): no model-sized buffer is laid out first. The SuperLink
        hashes the blob on arrival and names it: no pass over the model here.
        """
        blob = ArrayBytes(arrays)
        sent = BlobRef("", len(blob))
        tracked = Tracked(self.transfers, "upload of the model", len(blob))
        try:
            reply = await self._retry.call(
                lambda: self._upload(
                    iter_chunks(blob, sent, run_id=run_id, tracked=tracked),
                    metadata=self._auth.stream(_DRIVER + "UploadBlob") if self._auth else None,
                )
            )
            tracked.advanced(len(blob))
        finally:
            tracked.ended()
        return stored_ref(reply, sent)

    async def download_arrays(self, ref: BlobRef) -> NDArrays:
        """Download and decode a blob.

        The download is written over the previous one's buffer when no array of
        that one is alive any more (a result folded into a running sum and let
        go): memory stays one model's worth however many results a round has.
        """

        def open_stream(offset: int) -> AsyncIterable[Chunk]:
            request = pb.DownloadBlobRequest(digest=ref.digest, offset=offset)
            call: AsyncIterable[Chunk] = self._download(
                request, metadata=self._signed("DownloadBlob", request)
            )
            return call

        spare = self._spare
        if spare is not None and buffer_in_use(spare):
            spare = None  # its arrays are still someone's: never write over them
        if spare is not None and self._spare_digest == ref.digest:
            return decode_arrays(spare)  # the same content as the last one
        self._spare_digest = ""  # the buffer is being overwritten
        buffer = await self._retry.call(
            lambda: download_blob(open_stream, ref, spare, progress=self.transfers)
        )
        self._spare, self._spare_digest = buffer, ref.digest
        return decode_arrays(buffer)
