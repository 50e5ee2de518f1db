"""The machine under a simulated worker: what the attempts core's effects do
here, as worker/host.py does them on a real one.

Each request effect is answered once, after a seeded delay (the program's
start at once, as on a real machine). A program is fetched from the storage
nodes (storage.py: read order, failing over past a node that is down or
lacks it) or is unavailable: no node served it, or, during the fault phase,
the machine's own program cache sometimes fails. A mount is made (or
fails). A program first reads its inputs from the storage nodes the same
way, and ends at once with an infrastructure error (REJECTED, as the real
mount reports an input it could not give good bytes of) when no node
serves one; then it runs for a seeded time and exits 0, or 1 one time in
ten; it writes one output, a proof naming the job, chunk, attempt and
worker that ran it and the id of each input it was given (by name), and
sometimes a stdout. Outputs are stored on R live
nodes in put order, or the upload fails: fewer than R took one, or, during
the fault phase, the machine sometimes fails to read them. SIGTERM ends a
program shortly, unless it is one of the programs that trap it and hang,
which only the core's SIGKILL after its grace ends. Everything here belongs
to the worker's process: a crash loses the programs, the processes and the
fetched programs alike.
"""
from __future__ import annotations

from typing import Any, Callable

from uds.worker import attempts as core
from uds.worker.attempts import AttemptKey

from .loop import Simulation
from .storage import PROOF_NAME, Proof, StorageCluster
from .trace import attempt_name

PROGRAM_FAILURE_ODDS = 0.1
PROGRAM_RUN_S = (0.02, 0.6)
# Some programs run long, so that cancels and freezes find them running.
LONG_PROGRAM_ODDS = 0.15
LONG_PROGRAM_RUN_S = (0.6, 3.0)
STDOUT_ODDS = 0.3
TERM_TRAPPED_ODDS = 0.5
# A program stopped by a signal has written its proof before this often.
PROOF_BEFORE_STOP_ODDS = 0.5
FETCH_S = (0.001, 0.02)
MOUNT_S = (0.0005, 0.005)
UPLOAD_S = (0.001, 0.02)
SIGNAL_EXIT_S = 0.01
# During the fault phase: the machine's program cache fails a fetch, a mount
# fails, reading the outputs to store them fails, each at these odds (the
# machine's own failures; storage's are its nodes', storage.py).
FETCH_FAILURE_ODDS = 0.03
MOUNT_FAILURE_ODDS = 0.03
UPLOAD_FAILURE_ODDS = 0.03
EXIT_CODES = {core.SignalName.TERM: -15, core.SignalName.KILL: -9}

Later = Callable[..., None]             # later(delay_s, action, *args), stopped by a crash or freeze


