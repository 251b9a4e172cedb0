"""Checkpoint files: read without running pickled code, unwrap the state dict, load with a report.

One reader for every path that takes a weights file: the model families' ``load_pretrained``
(``pretrained_cfg_overlay=dict(file=...)``), ``visionssm train --resume`` / ``--pretrained-path``,
``visionssm eval`` / ``predict`` / ``export --checkpoint`` and the dense tasks. A model file keeps
only its ``checkpoint_filter_fn`` (renames and resampling), as timm's model files do.
"""

from __future__ import annotations

import argparse
import collections
import os

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "read_checkpoint", "state_dict_of", "load_state_dict_checked", "load_released",
           "classifier_classes"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class _ConfigAsDict:
    """Stand-in for yacs' ``CfgNode`` (the official VMamba trainer's ``config``) while unpickling.

    The weights-only unpickler only fills plain dict types, and ``__new__`` returning an
    OrderedDict (which accepts the CfgNode's attribute state) is the smallest way to get one.
    """

    def __new__(cls, *args):
        return collections.OrderedDict()


# besides tensors, containers and plain values: what the official training scripts store
_ALLOWED = [argparse.Namespace, (_ConfigAsDict, "yacs.config.CfgNode")]
ALLOWED_NAMES = "tensors, containers, plain values, argparse.Namespace, yacs CfgNode"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The object in a checkpoint file, loaded with ``torch.load(weights_only=True)`` and the allow-list.

    ``.safetensors`` files are read with safetensors. Every failure is a :class:`CheckpointError`
    that names the file and says what is wrong with it.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist" if not os.path.isdir(path) else
                              f"checkpoint {path!r} is a folder, expected a file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise CheckpointError(f"checkpoint {path!r} cannot be read as safetensors ({e})") from None
    try:
        with torch.serialization.safe_globals(_ALLOWED):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, a pickle of arbitrary objects
        text = str(e)
        if "unsupported global" in text.lower() or "not an allowed global" in text.lower():
            what = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln), "")
            raise CheckpointError(
                f"checkpoint {path!r} holds Python objects outside the safe allow-list ({ALLOWED_NAMES})"
                + (f": {what}" if what else "") + "; refusing to unpickle them. If the file is trusted, "
                "re-save its weights with torch.save({'model': ckpt['model']}, new_path)") from None
        raise CheckpointError(
            f"checkpoint {path!r} cannot be read: it is truncated, corrupted or not a PyTorch checkpoint "
            f"({type(e).__name__}). Checkpoints of 'visionssm train' are written atomically, so best.pth "
            "beside it, or a copy of an earlier one, is whole") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path!r}: expected a dict (a state dict, or one under 'model'), "
                              f"got {type(ckpt).__name__}")
    return ckpt


def state_dict_of(ckpt: dict, use_ema: bool = False, path: str = "checkpoint") -> dict:
    """The model's state dict in a checkpoint: ``model_ema`` when asked for, else ``model``, else
    ``module`` (DeepSpeed's), else ``state_dict``, else the dict itself when it holds tensors; a
    ``module.`` prefix on every key (a model saved wrapped in DistributedDataParallel) is removed.

    ``model`` comes before ``model_ema`` unless asked: the official Vim and VMamba evaluations (and
    their published accuracies) use ``model``, and a training checkpoint's ``model`` is what it trained.
    """
    if use_ema:
        if not isinstance(ckpt.get("model_ema"), dict):
            raise CheckpointError(f"{path} holds no EMA weights ('model_ema'; trained without --model-ema?)")
        return ckpt["model_ema"]
    found = next((ckpt[key] for key in ("model", "module", "state_dict") if isinstance(ckpt.get(key), dict)),
                 ckpt if any(isinstance(v, torch.Tensor) for v in ckpt.values()) else None)
    if found is not None:
        if found and all(k.startswith("module.") for k in found):
            found = {k[len("module."):]: v for k, v in found.items()}
        return found
    raise CheckpointError(f"{path}: expected a state dict, or one under 'model' or 'state_dict'; "
                          f"found keys {sorted(ckpt)[:8]}")


def _some(keys: list, n: int = 5) -> str:
    return f"{len(keys)} ({', '.join(map(str, keys[:n]))}{', ...' if len(keys) > n else ''})"


def load_state_dict_checked(model: nn.Module, state_dict: dict, path: str = "checkpoint",
                            ignore_missing: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` that refuses a checkpoint that does not fit, naming a few keys and the counts.

    Keys of the model that start with one of ``ignore_missing`` may be absent (a new head).
    """
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs the model's {tuple(own[k].shape)}" for k, v in state_dict.items()
              if k in own and hasattr(v, "shape") and own[k].shape != v.shape]
    missing = [k for k in own if k not in state_dict and not k.startswith(ignore_missing)]
    unexpected = [k for k in state_dict if k not in own]
    if shapes or missing or unexpected:
        parts = [f"{name} {_some(keys)}" for name, keys in
                 (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)) if keys]
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: " + "; ".join(parts)
                              + ". Is it a checkpoint of another model or configuration?")
    model.load_state_dict(state_dict, strict=False)


def classifier_classes(state_dict: dict, classifier: str) -> int | None:
    """The number of classes of the head ``classifier`` (a module name, e.g. 'head') in a state
    dict, None when it has no such head."""
    w = state_dict.get(f"{classifier}.weight", state_dict.get(f"module.{classifier}.weight"))
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() >= 1 else None


def load_released(model: nn.Module, state_dict: dict, path: str, first_conv: str, classifier: str) -> None:
    """Load a (filtered) released state dict into ``model``, adapted as timm's pretrained loading does.

    The first conv ``first_conv`` is adapted to the model's input channels; the head ``classifier``
    is left out when its shape differs (a model built for another number of classes: fine-tuning
    starts from a new head); any other difference is a :class:`CheckpointError` naming a few keys.
    """
    from timm.models._manipulate import adapt_input_conv

    own = model.state_dict()
    conv = f"{first_conv}.weight"
    if conv in state_dict and conv in own and state_dict[conv].shape[1] != own[conv].shape[1]:
        state_dict[conv] = adapt_input_conv(own[conv].shape[1], state_dict[conv], base_chans=state_dict[conv].shape[1])
    head = [k for k in (f"{classifier}.weight", f"{classifier}.bias")
            if k in state_dict and (k not in own or own[k].shape != state_dict[k].shape)]
    for k in head:
        del state_dict[k]
    load_state_dict_checked(model, state_dict, path, ignore_missing=(f"{classifier}.",) if head else ())
