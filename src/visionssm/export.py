"""``visionssm export``: a Vim or VMamba model to ONNX (onnxruntime) or a ``torch.export`` program, verified.

    visionssm export --model vim_tiny_patch16_224 --checkpoint vim_t_midclstok_76p1acc.pth \\
        --format onnx --input-size 3 224 224 --out vim_t.onnx [--dynamic] [--opset 20] [--no-verify]

The ONNX file is standard ONNX: the selective scan is translated to ``Scan`` loops by
:mod:`visionssm.ops.scan_onnx` (no custom operator), so any onnxruntime build runs it. After
writing, the command runs the file (onnxruntime's CPU provider for ONNX, the loaded ``.pt2`` for
``--format pt2``) and PyTorch eager on two random images and one real photograph (matplotlib's
sample image when installed, else a synthetic one), and fails unless every logit agrees within
``max |exported - eager| <= 1e-4 * max(1, max |eager|)``.

``--dynamic`` makes the batch size dynamic (checked with a batch of 2 when verifying). Height and
width stay fixed: Vim resamples its position embeddings and both models pad odd sizes with
Python branches on the input size, which ``torch.export`` specialises. Export one file per
resolution instead.

Python use: :func:`export_onnx`, :func:`export_pt2` and :func:`verify` take any model of this
library (tests use tiny configurations).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from visionssm.engine.models import ModelKwargs

INSTALL_HINT = "pip install 'visionssm[export]'"
MIN_OPSET = 18  # the dynamo exporter's own opset; lower needs a lossy version conversion
REL_TOLERANCE = 1e-4
FORMATS = ("onnx", "pt2")


class ExportError(ValueError):
    """A bad option or an unsupported setup, with a message for the user."""


def max_opset() -> int:
    from torch.onnx._constants import ONNX_MAX_OPSET

    return ONNX_MAX_OPSET


def require_onnx(runtime: bool = True) -> None:
    """Raise ExportError naming the missing packages and how to install them."""
    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if runtime else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)} (not installed); install them with "
                          f"{INSTALL_HINT}")


def check_opset(opset: int) -> int:
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise ExportError(f"--opset: expected an ONNX opset from {MIN_OPSET} to {top} (torch "
                          f"{torch.__version__}'s exporter), got {opset}")
    return opset


def min_input_size(model: torch.nn.Module) -> tuple[int, int]:
    """The smallest (height, width) the model accepts: one patch for Vim, one pixel for VMamba."""
    pe = getattr(model, "patch_embed", None)
    patch = getattr(pe, "patch_size", None)
    if isinstance(patch, tuple) and len(patch) == 2:
        return patch
    return 1, 1


def check_input_size(model: torch.nn.Module, size: tuple[int, int, int]) -> tuple[int, int, int]:
    chans, height, width = size
    want = getattr(model, "in_chans", 3)
    if chans != want:
        raise ExportError(f"--input-size: expected {want} channels (C H W with C={want}), got C={chans}")
    mh, mw = min_input_size(model)
    if height < mh or width < mw:
        raise ExportError(f"--input-size: expected height >= {mh} and width >= {mw} for this model, "
                          f"got {height}x{width}")
    return size


def create(name: str, checkpoint: str | None = None, **kwargs) -> torch.nn.Module:
    """A model of this library in eval mode; with a checkpoint, the model it holds, its own head included
    (a file as released, or a checkpoint of 'visionssm train' rebuilt with its saved kwargs)."""
    import visionssm
    from visionssm.engine.models import create_model, model_from_checkpoint

    known = visionssm.list_models()
    if name not in known:
        raise ExportError(f"--model: expected one of {known}, got {name!r}")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise ExportError(f"--checkpoint: expected an existing file, got {checkpoint!r}")
        return model_from_checkpoint(str(checkpoint), name, kwargs)[0]
    return create_model(name, model_kwargs=kwargs).eval()


def _dynamic_shapes(dynamic: bool):
    if not dynamic:
        return None
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


def export_pt2(model: torch.nn.Module, x: torch.Tensor, out: str | os.PathLike | None = None,
               dynamic: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export(model, (x,))`` (the scan stays one node), saved to ``out`` if given."""
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (x,), dynamic_shapes=_dynamic_shapes(dynamic))
    if out is not None:
        torch.export.save(ep, str(out))
    return ep


def export_onnx(model: torch.nn.Module, x: torch.Tensor, out: str | os.PathLike, opset: int = 20,
                dynamic: bool = False) -> None:
    """Write ``model`` as a standard ONNX file (one file, weights inside) with input 'image', output 'logits'."""
    require_onnx(runtime=False)
    check_opset(opset)
    from visionssm.ops import scan_onnx

    scan_onnx.register()
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():  # no gradient outputs of the scan op in the graph
        program = torch.onnx.export(
            model.eval(), (x,), dynamo=True, opset_version=opset, dynamic_shapes=_dynamic_shapes(dynamic),
            input_names=["image"], output_names=["logits"], verbose=False, optimize=True)
    proto = program.model_proto
    tmp = out.with_name(out.name + ".tmp")
    # weights inside the file below protobuf's 2 GB limit, beside it above
    large = proto.ByteSize() > 1_900_000_000
    onnx.save_model(proto, str(tmp), save_as_external_data=large,
                    location=out.name + ".data" if large else None)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------
