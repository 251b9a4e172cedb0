"""One model factory for every command, one syntax for model keyword arguments, and models
rebuilt from checkpoints with their own head.

``--model-kwargs embed_dim=64 depth=4 depths=[1,1,2,1]`` is the syntax everywhere (values are
Python literals; a bare word is a string; a single JSON object is accepted too).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json

import timm
import torch.nn as nn

import visionssm  # noqa: F401  (registers the models with timm)
from visionssm.models.checkpoint import (
    CheckpointError,
    classifier_classes,
    load_state_dict_checked,
    read_checkpoint,
    state_dict_of,
)


def parse_model_kwargs(items: list[str] | str, flag: str = "--model-kwargs") -> dict:
    """``['embed_dim=64', 'depths=[1,1,2,1]']`` (or one JSON object) -> a dict; ValueError names ``flag``."""
    if isinstance(items, str):
        items = [items]
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            kwargs = json.loads(items[0])
        except json.JSONDecodeError as e:
            raise ValueError(f"{flag}: expected KEY=VALUE items or a JSON object, got {items[0]!r} ({e})") from None
        if isinstance(kwargs, dict):
            return kwargs
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag}: expected KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare string
    return kwargs


class ModelKwargs(argparse.Action):
    """argparse action for ``--model-kwargs KEY=VALUE ...`` (see :func:`parse_model_kwargs`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_model_kwargs(values, option_string))
        except ValueError as e:
            parser.error(str(e))


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"--model: unknown model {name!r}" + (f"; did you mean one of {close}?" if close else "")
                         + " ('visionssm models' lists this library's, timm.list_models() all)")


def create_model(name: str, num_classes: int | None = None, img_size: int | None = None,
                 model_kwargs: dict | None = None, drop: float | None = None, drop_path: float | None = None,
                 pretrained_path: str | None = None, optional: dict | None = None) -> nn.Module:
    """``timm.create_model`` with a clear error for an unknown name or unfitting kwargs.

    ``img_size`` and the entries of ``optional`` (e.g. ``dynamic_img_size``) are passed to the
    models that take them and left out for the others (CNNs and VMamba take any input size);
    ``pretrained_path`` loads a weights file through the model's pretrained loader (head adapted
    when ``num_classes`` differs from the file's).
    """
    check_model_name(name)
    kwargs = dict(model_kwargs or {})
    for key, value in (("num_classes", num_classes), ("drop_rate", drop), ("drop_path_rate", drop_path)):
        if value is not None:
            kwargs[key] = value
    if pretrained_path:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_path)))
    optional = dict(optional or {})
    if img_size is not None and "img_size" not in kwargs:
        optional["img_size"] = img_size
    optional = {k: v for k, v in optional.items() if k not in kwargs}
    while True:
        try:
            return timm.create_model(name, **optional, **kwargs)
        except TypeError as e:  # a keyword the model does not take
            refused = [k for k in optional if f"'{k}'" in str(e)]
            if refused:
                for k in refused:
                    optional.pop(k)
                continue
            given = sorted(k for k in kwargs if f"'{k}'" in str(e)) or sorted(model_kwargs or {})
            raise ValueError(f"--model-kwargs: {name} does not take {given} ({e})") from None


def model_from_checkpoint(path: str, name: str | None = None, model_kwargs: dict | None = None,
                          use_ema: bool = False, img_size: int | None = None) -> tuple[nn.Module, dict]:
    """The model a checkpoint holds, with its trained head, in eval mode (at ``img_size`` when given);
    and what is known of it.

    A checkpoint of ``visionssm train`` is rebuilt exactly (model, kwargs, classes, data config).
    Any other file (an official release, a timm state dict) needs ``name``; the model is built with
    as many classes as the file's head has, so the trained head is used, never replaced.
    The second value is ``dict(classes=..., data_config=... or None, config=... or None, ckpt=...)``.
    """
    ckpt = read_checkpoint(path)
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    if cfg is not None and "model" in cfg:  # ours
        name = name or cfg["model"]
        kwargs = {**(cfg.get("model_kwargs") or {}), **(model_kwargs or {})}
        classes = list(ckpt["classes"])
        check_model_name(name)
        try:
            frames = cfg.get("num_frames")  # video runs: the temporal embedding's length
            model = create_model(name, len(classes), ckpt["data_config"]["img_size"], kwargs,
                                 optional=dict(num_frames=frames) if frames else None)
        except ValueError as e:
            raise CheckpointError(f"{path}: its model kwargs {kwargs} do not fit --model {name} ({e})") from None
        load_state_dict_checked(model, state_dict_of(ckpt, use_ema, path), path)
        dcfg = dict(ckpt["data_config"])
        if img_size and img_size != dcfg["img_size"]:
            if hasattr(model, "set_input_size"):  # Vim / ViT: resample the position embeddings
                model.set_input_size(img_size=img_size)
            dcfg["img_size"] = img_size
        return model.eval(), dict(classes=classes, data_config=dcfg, config=cfg, ckpt=ckpt)
    if not name:
        raise ValueError(f"--model: required for {path}, which was not written by 'visionssm train'")
    check_model_name(name)
    if use_ema:
        raise ValueError(f"--use-ema: only for checkpoints of 'visionssm train'; {path} is loaded as released")
    head = getattr(timm.models.get_pretrained_cfg(name), "classifier", None) or "head"
    sd = state_dict_of(ckpt, path=path)
    n = classifier_classes(sd, head)
    if n is None and "." in head:  # legacy key layouts name the head by its last part
        n = classifier_classes(sd, head.rsplit(".", 1)[1])
    kwargs = dict(model_kwargs or {})
    if n is None and "num_classes" not in kwargs:
        raise CheckpointError(f"{path} holds no classifier weights ('{head}.weight'); to use it without a head, "
                              "pass --model-kwargs num_classes=0")
    if n is not None and kwargs.setdefault("num_classes", n) != n:
        raise CheckpointError(f"--model-kwargs num_classes={kwargs['num_classes']}: the head in {path} has "
                              f"{n} classes; a different number would replace the trained head by a random one")
    model = create_model(name, img_size=img_size, model_kwargs=kwargs, pretrained_path=path)
    pcfg = model.pretrained_cfg
    dcfg = dict(img_size=img_size or pcfg["input_size"][-1], mean=pcfg["mean"], std=pcfg["std"],
                interpolation=pcfg["interpolation"], crop_pct=pcfg["crop_pct"])
    classes = [str(i) for i in range(model.num_classes)]
    return model.eval(), dict(classes=classes, data_config=dcfg, config=None, ckpt=ckpt)
