"""The ``visionssm`` command: finds the task for a sub-command and hands it the rest of the line.

Each command names a task function ``fn(argv) -> int | None`` that parses its own arguments, so
``visionssm <command> --help`` shows that task's options.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

# command -> ("module:function" taking argv, one-line help); a bare module means its main
COMMANDS = {
    "bench": ("visionssm.bench", "benchmarks: models vs resolution (default), 'video' (vs frames), 'scan', ..."),
    "erf": ("visionssm.analysis.erf", "effective-receptive-field pictures of models, side by side"),
    "models": ("visionssm.cli:models_main", "list this library's models"),
    "export": ("visionssm.export", "a model to ONNX (onnxruntime) or torch.export .pt2, verified"),
    "train": ("visionssm.train", "train a classifier (any timm model), or --task segmentation|detection"),
    "eval": ("visionssm.train:evaluate_main", "top-1 / mIoU / box and mask AP of a checkpoint, at any resolution"),
    "shapes": ("visionssm.dense.data:shapes_main", "write the generated shapes set as COCO JSON and mask folders"),
    "predict": ("visionssm.train:predict_main", "the top classes of some images (videos: a video model)"),
    "plot": ("visionssm.analysis.curves", "the training curves of a run folder, as a PNG"),
}


def models_main(argv):
    import visionssm

    p = argparse.ArgumentParser(prog="visionssm models", description="List this library's models.")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'vim*'")
    args = p.parse_args(argv)
    print("\n".join(visionssm.list_models(args.pattern)))
    return 0


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return ("usage: visionssm [--debug] <command> [options]\n\ncommands:\n" + "\n".join(lines)
            + "\n\n--debug (or VISIONSSM_DEBUG=1): show the traceback of an error")


def user_error(e: BaseException) -> bool:
    """An error of the user's input (a flag, a file, the data, a missing extra), not of the library."""
    if isinstance(e, ImportError):
        return "pip install" in str(e)
    return isinstance(e, (ValueError, FileNotFoundError, FloatingPointError))


@contextlib.contextmanager
def one_line_usage_errors():
    """While a command runs, a bad flag is one line and status 2: argparse would print the whole usage
    before it (``--help`` still shows the usage)."""
    original = argparse.ArgumentParser.error

    def error(parser, message):
        parser.exit(2, f"{parser.prog}: error: {' '.join(message.split())}\n")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user error prints one line and exits with status 2 (``--debug`` first, or
    VISIONSSM_DEBUG=1, shows the traceback)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("VISIONSSM_DEBUG", "") not in ("", "0")
    if argv[:1] == ["--debug"]:
        argv, debug = argv[1:], True
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"visionssm: unknown command {command!r}; expected one of {sorted(COMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    module, _, function = COMMANDS[command][0].partition(":")
    try:
        with one_line_usage_errors():
            return getattr(importlib.import_module(module), function or "main")(rest) or 0
    except Exception as e:
        if debug or not user_error(e):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"visionssm {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