# verification


def real_image(model: torch.nn.Module, height: int, width: int) -> tuple[torch.Tensor, str]:
    """A photograph resized and normalised as the model expects; a synthetic scene without matplotlib."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)))[:, None, None]
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)))[:, None, None]
    img, what = None, "a synthetic scene"
    try:
        import matplotlib.cbook
        from PIL import Image

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        with Image.open(path) as im:
            im = im.convert("RGB").resize((width, height), Image.BICUBIC)
            img = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(height, width, 3)
        img = img.permute(2, 0, 1).float() / 255
        what = "matplotlib's grace_hopper.jpg"
    except Exception:  # matplotlib or Pillow missing: smooth gradients, a disc and stripes
        yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
        disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.08).float()
        img = torch.stack([0.3 + 0.5 * xx * (1 - disc), 0.2 + 0.6 * yy, 0.5 + 0.4 * torch.sin(20 * xx) * disc])
    chans = getattr(model, "in_chans", 3)
    img = ((img - mean) / std)[:chans] if chans <= 3 else img.mean(0, keepdim=True).expand(chans, -1, -1)
    return img.unsqueeze(0), what


def verification_inputs(model: torch.nn.Module, size: tuple[int, int, int], dynamic: bool,
                        seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    chans, height, width = size
    g = torch.Generator().manual_seed(seed)
    cases = [("random", torch.randn(1, chans, height, width, generator=g))]
    if dynamic:
        cases.append(("random, batch 2", torch.randn(2, chans, height, width, generator=g)))
    else:
        cases.append(("random (2nd)", torch.randn(1, chans, height, width, generator=g)))
    img, what = real_image(model, height, width)
    cases.append((what, img))
    return cases


def max_diff(got, want: torch.Tensor) -> tuple[float, float]:
    """(max |got - want|, the allowed difference 1e-4 * max(1, max |want|))."""
    got = torch.as_tensor(got).float()
    return (got - want).abs().max().item(), REL_TOLERANCE * max(1.0, want.abs().max().item())


def verify(model: torch.nn.Module, path: str | os.PathLike, fmt: str, size: tuple[int, int, int],
           dynamic: bool = False, threads: int | None = None) -> list[tuple[str, float, float]]:
    """Run the exported file and eager PyTorch on random and real images: [(input, diff, allowed)]."""
    if fmt == "onnx":
        require_onnx(runtime=True)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x):
            return sess.run(None, {name: x.numpy()})[0]
    else:
        program = torch.export.load(str(path)).module()

        def run(x):
            with torch.no_grad():
                return program(x)
    rows = []
    for what, x in verification_inputs(model, size, dynamic):
        with torch.no_grad():
            want = model(x).float()
        rows.append((what, *max_diff(run(x), want)))
    return rows


# ---------------------------------------------------------------------------------------------
# the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionssm export", description=(
        "Export a Vim or VMamba model to ONNX (standard operators, runs in onnxruntime) or to a "
        "torch.export .pt2 program, then check it against PyTorch."))
    p.add_argument("--model", required=True, help="a registered name, see 'visionssm models'")
    p.add_argument("--checkpoint", help="a checkpoint file as released (official or visionssm)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"),
                   help="input size; default: the model's (3 224 224)")
    p.add_argument("--out", required=True, help="the file to write (.onnx or .pt2)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch size (height and width stay fixed)")
    p.add_argument("--opset", type=int, default=20, help=f"ONNX opset, {MIN_OPSET} or above (default 20)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ModelKwargs, metavar="KEY=VALUE",
                   help="extra model arguments, e.g. embed_dim=64 depth=4 (a JSON object is accepted too)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads when verifying")
    return p


def run(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        require_onnx(runtime=not args.no_verify)
        check_opset(args.opset)
    model = create(args.model, args.checkpoint, **args.model_kwargs)
    size = tuple(args.input_size) if args.input_size else tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    check_input_size(model, size)
    # a dynamic batch is traced with 2: torch.export specialises a size-1 dimension to the constant 1
    x = torch.randn(2 if args.dynamic else 1, *size, generator=torch.Generator().manual_seed(0))

    t0 = time.perf_counter()
    if args.format == "onnx":
        export_onnx(model, x, args.out, opset=args.opset, dynamic=args.dynamic)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        export_pt2(model, x, args.out, dynamic=args.dynamic)
    print(f"wrote {args.out} ({args.format}, {args.model}, input {'N' if args.dynamic else 1}x"
          f"{'x'.join(map(str, size))}) in {time.perf_counter() - t0:.1f} s")
    if args.no_verify:
        return 0
    rows = verify(model, args.out, args.format, size, args.dynamic, args.threads)
    engine = "onnxruntime (CPU)" if args.format == "onnx" else "torch.export program"
    ok = True
    for what, diff, allowed in rows:
        good = diff <= allowed
        ok &= good
        print(f"  {engine} vs PyTorch eager, {what}: max |diff| {diff:.2e} (allowed {allowed:.1e}) "
              f"{'ok' if good else 'FAILED'}")
    if not ok:
        print(f"visionssm export: {args.out} does not reproduce PyTorch's logits", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return run(args)
    except ValueError as e:  # ExportError, CheckpointError, bad kwargs
        print(f"visionssm export: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
