"""The sample format every dense data set follows, and the arguments they all check.

Images leave a data set as uint8 tensors (3, H, W); label maps use :data:`IGNORE_INDEX` for pixels
that do not count; every set has a ``train`` and a ``val`` split and may keep only its first
``num_samples`` images.
"""

from __future__ import annotations

import numpy as np
import torch

from visionssm.data import DataError

IGNORE_INDEX = 255
SPLITS = ("train", "val")


def check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"{name}: split expected 'train' or 'val', got {split!r}")


def check_num_samples(num_samples: int | None, name: str | None = None) -> int | None:
    """``num_samples`` as given when it is a positive int (or None); a DataError prefixed by ``name`` otherwise."""
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer))
                                    or num_samples < 1):
        raise DataError(f"{name + ': ' if name else ''}num_samples expected a positive int"
                        f"{'' if name else ' or None'}, got {num_samples!r}")
    return num_samples


def image_tensor(array: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) image array as a contiguous (3, H, W) tensor of the same dtype."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
