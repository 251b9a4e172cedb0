"""Effective receptive field pictures, as in the VMamba paper (Fig. 7; the method of RepLKNet).

For each image: run the backbone, take the last feature map's centre position, ReLU it and sum
over channels; the gradient of that scalar with respect to the input, ReLU'd and summed over the
colour channels, is the image's map. Maps are averaged over the images (an image whose gradient
has a NaN is skipped) and shown as a heat map of ``(map / max) ** 0.2``. Works for any model that
timm can build (this library's and timm's), at random initialisation or from a checkpoint.

    visionssm erf [--models M ...] [--checkpoint PATH|- ...] [--images DIR] [--size 1024]
                  [--num-images 8] [--out erf.png]

It writes the PNG grid (one panel per model, side by side) and ``<out>.npz`` with the raw maps,
and prints each map's high-contribution area ratios (RepLKNet's: the side of the smallest centred
square that holds t of the total, squared, over the image area; larger = a wider field).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from visionssm.engine import models as engine

DEFAULT_MODELS = ["resnet50", "convnext_tiny", "deit_small_patch16_224", "vim_tiny_patch16_224", "vmamba_tiny_s1l8"]
# photographs that scikit-image ships inside its wheel (read from its data folder: nothing is downloaded)
SAMPLE_FILES = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                "hubble_deep_field.jpg", "ihc.png", "retina.jpg"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
AREA_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def sample_image_paths() -> list[Path]:
    """The sample photographs of scikit-image (an optional dependency: ``pip install 'visionssm[plot]'``)."""
    try:
        import skimage.data
    except ImportError:
        raise RuntimeError("--images: no folder given and scikit-image, whose sample photographs are the "
                           "default images, is not installed; pip install 'visionssm[plot]' (or scikit-image), "
                           "or pass --images DIR") from None
    folder = Path(skimage.data.data_dir)
    paths = [folder / name for name in SAMPLE_FILES if (folder / name).is_file()]
    if not paths:
        raise RuntimeError(f"--images: scikit-image's data folder {folder} has none of {SAMPLE_FILES}; "
                           "pass --images DIR")
    return paths


def image_paths(folder: str | None) -> list[Path]:
    if folder is None:
        return sample_image_paths()
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--images: expected a folder of images, got {folder!r} (not a directory)")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"--images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder!r}")
    return paths


def load_images(paths, size: int, mean, std) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic), centre-crop to size x size, normalise: (N, 3, size, size)."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as img:
            img = img.convert("RGB")
            img = TF.center_crop(TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC), [size, size])
            out.append(TF.normalize(TF.to_tensor(img), mean, std))
    return torch.stack(out)


def create_model(name: str, size: int, checkpoint: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The model at ``size`` (where it takes an img_size) and its data config (``mean``, ``std``):
    random, or rebuilt from ``checkpoint`` with that file's own head and normalisation (a run of
    ``visionssm train`` as it was trained, any other weights file with as many classes as its head)."""
    if checkpoint is None:
        model = engine.create_model(name, img_size=size)
        return model, dict(model.pretrained_cfg)
    if not Path(checkpoint).is_file():
        raise ValueError(f"--checkpoint: no such file {checkpoint!r}")
    model, info = engine.model_from_checkpoint(checkpoint, name, img_size=size)
    return model, info["data_config"]


