"""A byte rate that background work keeps to: repair pulls and the scrub
each own one, so that jobs keep the disk and the network.

Pure: `now` comes in, the caller sleeps for what `spent` answers.
"""
from __future__ import annotations


class Pacer:
    """Bytes at no more than `bytes_per_s` on average, with no burst beyond
    one piece: after each piece the caller waits until the piece's share of
    the time has passed."""

    def __init__(self, bytes_per_s: float) -> None:
        if bytes_per_s <= 0:
            raise ValueError(f"a pace needs a positive rate, got {bytes_per_s}")
        self.bytes_per_s = float(bytes_per_s)
        self._free_at: float | None = None   # when the bytes spent so far are paid for

    def spent(self, nbytes: int, now: float) -> float:
        """`nbytes` were just moved; how long to wait (s) before the next piece."""
        start = now if self._free_at is None or self._free_at < now else self._free_at
        self._free_at = start + nbytes / self.bytes_per_s
        return self._free_at - now
