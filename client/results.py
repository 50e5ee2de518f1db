"""What a chunk attempt's result shows a client, shared by `ChunkStatus`
(client/jobs.py) and `Attempt` (client/attempts.py): its files as hex ids
and what it used."""
from __future__ import annotations

from uds.wire.records import ChunkResult
from uds.wire.resources import Usage


class ResultFields:
    """Read-only views of `self.result`, a ChunkResult."""

    __slots__ = ()
    result: ChunkResult

    @property
    def exit_code(self) -> int | None:
        return self.result.exit_code

    @property
    def error(self) -> str:
        return self.result.error

    @property
    def usage(self) -> Usage:
        """What the attempt used: cpu time, peak memory, bytes read (from the
        cache, from storage) and stored, wall time; 0: not measured."""
        return self.result.usage

    @property
    def outputs(self) -> dict[str, str]:
        """Its outputs: name under $UDS_OUTPUT -> hex file id."""
        return {name: ref[0].hex() for name, ref in self.result.outputs.items()}

    @property
    def stdout(self) -> str | None:
        """Hex file id of its captured stdout; None if there was none."""
        return self.result.stdout[0].hex() if self.result.stdout else None

    @property
    def stderr(self) -> str | None:
        return self.result.stderr[0].hex() if self.result.stderr else None
