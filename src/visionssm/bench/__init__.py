"""Benchmarks: ``visionssm bench`` (models vs resolution, the main job), ``visionssm bench scan``
(the selective-scan backends on CPU), ``scan-gpu`` (the Triton kernel), ``export`` (onnxruntime vs
eager vs torch.compile), ``train`` (the recorded digits/pathfinder training results), ``dense`` (segmentation memory vs
resolution, short segmentation/detection trainings on generated data), ``video`` (video models vs
number of frames; ``visionssm bench --video`` is the same)."""

from __future__ import annotations

import importlib
import sys

# target -> module with main(argv); no target (or options only) runs DEFAULT_TARGET
TARGETS = {
    "models": "visionssm.bench.models",
    "scan": "visionssm.bench.scan",
    "scan-gpu": "visionssm.bench.scan_gpu",
    "export": "visionssm.bench.export",
    "train": "visionssm.bench.train_results",
    "dense": "visionssm.bench.dense",
    "video": "visionssm.bench.video",
}
DEFAULT_TARGET = "models"
# a flag in place of a target: `visionssm bench --video ...` is `visionssm bench video ...`
ALIASES = {"--video": "video"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):  # the targets, then the default target's options
        print(f"visionssm bench [{'|'.join(TARGETS)}]: targets {', '.join(TARGETS)} (default: {DEFAULT_TARGET}); "
              f"`visionssm bench <target> --help` lists a target's options\n")
        argv = [DEFAULT_TARGET, *argv]
    alias = next((a for a in argv if a in ALIASES), None) if argv and argv[0].startswith("-") else None
    if alias is not None:
        argv = [ALIASES[alias], *(a for a in argv if a != alias)]
    if not argv or argv[0].startswith("-"):
        argv = [DEFAULT_TARGET, *argv]
    if argv[0] not in TARGETS:
        print(f"visionssm bench: expected a target, one of {sorted(TARGETS)} (or none for "
              f"{DEFAULT_TARGET!r}), got {argv[0]!r}", file=sys.stderr)
        return 2
    return importlib.import_module(TARGETS[argv[0]]).main(argv[1:])
