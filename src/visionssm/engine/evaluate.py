"""``visionssm eval``: one evaluation path for every task, the one the training loop uses.

The task is rebuilt from the checkpoint's own configuration (``train=False``: no training set),
the weights are loaded into it, and ``task.evaluate`` runs over the validation split, sharded
across ranks under torchrun. A file as released (no configuration) is evaluated as a classifier
built with its own head (by the video task when the model is a video model).
"""

from __future__ import annotations

import argparse
import json
import time

import torch.distributed as dist
from torch.utils.data import DataLoader

from visionssm.data import DataError
from visionssm.engine.distributed import init_distributed
from visionssm.engine.models import model_from_checkpoint
from visionssm.engine.task import ShardSampler, Task, autocast_for, peak_memory_mb, sample_units, task_class
from visionssm.models.checkpoint import CheckpointError, load_state_dict_checked, read_checkpoint, state_dict_of


def evaluate_checkpoint(args: argparse.Namespace, train_defaults: dict) -> dict:
    """Evaluate ``args.checkpoint`` as the ``visionssm eval`` flags say; print and return the metrics.

    ``train_defaults`` are the defaults of the ``visionssm train`` flags, for settings a checkpoint
    does not record.
    """
    rank, world, device = init_distributed(args.device)
    try:
        task, where = eval_task(args, train_defaults)
        task.model.to(device).eval()
        autocast, _ = autocast_for(device, args.amp, args.amp_dtype)
        batch_size = args.batch_size or getattr(task, "eval_batch_size", 1)
        loader = DataLoader(task.val_set, batch_size=batch_size, num_workers=args.workers,
                            sampler=ShardSampler(len(task.val_set), rank, world), collate_fn=task.val_collate)
        t0 = time.time()
        res = task.evaluate(task.model, loader, device, autocast)
        res.update(count=len(task.val_set), img_size=task.data_config["img_size"],
                   images_per_s=len(task.val_set) / max(time.time() - t0, 1e-9), peak_memory_mb=peak_memory_mb(device))
        if rank == 0:
            items, rate = sample_units(task)
            print(f"{args.checkpoint} on {where} ({res['count']} {items}, {res['img_size']} px): "
                  f"{task.describe(res)}, {res['images_per_s']:.1f} {rate}")
            print(json.dumps(res))
        return res
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def eval_task(args: argparse.Namespace, train_defaults: dict) -> tuple[Task, str]:
    """(the task with the checkpoint's weights, 'data/split')."""
    ckpt = read_checkpoint(args.checkpoint)
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    if cfg is None:
        return _released_file_task(args, train_defaults)
    targs = argparse.Namespace(**{**train_defaults, **cfg})
    same_data = args.data in (None, cfg.get("data"))
    targs.data = args.data or cfg.get("data")
    targs.seed = cfg.get("seed", args.seed) if same_data else args.seed  # pathfinder draws by seed
    targs.val_split, targs.val_num_samples, targs.pretrained_path = args.split, args.num_samples, None
    targs.model = args.model or cfg["model"]
    targs.model_kwargs = {**(cfg.get("model_kwargs") or {}), **(args.model_kwargs or {})}
    targs.eval_mode = args.eval_mode or targs.eval_mode
    targs.eval_stride = args.eval_stride or targs.eval_stride
    targs.test_clips = args.test_clips or targs.test_clips
    targs.test_crops = args.test_crops or targs.test_crops
    trained_size = ckpt["data_config"]["img_size"]
    if args.img_size:
        targs.img_size = targs.crop_size = targs.min_size = args.img_size
    try:
        task = task_class(targs.task)(targs, train=False)
    except ValueError as e:
        if "--model-kwargs" not in str(e):
            raise
        raise CheckpointError(f"{args.checkpoint}: its model kwargs {targs.model_kwargs} do not fit --model "
                              f"{targs.model} ({e})") from None
    if list(task.classes) != list(ckpt["classes"]):
        raise DataError(f"--data: the classes of {targs.data} {_few(task.classes)} are not the checkpoint's "
                        f"{_few(ckpt['classes'])}")
    _load_at(task.model, state_dict_of(ckpt, args.use_ema, args.checkpoint), args.checkpoint, trained_size,
             task.data_config["img_size"])
    return task, f"{targs.data}/{args.split}"


def _released_file_task(args: argparse.Namespace, train_defaults: dict) -> tuple[Task, str]:
    """A classifier as released (official Vim/VMamba/VideoMamba, timm): its own head, the model's input
    settings; a video model (one with ``num_frames``) is evaluated by the video task, on clips of its length."""
    if not args.data:
        raise ValueError(f"--data: required for {args.checkpoint}, which does not name its data")
    model, info = model_from_checkpoint(args.checkpoint, args.model, args.model_kwargs, args.use_ema, args.img_size)
    dcfg, video = info["data_config"], getattr(model, "num_frames", None) is not None
    targs = argparse.Namespace(**train_defaults)
    targs.task = "video" if video else "classification"
    targs.model, targs.data, targs.seed = args.model, args.data, args.seed
    targs.val_split, targs.val_num_samples = args.split, args.num_samples
    targs.img_size = dcfg["img_size"]
    if video:
        targs.num_frames, targs.test_clips, targs.test_crops = model.num_frames, args.test_clips, args.test_crops
        targs.mean, targs.std = dcfg["mean"], dcfg["std"]
    task = task_class(targs.task)(targs, train=False, model=model)
    if len(task.classes) != len(info["classes"]):
        raise DataError(f"--data: {args.data} has {len(task.classes)} classes, the checkpoint's head "
                        f"{len(info['classes'])}")
    return task, f"{args.data}/{args.split}"


def _load_at(model, state_dict: dict, path: str, trained_size: int, size: int) -> None:
    """Load weights trained at ``trained_size`` into a model built for ``size`` (Vim/ViT resample their
    position embeddings when set back to ``size``)."""
    if size != trained_size and hasattr(model, "set_input_size"):
        model.set_input_size(img_size=trained_size)
        load_state_dict_checked(model, state_dict, path)
        model.set_input_size(img_size=size)
    else:
        load_state_dict_checked(model, state_dict, path)


def _few(names, n: int = 6) -> str:
    names = list(names)
    return str(names[:n])[:-1] + (", ...]" if len(names) > n else "]")

