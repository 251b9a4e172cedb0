"""The ``visionssm`` command: parses the command line and hands over to a task."""

from __future__ import annotations

import argparse
import os
import sys

BENCHMARKS = {"scan": "visionssm.bench.scan"}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="visionssm", description="Vision state space models.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark", add_help=False)
    bench.add_argument("target", nargs="?", choices=sorted(BENCHMARKS), default="scan")
    sub.add_parser("models", help="list this library's models")
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        import importlib

        importlib.import_module(BENCHMARKS[args.target]).main(rest)
    elif args.command == "models":
        if rest:
            parser.error(f"models: unexpected arguments {rest}")
        import visionssm

        print("\n".join(visionssm.list_models()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
