"""The `uds` command. Every error prints one line and exits non-zero."""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Any, Callable, NoReturn

from uds.client.attempts import print_chunk_attempts
from uds.client.status_view import print_status as _print_status
from uds.units import size_text
from uds.wire.enums import NodeRole
from uds.wire.resources import ResourceLimits, ResourceSpecError
from uds.wire.keys import KeyFolderError, create_cluster_keys, export_role, role_name, role_of_name

EXIT_FAILED = 1
EXIT_USAGE = 2
# `uds submit` options that are ResourceLimits.parse keys (--cpu-time: cpu_time).
LIMIT_FLAGS = ("memory", "cpus", "disk", "pids", "cpu_time")
# `uds status` exits 0 for these; 1 for a failed or cancelled job.
UNFAILED_JOB_STATES = ("succeeded", "queued", "running", "waiting", "held")


class CommandError(Exception):
    """A command that cannot be carried out; its message is shown as is."""


# -- output helpers -------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal; occasional lines otherwise."""

    def __init__(self, label: str, stream: Any = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.last_line = ""
        self.last_print = 0.0

    def update(self, done: float, total: float, suffix: str = "") -> None:
        fraction = 0.0 if total <= 0 else min(1.0, done / total)
        width = 30
        filled = int(fraction * width)
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {suffix}"
        if self.tty:
            if line != self.last_line:
                self.stream.write("\r" + line.ljust(len(self.last_line)))
                self.stream.flush()
        elif line != self.last_line and (time.monotonic() - self.last_print > 2 or fraction >= 1):
            self.stream.write(line + "\n")
            self.last_print = time.monotonic()
        self.last_line = line

    def close(self) -> None:
        if self.tty and self.last_line:
            self.stream.write("\n")
            self.stream.flush()



def _connect(options: argparse.Namespace):
    from uds.client.api import connect
    return connect(options.cluster)


# -- commands -------------------------------------------------------------------

def keys_init(options: argparse.Namespace) -> int:
    try:
        folder = create_cluster_keys(options.dir)
    except KeyFolderError as fault:
        raise CommandError(str(fault)) from None
    print(f"wrote a key pair for each role and the Raft password to {folder}; keep it off the hosts "
          f"and give each host its role's folder with `uds keys export --role ROLE DIR`")
    return 0


def keys_export(options: argparse.Namespace) -> int:
    try:
        role = role_of_name(options.role)
        folder = export_role(options.keys, role, options.dir)
    except (KeyFolderError, ValueError) as fault:
        raise CommandError(str(fault)) from None
    print(f"wrote the {role_name(role)} key folder to {folder.path}; on the host, put it at "
          f"KEYS/{role_name(role)} where KEYS is the cluster file's `keys`")
    return 0


def _master_count(text: str) -> int:
    from uds.client.devcluster import MASTER_COUNTS
    if not text.isdigit() or int(text) not in MASTER_COUNTS:
        raise CommandError(f"--masters must be 1, 3 or 5, not {text!r}")
    return int(text)


def dev(options: argparse.Namespace) -> int:
    from uds.client import devcluster
    folder = pathlib.Path(options.dir).expanduser()
    try:
        if options.stop:
            count = devcluster.stop(folder)
            print(f"stopped {count} processes" if count else f"no dev cluster running in {folder}")
            return 0
        worker_options = [word for flag in ("cpus", "memory", "disk") if getattr(options, flag) is not None
                          for word in (f"--{flag}", str(getattr(options, flag)))]
        processes = devcluster.start(folder, options.workers, options.slots, detach=options.detach,
                                     worker_options=worker_options,
                                     unsafe_no_sandbox=options.unsafe_no_sandbox,
                                     loadbalancers=options.loadbalancers,
                                     masters=_master_count(options.masters),
                                     storage=options.storage, replicas=options.replicas,
                                     dashboard=None if options.no_dashboard else options.dashboard_port)
    except devcluster.DevClusterError as fault:
        raise CommandError(str(fault)) from None
    cluster = folder.expanduser().resolve() / "cluster.toml"
    print(f"dev cluster ready: {len(processes)} processes, cluster file {cluster}")
    for process in processes:
        if process.url:
            print(f"dashboard: {process.url}")
    if options.detach:
        print(f"stop it with: uds dev --stop --dir {folder}")
        return 0
    print("press Ctrl-C to stop")
    return devcluster.run_foreground(folder.expanduser().resolve(), processes)


def put(options: argparse.Namespace) -> int:
    from uds.client.pins import pin_seconds
    if options.pin is not None:
        pin_seconds(options.pin)        # a bad pin is refused before connecting
    for path in options.paths:
        if not pathlib.Path(path).is_file():
            raise CommandError(f"no such file: {path}")
    with _connect(options) as connection:
        for path in options.paths:
            # The bar follows the slowest of the replicas being written.
            bar = Progress(f"put {pathlib.Path(path).name}")
            try:
                file_id = connection.put(path, pin=options.pin, progress=lambda done, total: bar.update(
                    done, total, f"{size_text(done)}/{size_text(total)}"))
            finally:
                bar.close()
            print(f"{file_id}  {path}" + (f"  pinned for {options.pin}" if options.pin else ""))
    return 0


def get(options: argparse.Namespace) -> int:
    with _connect(options) as connection:
        if options.output in (None, "-"):
            sys.stdout.buffer.write(connection.get(options.file_id))
            sys.stdout.buffer.flush()
        else:
            bar = Progress(f"get {options.file_id[:8]}")
            try:
                connection.get_to_file(options.file_id, options.output, progress=lambda done, total:
                                       bar.update(done, total, f"{size_text(done)}/{size_text(total)}"))
            finally:
                bar.close()
    return 0


def _parse_assignment(text: str, what: str) -> tuple[str, Any]:
    """NAME=PATH, NAME=FILE_ID, or NAME=JOB:OUTPUT[:CHUNK|*] (another job's output)."""
    from uds.client.workflow import input_from_text
    name, separator, value = text.partition("=")
    if not separator or not name or not value:
        raise CommandError(f"{what} {text!r}: expected NAME=PATH, NAME=FILE_ID or NAME=JOB:OUTPUT[:CHUNK]")
    return name, input_from_text(value)


def _workflow_options(options: argparse.Namespace) -> dict[str, Any]:
    """submit_job's workflow arguments from the command's words; times
    given as +DURATION count from now."""
    from uds.client.workflow import time_from_text
    now = time.time()
    return dict(after=options.after, hold=options.hold, cache=options.cache, retry_backoff=options.retry_backoff,
                start_at=None if options.start_at is None else time_from_text(options.start_at, now, "--start-at"),
                deadline=None if options.deadline is None else time_from_text(options.deadline, now, "--deadline"))


def submit(options: argparse.Namespace) -> int:
    inputs = dict(_parse_assignment(text, "--input") for text in options.input)
    chunk_inputs = None
    if options.chunk_input:
        chunk_inputs = [{} for _ in range(options.chunks)]
        for text in options.chunk_input:
            index, separator, rest = text.partition(":")
            if not separator or not index.isdigit() or int(index) >= options.chunks:
                raise CommandError(f"--chunk-input {text!r}: expected CHUNK:NAME=PATH with CHUNK "
                                   f"below --chunks ({options.chunks})")
            name, value = _parse_assignment(rest, "--chunk-input")
            chunk_inputs[int(index)][name] = value
    limits = {name: getattr(options, name) for name in LIMIT_FLAGS if getattr(options, name) is not None}
    if limits.get("pids", "").strip().isdigit():
        limits["pids"] = int(limits["pids"])    # else ResourceLimits.parse says what is wrong
    try:
        ResourceLimits.parse(limits)        # a bad value is refused before connecting
    except ResourceSpecError as fault:
        raise CommandError(str(fault)) from None
    workflow = _workflow_options(options)
    with _connect(options) as connection:
        job = connection.submit_job(options.program, args=options.args, inputs=inputs,
                                    chunk_inputs=chunk_inputs, chunks=options.chunks,
                                    timeout=options.timeout, max_retries=options.retries,
                                    name=options.name, limits=limits, network=options.network, **workflow)
        print(job.id)
        if not options.wait:
            return 0
        status = _wait_with_bar(job)
        _print_status(status)
        return 0 if status.state == "succeeded" else EXIT_FAILED


def _wait_with_bar(job: Any) -> Any:
    bar = Progress(f"job {job.id[:8]}")

    def show(status: Any) -> None:
        # A held or waiting job is not final: the bar says why it stands still.
        why = f" ({status.waiting})" if status.waiting and status.state in ("held", "waiting") else ""
        bar.update(status.finished, status.chunk_count,
                   f"{status.finished}/{status.chunk_count} chunks, {status.state}{why}")

    try:
        return job.wait(progress=show)
    finally:
        bar.close()


def status(options: argparse.Namespace) -> int:
    with _connect(options) as connection:
        job = connection.job(options.job)
        if options.chunk is not None:
            result = _wait_with_bar(job) if options.wait else job.status(detail=False)
            try:
                print_chunk_attempts(result, job, options.chunk)
            except IndexError as fault:     # past retention, or no such chunk
                raise CommandError(str(fault)) from None
            return 0 if result.state in UNFAILED_JOB_STATES else EXIT_FAILED
        result = _wait_with_bar(job) if options.wait else job.status()
        _print_status(result)
        return 0 if result.state in UNFAILED_JOB_STATES else EXIT_FAILED


def logs(options: argparse.Namespace) -> int:
    with _connect(options) as connection:
        job = connection.job(options.job)
        page = connection.job_status(job.id, first_chunk=max(0, options.chunk), max_chunks=1)
        if page.past_retention:
            raise CommandError(f"job {options.job} is past retention: its chunk reports are no longer kept")
        if options.chunk < 0 or not page.chunks:
            raise CommandError(f"job {options.job} has chunks 0..{page.chunk_count - 1}, not {options.chunk}")
        try:
            stdout, stderr = job.logs(options.chunk, options.attempt)
        except IndexError as fault:
            raise CommandError(str(fault)) from None
        if options.stream in ("stdout", "both"):
            sys.stdout.buffer.write(stdout)
        if options.stream in ("stderr", "both"):
            (sys.stdout.buffer if options.stream == "stderr" else sys.stderr.buffer).write(stderr)
        sys.stdout.buffer.flush()
    return 0


def cancel(options: argparse.Namespace) -> int:
    with _connect(options) as connection:
        _print_status(connection.job(options.job).cancel())
    return 0


def release(options: argparse.Namespace) -> int:
    with _connect(options) as connection:
        _print_status(connection.job(options.job).release())
    return 0


def jobs(options: argparse.Namespace) -> int:
    from uds.client.job_list import job_table, since_seconds, state_values
    # Bad words are refused before connecting; a duration counts back from now.
    states = [word for text in options.state or () for word in text.split(",")]
    state_values(states)
    since = since_seconds(options.since, time.time())
    if options.limit < 1:
        raise CommandError(f"--limit must be 1 or more, not {options.limit}")
    with _connect(options) as connection:
        print("\n".join(job_table(connection.jobs(state=states or None, since=since, limit=options.limit))))
    return 0


def _sandbox_or_lease(node: dict) -> str:
    from uds.wire.enums import NodeRole
    if node["role"] == NodeRole.WORKER:
        return node["sandbox"]
    if node["role"] == NodeRole.LOADBALANCER:
        return f"active, epoch {node['lease_epoch']}" if node["lease_epoch"] else "standby"
    return "-"


# Marks the role of a leader whose leadership no majority has confirmed.
UNCONFIRMED_MARK = "*"


def _print_masters(records: list) -> None:
    """Every master of the cluster file: its Raft role, term, commit index
    and how far it lags behind the leader's commit index. A leader that no
    majority has confirmed lately is marked, with a note under the table."""
    width = max(len(record.address) for record in records) + 2
    print(f"{'master':<{width}}{'role':<13}{'term':>6}{'commit':>10}{'lag':>7}  leader")
    unconfirmed = False
    for record in records:
        if not record.reachable:
            print(f"{record.address:<{width}}{record.role:<13}{'-':>6}{'-':>10}{'-':>7}  -")
            continue
        role = record.role
        if role == "leader" and record.confirmed_leader is False:
            role += UNCONFIRMED_MARK
            unconfirmed = True
        lag = "-" if record.lag is None else str(record.lag)
        print(f"{record.address:<{width}}{role:<13}{record.term:>6}{record.commit_index:>10}"
              f"{lag:>7}  {record.leader or '-'}")
    if unconfirmed:
        print(f"{UNCONFIRMED_MARK} leads in Raft, but no majority has confirmed it within 0.2 s: "
              f"it serves no client until one does")


def nodes(options: argparse.Namespace) -> int:
    from uds.wire.enums import NodeRole
    from uds.client.node_view import print_facts_table, print_history
    if options.history is not None:
        with _connect(options) as connection:
            print_history(connection.node_history(options.history))
        return 0
    with _connect(options) as connection:
        _print_masters(connection.masters())
        print()
        listed = connection.nodes()
        # One column says how a worker runs chunks (its sandbox, in full: an
        # unconfined worker must read as such) or whether a balancer is active.
        shown = {node["node"]: _sandbox_or_lease(node) for node in listed}
        width = max([len("sandbox")] + [len(text) for text in shown.values()]) + 2
        print(f"{'node':<34}{'role':<14}{'state':<7}{'host':<16}{'slots':>6}{'free':>6}{'running':>8}"
              f"{'cpus':>6}{'memory':>11}{'disk':>11}  {'sandbox':<{width}}address")
        for node in listed:
            worker = node["role"] == NodeRole.WORKER
            offered = (f"{node['millicpus'] / 1000:>6g}{size_text(node['memory_bytes']):>11}"
                       f"{size_text(node['disk_bytes']):>11}" if worker else f"{'-':>6}{'-':>11}{'-':>11}")
            offered += f"  {shown[node['node']]:<{width}}"
            print(f"{node['node'].hex():<34}{NodeRole(node['role']).name.lower():<14}{node['state']:<7}"
                  f"{node['host'][:15]:<16}{node['slots']:>6}{node['free_slots']:>6}{node['running']:>8}"
                  f"{offered}{node['address']}")
        print()
        print_facts_table(listed, options.long)
        from uds.client.storage_view import print_reachability, print_storage_table
        print()
        print_storage_table(listed)
        print_reachability(connection.storage.node_stats())
    return 0


def dashboard(options: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted (client/dashboard/, doc/dashboard.md)."""
    from uds.client.api import find_cluster_file
    from uds.client.dashboard.__main__ import run
    return run(find_cluster_file(options.cluster), options.listen, options.admin_token_file)


def admin_gc(options: argparse.Namespace) -> int:
    """One collection pass on every storage node now, or what it would delete."""
    from uds.client.storage_view import print_gc
    with _connect(options) as connection:
        failed = print_gc(connection.storage.gc_run(options.dry_run), options.dry_run)
    return EXIT_FAILED if failed else 0


def events(options: argparse.Namespace) -> int:
    """The event log, or what of it --job, --node and --kind pick; with
    --follow, then each event as it commits (held queries, no polling); with
    --follow and --job, until the job's final event."""
    from uds.client.events import JOB_FINAL_KINDS, PAGE_EVENTS, Event
    with _connect(options) as connection:
        if options.follow:
            listed = connection.follow(job=options.job, node=options.node, kinds=options.kind or (),
                                       after=options.after)
            for event in listed:
                print(event, flush=True)
                if options.job and event.kind in JOB_FINAL_KINDS:
                    return 0
            return 0
        after = options.after
        while True:
            page = connection.events(after=after, limit=PAGE_EVENTS, job=options.job, node=options.node,
                                     kinds=options.kind or ())
            if page.gap is not None:
                print(Event.gap(*page.gap, time.time()), flush=True)
            for event in page.events:
                print(event, flush=True)
            if page.through_seq <= after or page.through_seq >= page.last_seq:
                return 0
            after = page.through_seq


def admin_masters(options: argparse.Namespace) -> int:
    """Add a master to the Raft group, or remove one; prints the group after."""
    add = options.masters_action == "add"
    with _connect(options) as connection:
        changed = connection.change_masters(add, options.address)
    print(f"{'added' if add else 'removed'} {changed.raft}; committed at index {changed.commit_index}")
    print(f"members: {', '.join(changed.members)}")
    return 0


# -- parser ---------------------------------------------------------------------

class CommandParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line, like every other error of
    `uds`, pointing at the help instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        print(f"uds: {command + ': ' if command else ''}{message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="uds", description="uds: distributed job execution")
    parser.add_argument("--cluster", metavar="FILE",
                        help="cluster file (default: $UDS_CLUSTER, else the dev cluster's)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    sub = command("dev", dev, "run a one-machine cluster (masters, load balancers, storage, workers)")
    sub.add_argument("--workers", type=int, default=2, help="number of workers (default 2)")
    sub.add_argument("--slots", type=int, default=2, help="chunks each worker runs at once (default 2)")
    sub.add_argument("--masters", default="1", metavar="N",
                     help="masters, the members of the Raft group: 1, 3 or 5 (default 1)")
    sub.add_argument("--loadbalancers", type=int, default=1,
                     help="load balancers; one is active at a time by its lease (default 1)")
    sub.add_argument("--dir", default=str(pathlib.Path.home() / ".uds" / "dev"),
                     help="folder for keys, data and logs (default ~/.uds/dev)")
    sub.add_argument("--cpus", help="cpus each worker offers, e.g. 2 (default: the machine's)")
    sub.add_argument("--memory", help="memory each worker offers, e.g. 4G (default: the machine's)")
    sub.add_argument("--disk", help="disk each worker offers, e.g. 20G (default: the free space)")
    sub.add_argument("--storage", type=int, default=1, metavar="N", help="storage nodes (default 1)")
    sub.add_argument("--replicas", type=int, metavar="R",
                     help="copies of each file, [storage_policy] replicas (default: 2, at most --storage)")
    sub.add_argument("--unsafe-no-sandbox", action="store_true",
                     help="workers run programs unconfined, as themselves (see doc/worker.md)")
    sub.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    sub.add_argument("--dashboard-port", type=int, default=8265, metavar="PORT",
                     help="the dashboard's port on 127.0.0.1 (default 8265, another if taken; 0: any free one)")
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true", help="start in the background, return when ready")
    mode.add_argument("--stop", action="store_true", help="stop the dev cluster in --dir")

    keys = commands.add_parser("keys", help="manage cluster keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_commands.add_parser("init", help="write a key pair for each role and the Raft password")
    init.add_argument("dir", help="folder to create (must not hold keys yet)")
    init.set_defaults(run=keys_init)
    export = keys_commands.add_parser("export", help="write the key folder one host of a role holds")
    export.add_argument("--role", required=True, choices=[role_name(role) for role in NodeRole])
    export.add_argument("--keys", default="keys", metavar="DIR",
                        help="the folder `uds keys init` wrote (default ./keys)")
    export.add_argument("dir", help="folder to create (must not hold keys yet)")
    export.set_defaults(run=keys_export)

    admin = commands.add_parser("admin", help="change the cluster itself")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="WHAT")
    masters = admin_commands.add_parser("masters", help="add a master to the Raft group or remove one",
                                        description="add a master to the Raft group or remove one; "
                                                    "see doc/master.md, 'Replacing a master'")
    masters_actions = masters.add_subparsers(dest="masters_action", required=True, metavar="ACTION")
    for action, help in (("add", "add the master of a [[masters]] entry (start it first, empty data folder)"),
                         ("remove", "remove a master (a dead one, or one to retire)")):
        sub = masters_actions.add_parser(action, help=help, description=help)
        sub.add_argument("address", metavar="ADDRESS",
                         help="its Raft address (host:port) or its ZeroMQ address, as in its [[masters]] entry")
        sub.set_defaults(run=admin_masters)

    sub = command("put", put, "store files on R storage nodes; prints each file's id")
    sub.add_argument("paths", nargs="+", metavar="PATH")
    sub.add_argument("--pin", metavar="DURATION",
                     help="keep the files from collection this long even if no job uses them: 30s, 10m, 2h, 1d")

    gc = admin_commands.add_parser("gc", help="run a garbage collection pass on every storage node",
                                   description="run a garbage collection pass on every storage node now and "
                                               "print what each deleted; see doc/storage.md")
    gc.add_argument("--dry-run", action="store_true", help="only report what a pass would delete")
    gc.set_defaults(run=admin_gc)

    sub = command("get", get, "fetch a stored file")
    sub.add_argument("file_id", metavar="FILE_ID")
    sub.add_argument("-o", "--output", help="write to this file (default: standard output)")

    sub = command("submit", submit, "submit a job; prints its id. Options go anywhere; program "
                                    "arguments that start with '-' go after '--'.")
    sub.add_argument("program", help="executable file (a script with #! or a binary)")
    sub.add_argument("args", nargs="*", help="arguments for the program")
    sub.add_argument("--input", action="append", default=[], metavar="NAME=PATH|ID|JOB:OUTPUT[:CHUNK]",
                     help="an input every chunk sees as $UDS_INPUTS/NAME (repeatable): a file, a file id, "
                          "or output OUTPUT of job JOB (32 hex): of chunk CHUNK, of the same chunk "
                          "without CHUNK, of every chunk as NAME.0, NAME.1, ... with '*'")
    sub.add_argument("--chunk-input", action="append", default=[], metavar="CHUNK:NAME=PATH|ID|JOB:OUTPUT[:C]",
                     help="an input only chunk CHUNK sees (repeatable)")
    sub.add_argument("--after", action="append", default=[], metavar="JOB",
                     help="start only once job JOB has succeeded (repeatable)")
    sub.add_argument("--start-at", metavar="TIME",
                     help="start no earlier: an ISO 8601 time (2026-11-30T15:00, local unless it has "
                          "an offset or Z) or +DURATION from now (+90s, +10m, +2h, +1d)")
    sub.add_argument("--deadline", metavar="TIME",
                     help="fail what is unfinished at TIME (as --start-at) with 'deadline exceeded'")
    sub.add_argument("--hold", action="store_true", help="wait for `uds release JOB` before starting")
    sub.add_argument("--cache", action="store_true",
                     help="reuse the result of a chunk run before with the same program, args, inputs "
                          "and limits, and record this job's results for reuse")
    sub.add_argument("--retry-backoff", type=float, default=0.0, metavar="SECONDS",
                     help="pause before retrying a chunk whose program failed (default 0)")
    sub.add_argument("--chunks", type=int, default=1, help="number of chunks (default 1)")
    sub.add_argument("--timeout", type=float, default=3600.0, help="per-chunk timeout in seconds")
    sub.add_argument("--retries", type=int, default=0, help="retries of a failing chunk (default 0)")
    sub.add_argument("--name", help="a name for the job (default: the program's file name)")
    sub.add_argument("--wait", action="store_true", help="wait for the job, showing progress")
    sub.add_argument("--memory", metavar="SIZE", help="memory each chunk may use, e.g. 512M")
    sub.add_argument("--cpus", metavar="N", help="cpus each chunk may use, e.g. 1.5")
    sub.add_argument("--disk", metavar="SIZE", help="disk each chunk may fill (work, output, /tmp), e.g. 2G")
    sub.add_argument("--pids", metavar="N",
                     help="processes and threads a chunk may run at once, e.g. 256")
    sub.add_argument("--cpu-time", metavar="TIME", help="cpu time each chunk may use, e.g. 90s or 10m")
    sub.add_argument("--network", action="store_true", help="let the chunks reach the network (default: not)")

    sub = command("status", status, "show a job's state and per-chunk results")
    sub.add_argument("job", metavar="JOB")
    sub.add_argument("--chunk", type=int, metavar="I", help="show chunk I with every attempt it kept")
    sub.add_argument("--wait", action="store_true", help="wait until it finishes")

    sub = command("logs", logs, "print a chunk's captured output")
    sub.add_argument("job", metavar="JOB")
    sub.add_argument("--chunk", type=int, default=0, help="chunk index (default 0)")
    sub.add_argument("--attempt", type=int, metavar="K",
                     help="that attempt's output (default: the chunk's current or final attempt)")
    sub.add_argument("--stream", choices=("stdout", "stderr", "both"), default="both")

    sub = command("cancel", cancel, "cancel a job and kill its running chunks")
    sub.add_argument("job", metavar="JOB")

    sub = command("release", release, "let a job submitted with --hold go on")
    sub.add_argument("job", metavar="JOB")

    sub = command("dashboard", dashboard, "serve the cluster's web dashboard until interrupted")
    sub.add_argument("--listen", default="127.0.0.1:8265", metavar="HOST:PORT",
                     help="where to serve (default 127.0.0.1:8265); an address other than loopback needs "
                          "the admin token")
    sub.add_argument("--admin-token-file", metavar="FILE",
                     help="the admin token (default: the cluster's, from the client key folder)")

    sub = command("nodes", nodes, "list the cluster's nodes, or one node's history")
    sub.add_argument("--long", action="store_true", help="every address of each node, not only its first")
    sub.add_argument("--history", metavar="NODE",
                     help="the node's record and its events, oldest first (NODE: its id, an id prefix or "
                          "its host name)")

    sub = command("jobs", jobs, "list jobs, newest first, those past retention too")
    sub.add_argument("--state", action="append", metavar="STATE",
                     help="only jobs in this state (repeatable, or comma-separated): held, waiting, queued, "
                          "running, succeeded, failed, cancelled")
    sub.add_argument("--since", metavar="TIME",
                     help="only jobs submitted since: a duration back from now (30m, 2h, 1d), an ISO 8601 "
                          "time (local unless it has an offset or Z) or unix seconds")
    sub.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")

    sub = command("events", events, "print the cluster's event log")
    sub.add_argument("--after", type=int, default=0, help="start after this sequence number")
    sub.add_argument("--job", metavar="JOB", help="only this job's events")
    sub.add_argument("--node", metavar="NODE", help="only events naming this node (its id)")
    sub.add_argument("--kind", metavar="KIND", action="append",
                     help="only events of this kind (repeat for more): job_submitted, chunk_started, ...")
    sub.add_argument("--follow", action="store_true",
                     help="keep printing events as they commit (with --job: until the job ends)")
    return parser


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is the program's, even words that look like options.
    program_words: list[str] = []
    if "--" in words:
        program_words = words[words.index("--") + 1:]
        words = words[:words.index("--")]
    parser = build_parser()
    options = parser.parse_args(words)
    if program_words:
        if options.command != "submit":
            parser.error("'--' only goes with submit, before the program's own options")
        options.args = [*options.args, *program_words]
    from uds.errors import ClientError
    try:
        return options.run(options)
    except (CommandError, ClientError) as fault:
        print(f"uds: {fault}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as fault:  # a bug or an unforeseen fault: still one line, unless asked
        if os.environ.get("UDS_DEBUG"):
            raise
        print(f"uds: unexpected {type(fault).__name__}: {fault} (set UDS_DEBUG=1 for details)",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
