"""The joint transform of a segmentation sample: the image and its label map cropped, scaled and flipped together."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from visionssm.dense.samples import IGNORE_INDEX

__all__ = ["SegmentationTransform"]


class SegmentationTransform:
    """``(uint8 image (3, H, W), label mask (H, W)) -> (normalised float image, int64 mask)``, aligned.

    Training (mmseg's recipe, without photometric changes): rescale by a random factor ``f`` in
    ``scale`` so that the short side becomes ``crop_size * f`` (the long side at most four times
    that, keeping the aspect), take a random ``crop_size`` square (padding the bottom and right
    with 0 in the image and 255 in the mask where the image is smaller), flip horizontally with
    probability ``hflip``. Evaluation: resize the short side to ``resize_short`` if given (keeping
    the aspect), nothing else. Images are resized bilinearly (antialiased), masks by nearest
    neighbour on the same pixel centres. Random draws use torch's generator (seeded per worker).
    """

    def __init__(self, train: bool, crop_size: int, scale: tuple[float, float] = (0.5, 2.0), hflip: float = 0.5,
                 mean: tuple = IMAGENET_DEFAULT_MEAN, std: tuple = IMAGENET_DEFAULT_STD,
                 resize_short: int | None = None):
        if not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"SegmentationTransform: crop_size expected a positive int, got {crop_size!r}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"SegmentationTransform: scale expected (low, high) with 0 < low <= high, got {scale!r}")
        self.train, self.crop_size, self.scale, self.hflip = train, crop_size, tuple(scale), hflip
        self.mean, self.std, self.resize_short = list(mean), list(std), resize_short

    def __repr__(self) -> str:
        return (f"SegmentationTransform(train={self.train}, crop_size={self.crop_size}, scale={self.scale}, "
                f"hflip={self.hflip}, resize_short={self.resize_short})")

    @staticmethod
    def _resize(image: torch.Tensor, mask: torch.Tensor, h: int, w: int):
        if (h, w) == tuple(image.shape[-2:]):
            return image, mask
        image = TF.resize(image, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        mask = TF.resize(mask[None], [h, w], interpolation=TF.InterpolationMode.NEAREST_EXACT)[0]
        return image, mask

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or mask.shape != image.shape[1:]:
            raise ValueError(f"SegmentationTransform: expected an image (3, H, W) and a mask (H, W), got "
                             f"{tuple(image.shape)} and {tuple(mask.shape)}")
        mask = mask.to(torch.int64)
        h, w = image.shape[-2:]
        if self.train:
            lo, hi = self.scale
            target = self.crop_size * (lo + (hi - lo) * torch.rand(()).item())
            s = min(target / min(h, w), 4 * target / max(h, w))
            image, mask = self._resize(image, mask, max(1, round(h * s)), max(1, round(w * s)))
            h, w = image.shape[-2:]
            c = self.crop_size
            if h < c or w < c:  # pad right and bottom
                pad = [0, 0, max(0, c - w), max(0, c - h)]
                image, mask = TF.pad(image, pad, fill=0), TF.pad(mask[None], pad, fill=IGNORE_INDEX)[0]
                h, w = image.shape[-2:]
            top = int(torch.randint(h - c + 1, ()).item())
            left = int(torch.randint(w - c + 1, ()).item())
            image, mask = image[:, top:top + c, left:left + c], mask[top:top + c, left:left + c]
            if torch.rand(()).item() < self.hflip:
                image, mask = image.flip(-1), mask.flip(-1)
        elif self.resize_short:
            s = self.resize_short / min(h, w)
            image, mask = self._resize(image, mask, max(1, round(h * s)), max(1, round(w * s)))
        image = TF.to_dtype(image, torch.float32, scale=True)
        image = TF.normalize(image, self.mean, self.std)
        return image.contiguous(), mask.contiguous()
