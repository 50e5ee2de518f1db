"""Reading what a program left in its output folder without trusting it.

Rules: outputs are read only after every process of the attempt is gone,
so nothing can swap a file between a check and a read. Even so, no path is
followed: each folder is opened with O_DIRECTORY|O_NOFOLLOW relative to the
descriptor of its parent, each file with O_NOFOLLOW|O_NONBLOCK, and what
was opened is judged by fstat of that descriptor: a regular file with one
link, or a folder. Anything else (a symlink, a FIFO, a device, a socket, a
hard link) refuses the outputs with a reason naming the file. Readers of
the files use `open_output`, which walks the same way.
"""
from __future__ import annotations

import os
import stat
from typing import Iterator

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Deeper than this is refused: a walk must end.
MAX_DEPTH = 64


class OutputRefused(Exception):
    """An entry of the output folder that will not be read; the message names it."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _open_entry(name: str, parent: int, relative: str) -> tuple[int, os.stat_result]:
    """Open one entry under the folder descriptor `parent`, never following it."""
    try:
        descriptor = os.open(name, _FILE_FLAGS, dir_fd=parent)
    except OSError as fault:
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except OSError:
            mode = 0
        if mode and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise OutputRefused(f"output {relative!r} is {_kind(mode)}; only regular files are stored") from None
        raise OutputRefused(f"output {relative!r} cannot be opened: {fault.strerror}") from None
    return descriptor, os.fstat(descriptor)


def _check_file(relative: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise OutputRefused(f"output {relative!r} is {_kind(info.st_mode)}; only regular files are stored")
    if info.st_nlink != 1:
        raise OutputRefused(f"output {relative!r} is a hard link ({info.st_nlink} names); "
                            "only files with one name are stored")


def collect(output_dir: str) -> list[tuple[str, int]]:
    """(relative path, size) of every file under output_dir, sorted; raises
    OutputRefused for the first entry that is not a plain file or folder."""
    try:
        root = os.open(output_dir, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        return []
    try:
        return sorted(_walk(root, "", 0))
    finally:
        os.close(root)


def _walk(folder: int, prefix: str, depth: int) -> Iterator[tuple[str, int]]:
    if depth > MAX_DEPTH:
        raise OutputRefused(f"output folder {prefix!r} is nested deeper than {MAX_DEPTH} levels")
    for name in sorted(os.listdir(folder)):
        relative = prefix + name
        descriptor, info = _open_entry(name, folder, relative)
        try:
            if stat.S_ISDIR(info.st_mode):
                yield from _walk(descriptor, relative + "/", depth + 1)
            else:
                _check_file(relative, info)
                yield relative, info.st_size
        finally:
            os.close(descriptor)


def open_output(output_dir: str, relative: str) -> int:
    """A descriptor of the regular file `relative` under output_dir, reached
    without following any link; the caller closes it."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise OutputRefused(f"output {relative!r} is not a plain relative path")
    folder = os.open(output_dir, _DIRECTORY_FLAGS)
    try:
        for index, part in enumerate(parts[:-1]):
            inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
        descriptor, info = _open_entry(parts[-1], folder, relative)
    finally:
        os.close(folder)
    try:
        _check_file(relative, info)
    except OutputRefused:
        os.close(descriptor)
        raise
    return descriptor
