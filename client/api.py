"""The client library: connect to a cluster, store files, run jobs.

    from uds import client
    c = client.connect()                       # UDS_CLUSTER, else the dev cluster
    fid = c.put("data.txt")                    # 32 hex characters
    job = c.submit_job("count.py", args=["--top", "10"], inputs={"data.txt": fid}, chunks=2)
    job.wait(timeout=120)
    print(job.result()[0].outputs)

Arguments are checked before anything is sent; every request to a master
carries a request id and is resent with the same id (and job id) when no
answer comes, which is safe because the masters apply it once.

The client finds the leader by itself (wire/leader_search.py): it asks the
masters of the cluster file in turn, follows an ERR_NOT_LEADER that names
the leader, takes a master silent for SILENCE_S for gone, and backs off with
jitter once none of them served (doc/client.md).
"""
from __future__ import annotations

import logging
import os
import pathlib
import tempfile
import time
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from uds import wire
from uds.errors import ClientError, InvalidJobError, NoClusterError, RemoteError, RequestTimeout
from uds.client.events import GAP, JOB_FINAL_KINDS, Event, EventsPage, read_page
from uds.client.events import follow as follow_events
from uds.client.attempts import Attempt, AttemptList
from uds.client.jobs import ChunkStatus, Job, JobSpec, JobStatus
from uds.client.leader import (  # noqa: F401 - the timings are the client's, named here too
    BACKOFF_CAP_S, BACKOFF_FIRST_S, REFUSAL_CHECK_S, RESEND_AFTER_S, SILENCE_S, LeaderLink,
)
from uds.client.node_history import NodeHistory, node_history
from uds.client.pins import pin_until_ms
from uds.client.workflow import check_workflow, split_refs
from uds.storage.client import StorageError
from uds.storage.directory import StorageDirectory
from uds.storage.replicas import ReplicatedStorage
from uds.wire import cluster as cluster_file
from uds.wire.ids import ID_BYTES, id_from_hex, new_id
from uds.wire.enums import NodeRole
from uds.wire.keys import open_role
from uds.wire.resources import ResourceLimits, ResourceSpecError
from uds.wire.schema import NAME_MAX_BYTES, U32_MAX
from uds.wire.transport import Transport

log = logging.getLogger(__name__)
DEFAULT_DEV_DIR = pathlib.Path.home() / ".uds" / "dev"
CLUSTER_ENV = "UDS_CLUSTER"
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_CHUNK_TIMEOUT_S = 3600.0
# The masters' view of the storage nodes is asked with this timeout: a
# cluster whose masters are away still stores and reads through the seed.
MEMBERSHIP_TIMEOUT_S = 1.0


