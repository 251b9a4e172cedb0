"""Benchmarks: ``visionssm bench scan`` times the selective-scan backends."""

from __future__ import annotations

import importlib
import sys

# target -> module with main(argv)
TARGETS = {"scan": "visionssm.bench.scan"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in TARGETS:
        got = repr(argv[0]) if argv else "nothing"
        print(f"visionssm bench: expected a target, one of {sorted(TARGETS)}, got {got}", file=sys.stderr)
        return 2
    return importlib.import_module(TARGETS[argv[0]]).main(argv[1:])
