"""The ``visionssm`` command: finds the task for a sub-command and hands it the rest of the line.

Each command names a task function ``fn(argv) -> int | None`` that parses its own arguments, so
``visionssm <command> --help`` shows that task's options.
"""

from __future__ import annotations

import importlib
import os
import sys

# command -> ("module:function" taking argv, one-line help); a bare module means its main
COMMANDS = {
    "bench": ("visionssm.bench", "benchmarks: models vs resolution (default), 'scan' (the selective-scan backends)"),
    "erf": ("visionssm.analysis.erf", "effective-receptive-field pictures of models, side by side"),
    "models": ("visionssm.cli:models_main", "list this library's models"),
    "export": ("visionssm.export", "a model to ONNX (onnxruntime) or torch.export .pt2, verified"),
    "train": ("visionssm.train", "train a classifier (any timm model), or --task segmentation|detection"),
    "eval": ("visionssm.train:evaluate_main", "top-1 / mIoU / box and mask AP of a checkpoint, at any resolution"),
    "shapes": ("visionssm.dense.data:shapes_main", "write the generated shapes set as COCO JSON and mask folders"),
    "predict": ("visionssm.train:predict_main", "the top classes of some images"),
}


def models_main(argv):
    import argparse

    import visionssm

    p = argparse.ArgumentParser(prog="visionssm models", description="List this library's models.")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'vim*'")
    args = p.parse_args(argv)
    print("\n".join(visionssm.list_models(args.pattern)))
    return 0


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: visionssm <command> [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"visionssm: unknown command {command!r}; expected one of {sorted(COMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    module, _, function = COMMANDS[command][0].partition(":")
    return getattr(importlib.import_module(module), function or "main")(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