def find_cluster_file(cluster: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The argument, else $UDS_CLUSTER, else the running dev cluster's file."""
    if cluster is not None:
        path = pathlib.Path(cluster)
        if path.is_dir():
            path = path / "cluster.toml"
    elif os.environ.get(CLUSTER_ENV):
        path = pathlib.Path(os.environ[CLUSTER_ENV])
    else:
        path = DEFAULT_DEV_DIR / "cluster.toml"
        if not path.exists():
            raise NoClusterError(f"no cluster: pass connect(path), set {CLUSTER_ENV}, "
                                 f"or start one with `uds dev`")
    if not path.exists():
        raise NoClusterError(f"no cluster file at {path}")
    return path


def connect(cluster: str | os.PathLike[str] | None = None,
            timeout: float = DEFAULT_REQUEST_TIMEOUT_S) -> "Connection":
    return Connection(find_cluster_file(cluster), timeout=timeout)


def _check_input_name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise InvalidJobError(f"{where}: input name must be a string, got {type(name).__name__}")
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidJobError(f"{where}: input name {name!r} must be a plain file name "
                              f"(no '/', NUL, '.' or '..')")
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        raise InvalidJobError(f"{where}: input name {name[:40]!r}... is longer than {NAME_MAX_BYTES} bytes")
    return name


def _looks_like_id(value: str) -> bool:
    return len(value) == 2 * ID_BYTES and all(c in "0123456789abcdef" for c in value.lower())


class Connection:
    """One client's link to a cluster: its masters and its storage."""

    def __init__(self, cluster_path: pathlib.Path, timeout: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        try:
            self.cluster = cluster_file.load(cluster_path)
            keys = open_role(self.cluster.keys, NodeRole.CLIENT)
        except Exception as fault:
            raise NoClusterError(f"cannot use cluster file {cluster_path}: {fault}") from None
        self.timeout = timeout
        self.node_id = new_id()
        self._transport = Transport(keys)
        self._leader = LeaderLink(self._transport, self.node_id,
                                  [master.address for master in self.cluster.masters])
        self._storage: ReplicatedStorage | None = None

    # -- files ---------------------------------------------------------------

    @property
    def storage(self) -> ReplicatedStorage:
        """The storage nodes, as one: puts to R of them, reads that fail over
        (storage/replicas.py). Its membership is the masters' view, asked at
        most every few seconds, else the cluster file's [[storage]] entries."""
        if self._storage is None:
            directory = StorageDirectory([entry.address for entry in self.cluster.storage],
                                         ask_nodes=self._storage_records)
            self._storage = ReplicatedStorage(self._transport, self.node_id, directory,
                                              cluster_file.storage_policy(self.cluster).replicas,
                                              timeout_s=self.timeout)
        return self._storage

    def _storage_records(self) -> list[dict]:
        reply = self._leader.ask(lambda rid: wire.NodesQuery.make(self.node_id, request_id=rid),
                                 wire.NodesReply, min(self.timeout, MEMBERSHIP_TIMEOUT_S))
        return reply.nodes

    def put(self, source: str | os.PathLike[str] | bytes,
            progress: Callable[[int, int], None] | None = None, pin: str | None = None) -> str:
        """Store a file (a path, or bytes) on R storage nodes; its id as 32
        hex characters. With `pin` ("30s", "10m", "2h", "1d"), the masters
        keep it from collection that long even if no job refers to it."""
        until_ms = None if pin is None else pin_until_ms(pin, time.time())   # a bad pin: before storing
        file_id = self._put(source, progress)[0]
        if until_ms is not None:
            self.pin([file_id], until_ms)
        return file_id.hex()

    def pin(self, file_ids: Sequence[bytes], until_ms: int) -> int:
        """Ask the masters to keep `file_ids` from collection until
        `until_ms` (ms since the epoch); the number of files pinned."""
        reply = self._ask(lambda rid: wire.FilePin.make(self.node_id, request_id=rid, until_ms=until_ms,
                                                        files=list(file_ids)), wire.FilePinReply)
        return reply.file_count

    def _put(self, source: Any, progress: Callable[[int, int], None] | None = None) -> tuple[bytes, int]:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return self.storage.put_bytes(bytes(source))
        path = pathlib.Path(source)
        if not path.is_file():
            raise ClientError(f"no such file: {path}")
        return self.storage.put_file(path, progress=progress)

    def get(self, file_id: str | bytes) -> bytes:
        return self.storage.get(self._file_id(file_id))

    def get_to_file(self, file_id: str | bytes, path: str | os.PathLike[str],
                    progress: Callable[[int, int], None] | None = None) -> None:
        self.storage.get_to_file(self._file_id(file_id), pathlib.Path(path), progress=progress)

    @staticmethod
    def _file_id(file_id: str | bytes) -> bytes:
        if isinstance(file_id, bytes) and len(file_id) == ID_BYTES:
            return file_id
        try:
            return id_from_hex(str(file_id))
        except ValueError as fault:
            raise ClientError(str(fault)) from None

    # -- jobs ----------------------------------------------------------------

    def submit_job(self, program: str | os.PathLike[str] | bytes, args: Sequence[str] = (),
                   inputs: Mapping[str, Any] | None = None,
                   chunk_inputs: Sequence[Mapping[str, Any]] | None = None, chunks: int = 1,
                   timeout: float = DEFAULT_CHUNK_TIMEOUT_S, max_retries: int = 0,
                   name: str | None = None, job_id: str | None = None,
                   limits: Mapping[str, Any] | None = None, network: bool = False,
                   after: Iterable[Job | str] = (), start_at: float | datetime | None = None,
                   deadline: float | datetime | None = None, hold: bool = False, cache: bool = False,
                   retry_backoff: float = 0.0) -> Job:
        """Run `program` as `chunks` chunks. Inputs are file ids, paths,
        bytes, or other jobs' outputs (`job.output_ref(name)`,
        `job.outputs_ref(name)`: the job then waits for those jobs).

        `timeout` is per chunk, in seconds. `limits` bound what each attempt
        may use: {"memory": "512M", "cpus": 1.5, "disk": "2G", "pids": 256,
        "cpu_time": "10m"}; what it leaves out, the cluster file's [limits]
        fills in. `network` lets its chunks reach the network. Raises
        InvalidJobError, before sending anything, when an argument breaks a
        rule, and when no worker of the cluster has the memory, cpus or disk
        asked for (saying which).

        Workflows (doc/client.md): `after` (Jobs or hex ids) must succeed
        first; `start_at` is when it may start at the earliest, `deadline`
        when what is unfinished fails ("deadline exceeded"), both unix
        seconds or a datetime (naive: local time); `hold` keeps it until
        `job.release()`; `cache` reuses the result of a chunk that ran
        before with the same program, args, inputs and limits;
        `retry_backoff` is the pause in seconds before a retry of a chunk
        whose program failed.
        """
        spec = self._check_job(program, args, inputs, chunk_inputs, chunks, timeout, max_retries, name)
        try:
            asked = ResourceLimits.parse(limits)
        except ResourceSpecError as fault:
            raise InvalidJobError(str(fault)) from None
        if type(network) is not bool:
            raise InvalidJobError(f"network must be True or False, got {network!r}")
        job = id_from_hex(job_id) if job_id else new_id()
        file_inputs, file_chunk_inputs, refs = split_refs(spec["inputs"], spec["chunk_inputs"])
        workflow = check_workflow(refs, after, start_at, deadline, hold, cache, retry_backoff, job,
                                  now=time.time())
        program_ref = self._resolve(program, "program")
        input_refs = {key: self._resolve(value, f"input {key!r}") for key, value in file_inputs.items()}
        chunk_refs = [{key: self._resolve(value, f"chunk {index} input {key!r}")
                       for key, value in per_chunk.items()}
                      for index, per_chunk in enumerate(file_chunk_inputs)]

        # Part of the collection protocol (doc/storage.md): a stat
        # touches the blob on each node that holds it, so a file put or named
        # here is younger than the grace period when the submission commits,
        # and no collection pass that asks the masters after that can take it.
        self._touch([program_ref, *input_refs.values(), *(ref for refs in chunk_refs for ref in refs.values())])

        def request(request_id: int) -> wire.Message:
            return wire.JobSubmit.make(
                self.node_id, request_id=request_id, job=job, chunk_count=chunks,
                program=list(program_ref), args=list(args),
                inputs={key: list(ref) for key, ref in input_refs.items()},
                chunk_inputs=[{key: list(ref) for key, ref in refs.items()} for refs in chunk_refs],
                timeout_s=float(timeout), max_retries=max_retries, name=spec["name"],
                limits=asked.as_body(), network=network, **workflow.as_body())

        try:
            self._ask(request, wire.JobSubmitReply)
        except wire.EncodeError as fault:  # raised before anything is sent
            raise InvalidJobError(f"job cannot be sent: {fault}") from None
        return Job(self, job.hex())

    def _check_job(self, program: Any, args: Any, inputs: Any, chunk_inputs: Any, chunks: Any,
                   timeout: Any, max_retries: Any, name: Any) -> dict:
        if type(chunks) is not int or chunks < 1:
            raise InvalidJobError(f"chunks must be a positive integer, got {chunks!r}")
        if isinstance(args, (str, bytes)) or not all(isinstance(arg, str) for arg in args):
            raise InvalidJobError("args must be a list of strings")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 1e9:
            raise InvalidJobError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if type(max_retries) is not int or max_retries < 0:
            raise InvalidJobError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if not isinstance(program, (str, os.PathLike, bytes, bytearray)):
            raise InvalidJobError(f"program must be a path or bytes, got {type(program).__name__}")
        if isinstance(program, (str, os.PathLike)) and not pathlib.Path(program).is_file() \
                and not (isinstance(program, str) and _looks_like_id(program)):
            raise InvalidJobError(f"program {str(program)!r} is not a file")
        inputs = dict(inputs or {})
        for key in inputs:
            _check_input_name(key, "inputs")
        if chunk_inputs is None:
            chunk_inputs = []
        else:
            chunk_inputs = [dict(per_chunk) for per_chunk in chunk_inputs]
            if len(chunk_inputs) != chunks:
                raise InvalidJobError(f"chunk_inputs has {len(chunk_inputs)} entries for {chunks} chunks")
            for index, per_chunk in enumerate(chunk_inputs):
                for key in per_chunk:
                    _check_input_name(key, f"chunk_inputs[{index}]")
                    if key in inputs:
                        raise InvalidJobError(f"input {key!r} of chunk {index} is also a job input")
        if name is None:
            name = pathlib.Path(program).name if isinstance(program, (str, os.PathLike)) else "job"
        if not isinstance(name, str) or len(name.encode()) > NAME_MAX_BYTES:
            raise InvalidJobError("name must be a string of at most 255 bytes")
        return {"inputs": inputs, "chunk_inputs": chunk_inputs, "name": name}

    def _resolve(self, value: Any, what: str) -> tuple[bytes, int]:
        """A file reference (id, size) for an id, a path or bytes."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self._put(value)
        if isinstance(value, os.PathLike) or (isinstance(value, str) and pathlib.Path(value).is_file()):
            path = pathlib.Path(value)
            if not path.is_file():
                raise InvalidJobError(f"{what}: no such file {path}")
            return self._put(path)
        if isinstance(value, str) and _looks_like_id(value):
            file_id = bytes.fromhex(value)
            size = self.storage.stat(file_id)
            if size is None:
                raise InvalidJobError(f"{what}: unknown file id {value} (not in storage)")
            return file_id, size
        raise InvalidJobError(f"{what}: {value!r} is neither a file id, a path to a file, nor bytes")

    def _touch(self, refs: Iterable[tuple[bytes, int]]) -> None:
        """Stat every file on the nodes that hold it, right before a
        submission. Whether each exists was checked as it was resolved; a
        file gone since is the workers' to report, as a lost input.

        A file found on fewer than R live nodes, some of the others answering
        that they lack it, is stored again, from a copy that answered, before
        the submission: a pass that asked the masters before the submission
        commits may have collected some of its copies (it was idle for the
        grace period), and the nodes that collected it refuse it from repair
        for a grace period more. The put brings it back to R with every copy
        fresh (doc/storage.md)."""
        for file_id in dict.fromkeys(file_id for file_id, _ in refs):
            touched = self.storage.touch_holders(file_id)
            # A node that did not answer in time may well hold it: only
            # nodes that said they lack it call for a copy.
            if touched.size is not None and touched.lacking and touched.holders < touched.replicas:
                self._store_again(file_id)

    def _store_again(self, file_id: bytes) -> None:
        """Put a stored file again, from its copy, onto R nodes. A fault here
        does not fail the submission: the copies that answered the touch
        remain, and repair restores R later."""
        with tempfile.TemporaryDirectory(prefix="uds-restore-") as folder:
            path = pathlib.Path(folder) / "file"
            try:
                self.storage.get_to_file(file_id, path)
                self.storage.put_file(path)
            except StorageError as fault:
                log.warning("file %s on fewer than R nodes, not stored again: %s", file_id.hex(), fault)

    def job(self, job_id: str) -> Job:
        return Job(self, self._file_id(job_id).hex())

    def jobs(self, state: str | Iterable[str] | None = None, since: float | datetime | str | None = None,
             limit: int | None = 100) -> list:
        """The jobs the masters know, newest first, as `JobSummary`s: those
        kept and those past retention (known by their history line) alike.

        `state`: a state's name or names (held, waiting, queued, running,
        succeeded, failed, cancelled; None: any); `since`: submitted at or
        after, as unix seconds, a datetime (naive: local time), or text, a
        duration back from now ("30m", "2h", "1d") or an ISO time; `limit`:
        at most that many (None: all). Read page by page. Raises
        BadJobQueryError (a ValueError) before sending anything for a bad
        argument."""
        from uds.client.job_list import check_limit, list_jobs, since_seconds, state_values
        states, since_s, most = state_values(state), since_seconds(since, time.time()), check_limit(limit)

        def ask_page(page_limit: int, states: list[int], since_s: float | None, before: list | None) -> Any:
            return self._ask(lambda rid: wire.JobsQuery.make(self.node_id, request_id=rid, limit=page_limit,
                                                             states=states, since=since_s, before=before),
                             wire.JobsReply)
        return list_jobs(ask_page, states, since_s, most)

    def job_status(self, job_id: str, detail: bool = True, wait: float = 0.0,
                   first_chunk: int = 0, max_chunks: int | None = None) -> JobStatus:
        """The job's state; with detail=False the counts only (no per-chunk
        list); with `wait` seconds, the answer comes once the job has ended or
        the wait is over (at most RESEND_AFTER_S / 2).

        With detail, `chunks` holds the reports of chunks first_chunk,
        first_chunk + 1, ...: all the rest of them, or at most `max_chunks`.
        A large job's reports are read page by page; the job's own fields
        are those of the first page, so no chunk report is older than them.
        A job past the masters' retention (`past_retention`) has state,
        times and counts but no reports: its next_chunk is its chunk_count."""
        job = self._file_id(job_id)
        if type(first_chunk) is not int or first_chunk < 0:
            raise InvalidJobError(f"first_chunk must be a non-negative integer, not {first_chunk!r}")
        if max_chunks is not None and (type(max_chunks) is not int or max_chunks < 1):
            raise InvalidJobError(f"max_chunks must be a positive integer, not {max_chunks!r}")
        wait_ms = int(min(wait, RESEND_AFTER_S / 2) * 1000)
        first_chunk = min(first_chunk, U32_MAX)
        reply = self._status_page(job, detail, wait_ms, first_chunk, max_chunks or 0)
        status = JobStatus.from_reply(reply)
        if not detail:
            return status
        end = reply.chunk_count if max_chunks is None else min(reply.chunk_count, first_chunk + max_chunks)
        next_chunk = reply.next_chunk
        while next_chunk < end:
            page = self._status_page(job, True, 0, next_chunk, end - next_chunk)
            if page.first_chunk != next_chunk or page.next_chunk <= next_chunk:
                raise RemoteError(wire.ErrorCode.INTERNAL,
                                  f"master sent chunks {page.first_chunk}..{page.next_chunk} "
                                  f"when asked for chunk {next_chunk} on")
            status.chunks.extend(ChunkStatus.from_report(report) for report in page.chunks)
            next_chunk = page.next_chunk
        return status

    def _status_page(self, job: bytes, detail: bool, wait_ms: int, first_chunk: int,
                     max_chunks: int) -> wire.JobStatusReply:
        return self._ask(lambda rid: wire.JobStatus.make(
            self.node_id, request_id=rid, job=job, detail=int(detail), wait_ms=wait_ms,
            first_chunk=first_chunk, max_chunks=min(max_chunks, U32_MAX)), wire.JobStatusReply,
            patience_s=wait_ms / 1000.0)

    def attempts(self, job_id: str, chunk: int) -> AttemptList:
        """Every attempt of the job's chunk `chunk` that the masters keep,
        oldest first, the current one last (client/attempts.py). Raises
        UnknownJobError (also for a job past retention) and InvalidJobError
        (no such chunk)."""
        job = self._file_id(job_id)
        if type(chunk) is not int or not 0 <= chunk <= U32_MAX:
            raise InvalidJobError(f"chunk must be a chunk index (an integer from 0), not {chunk!r}")
        reply = self._ask(lambda rid: wire.AttemptsQuery.make(self.node_id, request_id=rid, job=job, chunk=chunk),
                          wire.AttemptsReply)
        return AttemptList([Attempt.from_record(record) for record in reply.attempts], reply.attempts_dropped)

    def job_spec(self, job_id: str) -> JobSpec:
        """What the job was submitted with: program, args, job-wide inputs
        (refs resolved once their jobs succeeded) and the jobs it waits for.
        Raises UnknownJobError, also for a job past retention (whose spec
        the masters no longer keep)."""
        job = self._file_id(job_id)
        return JobSpec.from_reply(self._ask(lambda rid: wire.JobSpecQuery.make(self.node_id, request_id=rid, job=job),
                                            wire.JobSpecReply))

    def cancel_job(self, job_id: str) -> JobStatus:
        """Cancel a job, held and waiting ones too; its status after (counts only)."""
        job = self._file_id(job_id)
        reply = self._ask(lambda rid: wire.JobCancel.make(self.node_id, request_id=rid, job=job),
                          wire.JobStatusReply)
        return JobStatus.from_reply(reply)

    def release_job(self, job_id: str) -> JobStatus:
        """Let a job submitted with hold=True go on; a job not held is left
        as it is. Its status after (counts only); UnknownJobError."""
        job = self._file_id(job_id)
        reply = self._ask(lambda rid: wire.JobRelease.make(self.node_id, request_id=rid, job=job),
                          wire.JobStatusReply)
        return JobStatus.from_reply(reply)

    def nodes(self) -> list[dict]:
        reply = self._ask(lambda rid: wire.NodesQuery.make(self.node_id, request_id=rid), wire.NodesReply)
        return reply.nodes

    def node_history(self, node: str) -> NodeHistory:
        """The record and events of the node `node` names (its id, an id
        prefix or its host name): raises UnknownNodeError or
        AmbiguousNodeError. See client/node_history.py."""
        return node_history(self, node)

    def events(self, after: int = 0, limit: int = 1000, job: Any = None, node: Any = None,
               kinds: Iterable[str] = (), wait: float = 0.0) -> EventsPage:
        """One page of the masters' event log: the events after seq `after`
        (of `job`, naming `node`, of `kinds`, when given), oldest first, at
        most `limit`. With `wait` seconds (at most 30), a query that finds
        none is held until one commits or the wait is over. Ask the next
        page after its `through_seq`; `gap` says which events that might
        have matched the log dropped (client/events.py)."""
        return read_page(self, after, limit, job, node, kinds, wait)

    def follow(self, job: Any = None, node: Any = None, kinds: Iterable[str] = (),
               after: int = 0) -> Iterator[Event]:
        """Every event after seq `after` that matches, as it commits, without
        end; a leader change is followed through from the last seq read. A
        gap is yielded as an Event of kind "gap"."""
        return follow_events(self, after, job=job, node=node, kinds=kinds)

    def master_stats(self) -> dict:
        reply = self._ask(lambda rid: wire.StatsQuery.make(self.node_id, request_id=rid), wire.StatsReply)
        return reply.counters

    def masters(self, timeout: float | None = None) -> list:
        """Every master of the cluster file, asked directly and at once: a
        `MasterRecord` each (address, Raft role, term, commit index, lag behind
        the leader), its role "unreachable" if it did not answer within
        `timeout` (default MASTERS_TIMEOUT_S, 1 s)."""
        from uds.client.masters import MASTERS_TIMEOUT_S, ask_every_master
        return ask_every_master(self.cluster, self._transport, self.node_id,
                                MASTERS_TIMEOUT_S if timeout is None else timeout)

    def change_masters(self, add: bool, address: str) -> Any:
        """Add the master that `address` names (either address of its
        [[masters]] entry) to the Raft group, or remove it (add=False), and
        wait for the commit: a `MembershipChanged`, or MasterChangeError
        saying why not. See client/masters.py."""
        from uds.client.masters import change_masters
        return change_masters(self, add, address)

    def as_completed(self, jobs: Iterable[Job], timeout: float | None = None) -> Iterator[Job]:
        """Yield each job once it has finished, in the order they finish:
        those finished already first, then each as its final event commits."""
        waiting = {job.id: job for job in jobs}
        deadline = None if timeout is None else time.monotonic() + timeout
        # The log's end before the statuses are read: a job that ends after
        # its status was read has its final event after this seq.
        start = self.events(after=0, limit=1).last_seq if waiting else 0
        for job in list(waiting.values()):
            if job.status(detail=False).done:
                del waiting[job.id]
                yield job
        only = next(iter(waiting)) if len(waiting) == 1 else None
        try:
            for event in follow_events(self, start, job=only, kinds=JOB_FINAL_KINDS, deadline=deadline):
                job = waiting.pop(event.job, None) if event.job is not None else None
                if job is not None:
                    yield job
                elif event.kind == GAP:
                    # Final events may be among those dropped: ask the jobs themselves.
                    for job in [job for job in waiting.values() if job.status(detail=False).done]:
                        del waiting[job.id]
                        yield job
                if not waiting:
                    return
        except RequestTimeout:
            raise RequestTimeout(f"{len(waiting)} jobs still running after {timeout}s") from None

    # -- requests to the masters -------------------------------------------

    @property
    def _master_index(self) -> int:
        """The master asked first: the leader as far as this client knows."""
        return self._leader.target

    def _ask(self, make: Callable[[int], wire.Message], expected: type, patience_s: float = 0.0) -> Any:
        """Send the request to the leader, finding it first, and return its
        answer of type `expected`; raise what an error answer means, or
        RequestTimeout after the connection's timeout (client/leader.py)."""
        return self._leader.ask(make, expected, self.timeout, patience_s)

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()
        self._leader.close()
        self._transport.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["connect", "Connection", "find_cluster_file"]
