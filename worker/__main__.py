"""python -m worker: the worker daemon."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description="uds worker daemon")
    parser.add_argument("--cluster", metavar="FILE", help="cluster file (TOML)")
    parser.parse_args(argv)
    print("the worker daemon is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
