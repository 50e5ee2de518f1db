"""What `uds nodes` and `uds admin gc` print about the storage nodes.

The table comes from the masters' NODE records of role storage and their
figures (doc/storage.md lists them); a figure a node does not report prints
as "-". Under it, each storage node's own answer: reachable or not.
"""
from __future__ import annotations

from typing import Any, Sequence

from uds.units import size_text
from uds.wire.enums import NodeRole

# (heading, figure name, as a size?) in the order printed.
COLUMNS = (("used", "used_bytes", True), ("free", "free_bytes", True), ("blobs", "blob_count", False),
           ("repair pending", "repair_pending", False), ("repaired", "repaired_files", False),
           ("corrupt", "corrupt_blobs", False))


def storage_records(nodes: Sequence[dict]) -> list[dict]:
    return [node for node in nodes if node["role"] == NodeRole.STORAGE]


def print_storage_table(nodes: Sequence[dict], say: Any = print) -> None:
    """One line per storage node the masters know."""
    records = storage_records(nodes)
    if not records:
        say("storage: the masters list no storage node (the cluster file's [[storage]] entries are used)")
        return
    width = max(len("storage"), *(len(node["address"]) for node in records)) + 4
    say(f"{'storage':<{width}}{'state':<7}" + "".join(f"{heading:>16}" for heading, _, _ in COLUMNS))
    # Rows are indented: a line that starts with an address is a master's.
    for node in sorted(records, key=lambda record: record["address"]):
        figures = node.get("figures", {})
        cells = [("-" if name not in figures else size_text(figures[name]) if is_size else str(figures[name]))
                 for _, name, is_size in COLUMNS]
        say(f"  {node['address']:<{width - 2}}{node['state']:<7}" + "".join(f"{cell:>16}" for cell in cells))


def print_reachability(answers: Sequence[tuple[str, Any]], say: Any = print) -> None:
    """Each storage node's own answer to a stats query."""
    from uds.storage.client import StorageError
    for address, answer in answers:
        if isinstance(answer, StorageError):
            say(f"storage at {address}: unreachable ({answer})")
        else:
            say(f"storage at {address}: reachable, {answer.get('bytes_served', 0)} bytes served")


def print_gc(answers: Sequence[tuple[str, Any]], dry_run: bool, say: Any = print) -> int:
    """Per node, what a collection pass deleted (or would); the total. The
    number of nodes that did not answer."""
    from uds.storage.client import StorageError
    verb = "would delete" if dry_run else "deleted"
    files = total = failed = 0
    for address, answer in answers:
        if isinstance(answer, StorageError):
            say(f"{address}: no collection ({answer})")
            failed += 1
            continue
        say(f"{address}: {verb} {len(answer.files)} of {answer.blobs_examined} blobs, {size_text(answer.bytes)}")
        for file_id, size in answer.files:
            say(f"  {file_id.hex()}  {size_text(size)}")
        files += len(answer.files)
        total += answer.bytes
    say(f"total: {verb} {files} blobs, {size_text(total)}" + (f"; {failed} nodes did not answer" if failed else ""))
    return failed
