"""Processes and randomness: ranks and devices under torchrun/SLURM, collectives that are no-ops in one
process, the RNG states a checkpoint carries, and a digest that shows the ranks agree."""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


def init_distributed(device_arg: str | None):
    """(rank, world_size, device). torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; SLURM's variables are mapped."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {kind!r} asked for, but CUDA is not available")
    device = torch.device(f"cuda:{local_rank}") if kind == "cuda" else torch.device(kind)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_object(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --- RNG states ----------------------------------------------------------------------------------------


def get_rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)



def param_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole global batch, for CPU processes
    (gloo); ``torch.nn.SyncBatchNorm`` runs on accelerators only.

    The per-channel sums, sums of squares and counts are all-reduced with the differentiable
    ``torch.distributed.nn`` collective, so the backward is exact as well. In eval mode, or in one
    process, it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"input: expected at least 2 dimensions (batch, channels, ...), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        c, dims = x.shape[1], [0, *range(2, x.dim())]
        count = x.new_full((1,), x.numel() / c)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / max(n.item() - 1, 1), m)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``--sync-bn``: BatchNorm layers computing their statistics over the global batch of all ranks
    (``torch.nn.SyncBatchNorm`` on accelerators, :class:`CPUSyncBatchNorm` on CPUs)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, CPUSyncBatchNorm):
        sync = CPUSyncBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                                model.track_running_stats)
        sync.load_state_dict(model.state_dict())
        return sync.to(next(iter(model.state_dict().values()), torch.empty(0)).device).train(model.training)
    for name, child in model.named_children():
        model.add_module(name, convert_sync_batchnorm(child, device))
    return model
