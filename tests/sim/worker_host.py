"""A worker process as the simulation runs it: the worker core, and what its
effects do here. Programs are fetched after a short delay, run for a random
time, exit 0 or (sometimes) 1, and write one output, a proof of which job,
chunk, attempt and worker ran them, which Upload stores in the content
store. A crash kills the programs with the worker; the restarted worker is
a new process that knows nothing."""
from __future__ import annotations

from uds import wire

from .host import Host
from .loop import Simulation
from .storage import PROOF_NAME, ContentStore, Proof
from .trace import attempt_name
from .worker_node import (
    Exited, FetchProgram, Fetched, Received, Send, Signal, SimWorkerCore, Start, Tick, Upload, Uploaded, Wake,
)

PROGRAM_FAILURE_ODDS = 0.1
PROGRAM_RUN_S = (0.02, 0.6)
FETCH_S = (0.001, 0.02)
UPLOAD_S = (0.001, 0.02)
SIGNAL_EXIT_S = 0.01


class SimWorker(Host):
    def __init__(self, sim: Simulation, name: str, node_id: bytes, balancer: str, store: ContentStore,
                 slots: int, heartbeat_interval_s: float) -> None:
        super().__init__(sim, name)
        self.node_id = node_id
        self.balancer = balancer
        self.store = store
        self.core = SimWorkerCore(node_id=node_id, slots=slots, started_at=round(sim.now, 3),
                                  heartbeat_interval_s=heartbeat_interval_s)
        self.runs: dict = {}            # attempt key -> run number of its live process
        self.outputs: dict = {}         # attempt key -> what its program wrote
        self.next_run = 1
        self.every(heartbeat_interval_s / 2, lambda: self._handle(Tick()))

    def on_message(self, source: str, message: wire.Message) -> None:
        self._handle(Received(message))

    def _handle(self, event: object) -> None:
        for effect in self.core.handle(event, self.sim.now):
            _EFFECTS[type(effect)](self, effect)

    def _uniform(self, bounds: tuple[float, float]) -> float:
        return self.sim.random.uniform(*bounds)

    def _send(self, effect: Send) -> None:
        self.send(self.balancer, effect.message)

    def _fetch(self, effect: FetchProgram) -> None:
        self.later(self._uniform(FETCH_S), self._handle, Fetched(effect.key))

    def _start(self, effect: Start) -> None:
        run = self.runs[effect.key] = self.next_run
        self.next_run += 1
        exit_code = 1 if self.sim.random.random() < PROGRAM_FAILURE_ODDS else 0
        self.later(self._uniform(PROGRAM_RUN_S), self._exit, effect.key, run, exit_code, False)
        if self.sim.tracing:
            self.sim.note(f"{self.name} starts {attempt_name(effect.key)}")

    def _signal(self, effect: Signal) -> None:
        run = self.runs.get(effect.key)
        if run is not None:
            self.later(SIGNAL_EXIT_S, self._exit, effect.key, run, -15, True)

    def _exit(self, key, run: int, exit_code: int, stopped: bool) -> None:
        if self.runs.get(key) != run:
            return                                  # that process already ended
        del self.runs[key]
        if self.sim.tracing:
            self.sim.note(f"{self.name} ends {attempt_name(key)}: {'signalled' if stopped else f'exit {exit_code}'}")
        if not stopped:
            self.outputs[key] = Proof(key.job, key.chunk, key.attempt, self.node_id).content()
        self._handle(Exited(key, exit_code, stopped))

    def _upload(self, effect: Upload) -> None:
        content = self.outputs.pop(effect.key, None)
        outputs = {} if content is None else {PROOF_NAME: list(self.store.put(content))}
        self.later(self._uniform(UPLOAD_S), self._handle, Uploaded(effect.key, outputs))

    def _wake(self, effect: Wake) -> None:
        self.sim.at(effect.at, self._run, self._handle, (Tick(),))


_EFFECTS = {
    Send: SimWorker._send,
    FetchProgram: SimWorker._fetch,
    Start: SimWorker._start,
    Signal: SimWorker._signal,
    Upload: SimWorker._upload,
    Wake: SimWorker._wake,
}
