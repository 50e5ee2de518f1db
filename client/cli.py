"""The `uds` command. Every error prints one line and exits non-zero."""
from __future__ import annotations

import argparse
import sys

from wire.keys import KeyFolder, KeyFolderError


class CommandError(Exception):
    """A command that cannot be carried out; its message is shown as is."""


def keys_init(options: argparse.Namespace) -> int:
    try:
        folder = KeyFolder.create(options.dir)
    except KeyFolderError as fault:
        raise CommandError(str(fault)) from None
    print(f"wrote cluster keys to {folder.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uds", description="uds: distributed job execution")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="manage cluster keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_commands.add_parser("init", help="write a new cluster key folder")
    init.add_argument("dir", help="folder to create (must not hold keys yet)")
    init.set_defaults(run=keys_init)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        return options.run(options)
    except CommandError as fault:
        print(f"uds: {fault}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
