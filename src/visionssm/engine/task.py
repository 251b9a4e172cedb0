"""The task contract of the training loop, and the data plumbing every task shares.

A task is the one class a person writes to train something new with ``visionssm train``: it builds
the model and the data sets and knows the loss and the metrics; the loop in
:mod:`visionssm.engine.loop` does the rest (devices, DDP, AMP, EMA, checkpoints, exact resume,
logging) and :func:`visionssm.engine.evaluate.evaluate_main` evaluates its checkpoints.
Register it in :data:`TASKS` as ``"module:Class"``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import itertools
import sys
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.utils.data import DistributedSampler

# --task name -> "module:Class"; imported when asked for, so the engine never imports a task
TASKS = {
    "classification": "visionssm.classification:ClassificationTask",
    "segmentation": "visionssm.dense.tasks:SegmentationTask",
    "detection": "visionssm.dense.tasks:DetectionTask",
    "video": "visionssm.video_task:VideoTask",
}
# the extra a task needs beyond the base install, and the modules it brings
TASK_EXTRAS = {"segmentation": ("dense", ("torchmetrics", "pycocotools")),
               "detection": ("dense", ("torchmetrics", "pycocotools"))}  # video: only files need PyAV (video.py says)


class Task(Protocol):
    """What the loop needs of a task. ``Task(args, progress=False, train=True)`` builds it from the
    ``visionssm train`` flags; with ``train=False`` (evaluation) it builds no training set.

    Attributes:
        model: the ``nn.Module`` to train, built from one seed (the loop moves and wraps it).
        classes: the class names (stored in checkpoints; ``eval`` refuses data with others).
        data_config: what evaluation needs to rebuild the input pipeline (at least ``img_size``).
        train_set, val_set: datasets; ``train_collate`` / ``val_collate`` their collate functions (None: default).
        score: the key of :meth:`evaluate`'s result that picks ``best.pth`` (higher is better).
        fields: the keys of :meth:`evaluate`'s result logged every epoch.
        eval_batch_size: the batch size of ``visionssm eval`` when ``-b`` is not given (one that fits:
            a detector sends every image's proposals through its RoI heads at once).
        sample_units: optional, what the logs call the data sets' items and their rate
            (default ``("images", "img/s")``; video: clips).
    """

    model: nn.Module
    classes: list[str]
    data_config: dict
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    train_collate: Callable | None
    val_collate: Callable | None
    score: str
    fields: list[str]
    eval_batch_size: int

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        """(loss, samples in the batch) of one batch, under the caller's autocast."""

    def evaluate(self, model: nn.Module, loader, device: torch.device, autocast) -> dict:
        """The metrics over the whole validation loader, summed across ranks (every rank returns them)."""

    def describe(self, metrics: dict) -> str:
        """One line of the metrics for the log."""


def sample_units(task) -> tuple[str, str]:
    """(plural, rate unit) of the task's items for the logs: images unless the task says otherwise."""
    return getattr(task, "sample_units", ("images", "img/s"))


def task_class(name: str) -> type:
    """The class registered for ``--task name``, with a clear message when its extras are missing."""
    if name not in TASKS:
        raise ValueError(f"--task: expected one of {sorted(TASKS)}, got {name!r}")
    extra, modules = TASK_EXTRAS.get(name, ("", ()))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"--task {name}: needs {' and '.join(missing)}; pip install 'visionssm[{extra}]'")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_task(args: argparse.Namespace, progress: bool = False, train: bool = True) -> Task:
    return task_class(args.task)(args, progress=progress, train=train)


class TransformedDataset(torch.utils.data.Dataset):
    """(image, label) samples with ``transform`` applied to the image, or with ``joint`` to the pair
    (segmentation: the mask is cropped and flipped with its image)."""

    def __init__(self, ds, transform, joint: bool = False):
        self.ds, self.transform, self.joint = ds, transform, joint

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        image, label = self.ds[i]
        return self.transform(image, label) if self.joint else (self.transform(image), label)


class ResumableSampler(DistributedSampler):
    """The distributed sampler (one shard per rank, reshuffled per epoch), able to start part-way in."""

    skip = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self):
        return super().__len__() - self.skip


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: rank r takes samples r, r + world, ...; no padding, so every image counts once."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = range(rank, n, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)



def autocast_for(device, enabled: bool, dtype_name: str | None):
    if not enabled:
        return contextlib.nullcontext, None
    if device.type == "cpu":
        if dtype_name == "float16":
            print("visionssm train: --amp-dtype float16 is not supported on the CPU; using bfloat16", file=sys.stderr)
        dtype = torch.bfloat16
    else:
        dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux: process peak RSS