class SimAttemptHost:
    def __init__(self, sim: Simulation, name: str, node_id: bytes, store: StorageCluster, later: Later,
                 hand_back: Callable[[Any], None], faults_until: float) -> None:
        self.sim, self.name, self.node_id, self.store = sim, name, node_id, store
        self.later, self.hand_back = later, hand_back
        self.faults_until = faults_until
        self.programs: set[bytes] = set()                       # fetched program ids
        self.processes: dict[AttemptKey, int] = {}              # key -> run number of its live process
        self.traps_term: set[AttemptKey] = set()
        self.hung: set[AttemptKey] = set()                      # trapped SIGTERM: ends only by SIGKILL
        self.left: dict[AttemptKey, tuple[bytes | None, bytes | None]] = {}   # key -> (proof, stdout)
        self.inputs: dict[AttemptKey, list[tuple[str, bytes]]] = {}   # key -> its mounted inputs: (name, id)
        self.storage_failed_at: dict[str, float] = {}             # storage node -> when it last did not answer
        self.next_run = 1
        self.handlers: dict[type, Callable[[Any], Any]] = {
            core.FetchProgram: self.fetch, core.Mount: self.mount, core.Start: self.start,
            core.Signal: self.signal, core.Unmount: self.unmount, core.Upload: self.upload,
            core.Clean: self.clean,
        }

    def _uniform(self, bounds: tuple[float, float]) -> float:
        return self.sim.random.uniform(*bounds)

    def _fails(self, odds: float, kind: str) -> bool:
        if self.sim.now >= self.faults_until or self.sim.random.random() >= odds:
            return False
        self.sim.count(kind)
        if self.sim.tracing:
            self.sim.note(f"{self.name} {kind.replace('_', ' ')}")
        return True

    def _answer(self, bounds: tuple[float, float], event: Any) -> None:
        self.later(self._uniform(bounds), self.hand_back, event)

    # -- effects -----------------------------------------------------------------

    def fetch(self, effect: core.FetchProgram) -> core.ProgramFetched | None:
        program_id = bytes(effect.program[0])
        path = f"/sim/programs/{program_id.hex()}"
        if program_id in self.programs:
            return core.ProgramFetched(effect.key, path)
        if self._fails(FETCH_FAILURE_ODDS, "program_unavailable"):
            self._answer(FETCH_S, core.ProgramUnavailable(effect.key, "cannot fetch the program: "
                                                                      "simulated program cache failure"))
            return None
        delay = self._uniform(FETCH_S)
        self.store.read(program_id, self.storage_failed_at, self.later,
                        lambda reason: self.later(delay, self._fetched, effect.key, program_id, path, reason))
        return None

    def _fetched(self, key: AttemptKey, program_id: bytes, path: str, reason: str) -> None:
        if reason:
            self.sim.count("program_unreadable")
            if self.sim.tracing:
                self.sim.note(f"{self.name}: {attempt_name(key)} cannot fetch its program: {reason}")
            self.hand_back(core.ProgramUnavailable(key, f"cannot fetch the program: {reason}"))
            return
        self.programs.add(program_id)
        self.hand_back(core.ProgramFetched(key, path))

    def mount(self, effect: core.Mount) -> None:
        if self._fails(MOUNT_FAILURE_ODDS, "mount_failed"):
            self._answer(MOUNT_S, core.MountFailed(effect.key, "simulated mount failure"))
        else:
            self.inputs[effect.key] = [(name, bytes(ref[0])) for name, ref in sorted(effect.inputs.items())]
            self._answer(MOUNT_S, core.Mounted(effect.key, f"/sim/mnt/{effect.key.name}"))

    def unmount(self, effect: core.Unmount) -> None:
        self.inputs.pop(effect.key, None)

    def start(self, effect: core.Start) -> core.ProcessStarted:
        key = effect.key
        run = self.processes[key] = self.next_run
        self.next_run += 1
        random = self.sim.random
        if random.random() < TERM_TRAPPED_ODDS:
            self.traps_term.add(key)
        exit_code = 1 if random.random() < PROGRAM_FAILURE_ODDS else 0
        run_s = self._uniform(LONG_PROGRAM_RUN_S if random.random() < LONG_PROGRAM_ODDS else PROGRAM_RUN_S)
        if self.inputs.get(key):
            # Its first read, told as the mount tells it: once, from elsewhere, after the start.
            self.later(0.0, self.hand_back, core.FirstRead(key))
        self._read_inputs(key, run, [file_id for _, file_id in self.inputs.get(key, ())], run_s, exit_code)
        if self.sim.tracing:
            self.sim.note(f"{self.name} starts {attempt_name(key)}")
        return core.ProcessStarted(key)

    def _read_inputs(self, key: AttemptKey, run: int, unread: list[bytes], run_s: float, exit_code: int,
                     reason: str = "") -> None:
        """The program reads its inputs, one after another, then runs; an
        input no node serves ends it, as an infrastructure error (never
        before the core has heard that it started)."""
        if self.processes.get(key) != run:
            return                                  # stopped meanwhile
        if reason:
            self.later(0.0, self._input_unreadable, key, run, reason)
            return
        if not unread:
            self.later(run_s, self._exit, key, run, exit_code, False)
            return
        file_id = unread.pop(0)
        self.store.read(file_id, self.storage_failed_at, self.later,
                        lambda failure: self._read_inputs(key, run, unread, run_s, exit_code, failure))

    def _input_unreadable(self, key: AttemptKey, run: int, reason: str) -> None:
        if self.processes.get(key) != run:
            return                                  # stopped meanwhile
        self.sim.count("input_unreadable")
        del self.processes[key]
        self.traps_term.discard(key)
        self.hung.discard(key)
        self.left[key] = (None, None)
        if self.sim.tracing:
            self.sim.note(f"{self.name}: {attempt_name(key)} cannot read an input: {reason}")
        self.hand_back(core.ProcessExited(key, 0, infrastructure_error=f"cannot read an input: {reason}"))

    def signal(self, effect: core.Signal) -> None:
        run = self.processes.get(effect.key)
        if run is None:
            raise ProcessGone(f"{effect.signal.value} for {attempt_name(effect.key)}, which runs no process")
        if effect.signal is core.SignalName.TERM and effect.key in self.traps_term:
            self.hung.add(effect.key)
            if self.sim.tracing:
                self.sim.note(f"{self.name}: {attempt_name(effect.key)} traps SIGTERM and hangs")
            return
        self.later(SIGNAL_EXIT_S, self._exit, effect.key, run, EXIT_CODES[effect.signal], True)

    def _exit(self, key: AttemptKey, run: int, exit_code: int, stopped: bool) -> None:
        if self.processes.get(key) != run:
            return                                  # that process already ended
        if key in self.hung and exit_code != EXIT_CODES[core.SignalName.KILL]:
            return                                  # it hangs until SIGKILL
        del self.processes[key]
        self.traps_term.discard(key)
        self.hung.discard(key)
        if self.sim.tracing:
            ending = f"signal {-exit_code}" if stopped else f"exit {exit_code}"
            self.sim.note(f"{self.name} ends {attempt_name(key)}: {ending}")
        random = self.sim.random
        proof = None
        if not stopped or random.random() < PROOF_BEFORE_STOP_ODDS:
            proof = Proof(key.job, key.chunk, key.attempt, self.node_id, tuple(self.inputs.get(key, ()))).content()
        stdout = None
        if random.random() < STDOUT_ODDS:
            stdout = f"stdout of {attempt_name(key)} on {self.name}".encode()
        self.left[key] = (proof, stdout)
        self.hand_back(core.ProcessExited(key, exit_code, outputs=(PROOF_NAME,) if proof else (),
                                          stdout_bytes=len(stdout) if stdout else 0))

    def upload(self, effect: core.Upload) -> None:
        proof, stdout = self.left.pop(effect.key)
        if self._fails(UPLOAD_FAILURE_ODDS, "upload_failed"):
            self._answer(UPLOAD_S, core.UploadFailed(effect.key, "simulated storage failure"))
            return
        contents = {PROOF_NAME: proof}
        outputs, stdout_ref, probed, failures = {}, None, 0.0, []
        for name in effect.outputs:
            outputs[name], cost, reason = self.store.put(contents[name], self.storage_failed_at)
            probed, failures = probed + cost, failures + ([reason] if reason else [])
        if effect.stdout and stdout:
            stdout_ref, cost, reason = self.store.put(stdout, self.storage_failed_at)
            probed, failures = probed + cost, failures + ([reason] if reason else [])
        delay = self._uniform(UPLOAD_S) + probed
        if failures:
            self.sim.count("upload_short_of_replicas")
            if self.sim.tracing:
                self.sim.note(f"{self.name}: {attempt_name(effect.key)} upload failed: {'; '.join(failures)}")
            self.later(delay, self.hand_back, core.UploadFailed(effect.key, "; ".join(failures)))
        else:
            self.later(delay, self.hand_back, core.Uploaded(effect.key, outputs, stdout_ref, None))

    def clean(self, effect: core.Clean) -> None:
        self.left.pop(effect.key, None)
        self.inputs.pop(effect.key, None)


class ProcessGone(AssertionError):
    """The core signalled an attempt whose process has already been reported ended."""
