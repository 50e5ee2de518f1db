"""python -m master: the master daemon."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m master", description="uds master daemon")
    parser.add_argument("--cluster", metavar="FILE", help="cluster file (TOML)")
    parser.parse_args(argv)
    print("the master daemon is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
