"""A client that submits jobs and resends each submission until the master
answers; a job counts as acknowledged once job_submit_reply arrived."""
from __future__ import annotations

from uds import wire
from uds.wire.resources import NO_LIMITS, ResourceLimits

from .host import Host
from .loop import Simulation

# client/api.py (RESEND_AFTER_S) resends an unanswered request after this long.
RESEND_SUBMIT_S = 2.0
JOB_TIMEOUT_S = 3600.0


class SimClient(Host):
    def __init__(self, sim: Simulation, name: str, master: str, program: tuple[bytes, int]) -> None:
        super().__init__(sim, name)
        self.master = master
        self.program = program
        self.node_id = b"client".ljust(16, b"\0")
        self.submissions: dict[bytes, wire.JobSubmit] = {}
        self.acknowledged: dict[bytes, float] = {}       # job -> when the reply came
        self.next_request_id = 1

    def submit(self, job: bytes, chunk_count: int, max_retries: int, limits: ResourceLimits = NO_LIMITS) -> None:
        self.next_request_id += 1
        self.submissions[job] = wire.JobSubmit.make(
            self.node_id, request_id=self.next_request_id, job=job, chunk_count=chunk_count,
            program=list(self.program), args=[], inputs={}, chunk_inputs=[], timeout_s=JOB_TIMEOUT_S,
            max_retries=max_retries, name="", limits=limits.as_body())
        self._send_until_answered(job)

    def _send_until_answered(self, job: bytes) -> None:
        if job not in self.acknowledged:
            self.send(self.master, self.submissions[job])
            self.later(RESEND_SUBMIT_S, self._send_until_answered, job)

    def on_message(self, source: str, message: wire.Message) -> None:
        if isinstance(message, wire.JobSubmitReply) and message.job_uuid in self.submissions:
            self.acknowledged.setdefault(message.job_uuid, self.sim.now)
