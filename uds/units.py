"""Quantities as people read them, for messages, tables and progress bars."""
from __future__ import annotations


def size_text(count: float) -> str:
    """Bytes in binary units: "512 B", "1.5 MiB", "3.2 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