def last_feature_map(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map as (batch, C, h, w)."""
    try:
        return model.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
    except (AttributeError, NotImplementedError, TypeError):
        pass
    feat = model.forward_features(x)
    if feat.dim() == 4:
        return feat.permute(0, 3, 1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else feat
    if feat.dim() == 3:  # tokens: drop the prefix (class) tokens, fold the rest into the patch grid
        tokens = feat[:, getattr(model, "num_prefix_tokens", 0):]
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if grid is None or grid[0] * grid[1] != tokens.shape[1]:
            side = math.isqrt(tokens.shape[1])
            grid = (side, tokens.shape[1] // side)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
    raise ValueError(f"model: expected a feature map (4-D) or tokens (3-D) from forward_features, "
                     f"got shape {tuple(feat.shape)}")


def erf_map(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1) -> tuple[np.ndarray, int]:
    """The mean effective receptive field (H, W) over ``images`` and how many images it used."""
    model.eval()
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    used = 0
    for chunk in images.split(batch_size):
        x = chunk.clone().requires_grad_(True)
        feat = last_feature_map(model, x)
        h, w = feat.shape[-2:]
        centre = torch.relu(feat[:, :, h // 2, w // 2]).sum()
        (grad,) = torch.autograd.grad(centre, x)
        grad = torch.relu(grad).sum(1).double()  # (batch, H, W)
        for g in grad:  # per image: one with a NaN is skipped, as in the official code
            if torch.isfinite(g).all():
                total += g
                used += 1
    if used == 0:
        raise RuntimeError("erf: every image gave a non-finite gradient")
    return (total / used).numpy(), used


def normalise(erf: np.ndarray, power: float = 0.2) -> np.ndarray:
    """``(erf / max) ** power`` in [0, 1] (the VMamba/RepLKNet display)."""
    m = erf.max()
    return (erf / m) ** power if m > 0 else np.zeros_like(erf)


def area_ratio(erf: np.ndarray, t: float) -> float:
    """RepLKNet's high-contribution area ratio: the smallest centred square holding ``t`` of the
    total contribution, as a fraction of the image area."""
    h, w = erf.shape
    total = erf.sum()
    if total <= 0:
        return float("nan")
    cy, cx = h // 2, w // 2
    for r in range(1, max(h, w) // 2 + 2):
        box = erf[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r]
        if box.sum() >= t * total:
            return box.size / erf.size
    return 1.0


def plot_grid(maps: list[np.ndarray], titles: list[str], path: Path, panel_px: int = 320, cols: int | None = None,
              power: float = 0.2) -> Path:
    """A PNG grid, one heat map per model: cols * panel_px wide, rows * (panel_px + 40) high."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("visionssm erf draws with matplotlib, which is not installed: "
                           "pip install 'visionssm[plot]' (or matplotlib)") from None
    cols = cols or len(maps)
    rows = math.ceil(len(maps) / cols)
    dpi, title_px = 100, 40
    cell_h = panel_px + title_px
    fig = plt.figure(figsize=(cols * panel_px / dpi, rows * cell_h / dpi), dpi=dpi)
    for i, (m, title) in enumerate(zip(maps, titles)):
        r, c = divmod(i, cols)
        pad = 4
        ax = fig.add_axes([(c * panel_px + pad) / (cols * panel_px), (rows - 1 - r) * cell_h / (rows * cell_h)
                           + pad / (rows * cell_h), (panel_px - 2 * pad) / (cols * panel_px),
                           (panel_px - 2 * pad) / (rows * cell_h)])
        ax.imshow(normalise(m, power), cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="visionssm erf", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                   help="any models timm can build (default: %(default)s)")
    p.add_argument("--checkpoint", nargs="+", metavar="PATH|-",
                   help="one per model: a weights file, or - for random initialisation (default: all random)")
    p.add_argument("--images", help="folder of images (default: scikit-image's sample photographs)")
    p.add_argument("--num-images", type=int, default=8, help="at most this many images (default: %(default)s)")
    p.add_argument("--size", type=int, default=1024, help="input size, square (default: %(default)s, the paper's)")
    p.add_argument("--batch-size", type=int, default=1, help="images per backward pass (default: %(default)s)")
    p.add_argument("--power", type=float, default=0.2, help="display exponent (default: %(default)s)")
    p.add_argument("--cols", type=int, help="panels per row (default: all in one row)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of each random initialisation (default: %(default)s)")
    p.add_argument("--out", default="bench-out/erf.png", help="PNG to write (default: %(default)s)")
    args = p.parse_args(argv)

    import timm

    checkpoints = args.checkpoint or ["-"] * len(args.models)
    if len(checkpoints) != len(args.models):
        p.error(f"--checkpoint: expected one per model ({len(args.models)}, '-' for random), got {len(checkpoints)}")
    unknown = [m for m in args.models if not timm.is_model(m)]
    if unknown:
        p.error(f"--models: unknown model(s) {unknown}; see `timm.list_models()` and `visionssm models`")
    for name, value in (("--num-images", args.num_images), ("--size", args.size), ("--batch-size", args.batch_size)):
        if value < 1:
            p.error(f"{name}: expected >= 1, got {value}")
    try:
        paths = image_paths(args.images)[:args.num_images]
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")

    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed (pip install 'visionssm[plot]'): the maps will be saved as .npz, "
              "without the PNG", file=sys.stderr)
    print(f"{len(paths)} images at {args.size}x{args.size}: {', '.join(q.name for q in paths)}")
    maps, titles, arrays = [], [], {}
    for name, ckpt in zip(args.models, checkpoints):
        ckpt = None if ckpt in ("-", "none", "") else ckpt
        start = time.perf_counter()
        torch.manual_seed(args.seed)  # the same random model whenever it is drawn
        try:
            model, cfg = create_model(name, args.size, ckpt)
        except ValueError as e:  # CheckpointError included: a file that does not fit the model
            p.error(str(e))
        model = model.to(device)
        images = load_images(paths, args.size, cfg.get("mean", (0.485, 0.456, 0.406)),
                             cfg.get("std", (0.229, 0.224, 0.225))).to(device)
        erf, used = erf_map(model, images, args.batch_size)
        label = "random init" if ckpt is None else "/".join(Path(ckpt).parts[-2:])  # run folder/file
        ratios = ", ".join(f"{t:g}: {area_ratio(erf, t):.3f}" for t in AREA_THRESHOLDS)
        print(f"{name} ({label}): {used} images in {time.perf_counter() - start:.1f} s; area ratio {ratios}")
        maps.append(erf)
        titles.append(f"{name}\n{label}")
        arrays[f"{len(arrays)}_{name}"] = erf
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out.with_suffix(".npz"), **arrays)
    try:
        plot_grid(maps, titles, out, cols=args.cols, power=args.power)
    except RuntimeError as e:  # matplotlib missing: the maps are saved all the same
        print(f"visionssm erf: {e}; wrote only {out.with_suffix('.npz')}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {out.with_suffix('.npz')}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
