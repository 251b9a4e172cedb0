"""VMamba (Liu et al., "VMamba: Visual State Space Model", arXiv:2401.10166), for timm.

A hierarchical backbone: a patch embedding to stride 4, four stages of VSS blocks (SS2D with the
four-way cross-scan, optional MLP) with a downsampling layer at the end of stages 0-2, and a
classifier (LayerNorm, average pool, Linear). Two families are registered:

* the vanilla models of the paper's first version (``vmamba_vanilla_{tiny,small,base}``): no MLP,
  d_state 16, ssm_ratio 2, gated SS2D, conv with bias, patch embed v1, patch merging;
* the released later models (``vmamba_{tiny,small,base}_s{1,2}l*``): MLP ratio 4, d_state 1, no gate,
  conv without bias, a two-conv patch embed (v2) and a strided-conv downsample (v3).

State-dict keys and shapes are the official ones (``classification/models/vmamba.py``), so an
official checkpoint loads directly::

    model = timm.create_model("vmamba_tiny_s1l8", pretrained=True,
                              pretrained_cfg_overlay=dict(file="vssm1_tiny_0230s_ckpt_epoch_264.pth"))

``pretrained=True`` alone downloads the official release file (GitHub releases of
MzeroMiko/VMamba) into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``) the first time; a
local file loads offline with the overlay above. The file is read with
``torch.load(weights_only=True)``; the yacs ``CfgNode`` the official trainer stores under
``config`` is read as a plain dict, never executed. ``ckpt['model']`` is loaded (the weights the
official evaluation reports); add ``custom_load="model_ema"`` to the overlay for the EMA weights.
(``create_model(..., checkpoint_path=PATH)`` goes through timm's generic loader, which refuses
the yacs config; use the overlay above or ``model.load_pretrained(PATH)``.)

Layout: channels-last (B, H, W, C) inside, like the official v0 code and timm's MambaOut, so
``forward_features`` is NHWC (``output_fmt = "NHWC"``); ``forward_intermediates`` and
``features_only=True`` return NCHW maps at strides 4, 8, 16, 32.

Input sizes: any H x W >= 1. Every stage **pads, never crops**: the v1 patch embed and the
v1/v2 downsampling zero-pad the bottom/right edge to a multiple of their stride, and the
stride-2 3x3 convs (v2 patch embed, v3 downsampling) pad by 1, so stage i has
``ceil(H / 2**(i+2)) x ceil(W / 2**(i+2))`` positions. (The official v1 patch embed crops an
H or W that is not a multiple of 4; at multiples of 4, as every released resolution is, the two
agree exactly.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, register_notrace_module, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from visionssm.layers.scan_orders import resolve_scan_order
from visionssm.layers.ss2d import SS2D, VSSBlock, check_backend
from visionssm.models.checkpoint import load_released, read_checkpoint, state_dict_of

__all__ = ["VMamba", "checkpoint_filter_fn"]

# the scan loop cannot be traced symbolically: FX feature extraction keeps SS2D as a leaf
register_notrace_module(SS2D)


class Permute(nn.Module):
    """A module only so that Sequential indices (and so state-dict keys) match the official ones."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


# Shape-dependent helpers: FX keeps them as single nodes (torch.fx wraps only public names).
@register_notrace_function
def pad_to_multiple(x: torch.Tensor, multiple: int, channels_last: bool) -> torch.Tensor:
    """Zero-pad the bottom/right edge so H and W are multiples of ``multiple``."""
    H, W = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    ph, pw = -H % multiple, -W % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, 0, 0, pw, 0, ph) if channels_last else (0, pw, 0, ph))


class PatchEmbedV1(nn.Sequential):
    """Conv 4x4 stride 4 + LN (official keys ``patch_embed.0``, ``patch_embed.2``); NCHW in, NHWC out."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, device=None, dtype=None):
        super().__init__(
            nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, device=device, dtype=dtype),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(dim, device=device, dtype=dtype),
        )
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_to_multiple(x, self.patch_size, channels_last=False))


class PatchEmbedV2(nn.Sequential):
    """Conv 3x3/2 -> LN -> GELU -> Conv 3x3/2 -> LN (keys 0, 2, 5, 7); NCHW in, NHWC out."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        super().__init__(
            nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1, **dd),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(dim // 2, **dd),
            Permute(0, 3, 1, 2),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1, **dd),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(dim, **dd),
        )


class PatchMerging2D(nn.Module):
    """Downsample v1 (Swin): concat 2x2 neighbours -> LN(4C) -> Linear(4C, 2C); NHWC.

    The neighbours are concatenated in the official order (0,0), (1,0), (0,1), (1,1) as (dy, dx).
    """

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(4 * dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, 2, channels_last=True)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Sequential):
    """Downsample v2 (conv 2x2/2) or v3 (conv 3x3/2, pad 1), then LN; NHWC (keys 1, 3)."""

    def __init__(self, dim: int, out_dim: int, kernel_size: int, device=None, dtype=None):
        super().__init__(
            Permute(0, 3, 1, 2),
            nn.Conv2d(dim, out_dim, kernel_size=kernel_size, stride=2, padding=kernel_size // 2,
                      device=device, dtype=dtype),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(out_dim, device=device, dtype=dtype),
        )
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 2:
            x = pad_to_multiple(x, 2, channels_last=True)
        return super().forward(x)


def _make_downsample(version: str, dim: int, out_dim: int, device=None, dtype=None) -> nn.Module:
    if version == "v1":
        return PatchMerging2D(dim, out_dim, device=device, dtype=dtype)
    if version == "v2":
        return ConvDownsample(dim, out_dim, 2, device=device, dtype=dtype)
    return ConvDownsample(dim, out_dim, 3, device=device, dtype=dtype)


class VMambaStage(nn.Module):
    """The blocks of one resolution, then (stages 0-2) the downsampling to the next."""

    def __init__(self, dim: int, out_dim: int | None, depth: int, drop_path: Sequence[float],
                 downsample: str, block_kwargs: dict, device=None, dtype=None):
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            VSSBlock(dim, drop_path=drop_path[j], device=device, dtype=dtype, **block_kwargs)
            for j in range(depth)])
        self.downsample = (nn.Identity() if out_dim is None
                           else _make_downsample(downsample, dim, out_dim, device=device, dtype=dtype))

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.forward_blocks(x))


class VMambaHead(nn.Module):
    """LayerNorm -> global average pool -> dropout -> Linear (official keys ``classifier.norm/head``)."""

    def __init__(self, dim: int, num_classes: int, global_pool: str = "avg", drop_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.dim = dim  # kept: timm's feature extraction may replace norm and head with Identity
        self.global_pool = _check_pool(global_pool)
        self.norm = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.drop = nn.Dropout(drop_rate)
        self.head = (nn.Linear(dim, num_classes, device=device, dtype=dtype) if num_classes > 0
                     else nn.Identity())

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        w = next(self.parameters(), None)
        dd = dict(device=w.device, dtype=w.dtype) if w is not None else {}
        # the new head follows the model's device, dtype and train/eval mode
        self.head = (nn.Linear(self.dim, num_classes, **dd) if num_classes > 0 else nn.Identity()).train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x)  # NHWC
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        x = self.drop(x)
        return x if pre_logits else self.head(x)


def _check_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool: expected 'avg' or '' (no pooling), got {global_pool!r}")
    return global_pool


@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int) -> None:
    if isinstance(x, torch.fx.Proxy):  # traced without timm's list of wrapped functions: nothing to check
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != in_chans:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected an image batch of shape (batch, {in_chans}, height, width), got {got}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"x: expected height and width >= 1, got {tuple(x.shape)}")


class VMamba(nn.Module):
    """VMamba backbone + classifier (the official ``VSSM``), with the timm model API.

    Args:
        in_chans, num_classes, global_pool ('avg' or ''), drop_rate (before the classifier Linear),
        drop_path_rate (stochastic depth, linear over all blocks): as in timm.
        depths: blocks per stage. dims: the stage-0 width (doubled per stage) or one width per stage.
        ssm_d_state: N. ssm_ratio: d_inner / dim. ssm_dt_rank: "auto" = ceil(dim / 16) per stage.
        ssm_conv: depthwise conv kernel (< 2: no conv). ssm_conv_bias: its bias.
        ssm_gate: the z gate of v0 (False is the official ``_noz``).
        scan_order: any order of :mod:`visionssm.layers.scan_orders` ("cross" is VMamba's; K follows).
        mlp_ratio: MLP hidden ratio (0: no MLP, as in the vanilla models).
        patchembed_version: 'v1' (conv 4x4) or 'v2' (two 3x3 convs).
        downsample_version: 'v1' (patch merging), 'v2' (conv 2x2) or 'v3' (conv 3x3).
        scan_backend: selective-scan backend of every SS2D (see :func:`visionssm.selective_scan`).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            depths: Sequence[int] = (2, 2, 9, 2),
            dims: int | Sequence[int] = 96,
            ssm_d_state: int = 16,
            ssm_ratio: float = 2.0,
            ssm_dt_rank: int | str = "auto",
            ssm_conv: int = 3,
            ssm_conv_bias: bool = True,
            ssm_gate: bool = True,
            scan_order: str | Sequence[str] = "cross",
            mlp_ratio: float = 0.0,
            patchembed_version: str = "v1",
            downsample_version: str = "v1",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.1,
            scan_backend: str = "auto",
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        depths = list(depths)
        if not depths or any(not isinstance(d, int) or d < 0 for d in depths):
            raise ValueError(f"depths: expected a non-empty sequence of ints >= 0, got {depths!r}")
        dims = [int(dims * 2 ** i) for i in range(len(depths))] if isinstance(dims, int) else list(dims)
        if len(dims) != len(depths) or any(not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"dims: expected an int or {len(depths)} positive ints (one per stage), "
                             f"got {dims!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans: expected a positive int, got {in_chans!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes: expected an int >= 0, got {num_classes!r}")
        if patchembed_version not in ("v1", "v2"):
            raise ValueError(f"patchembed_version: expected 'v1' or 'v2', got {patchembed_version!r}")
        if downsample_version not in ("v1", "v2", "v3"):
            raise ValueError(f"downsample_version: expected 'v1', 'v2' or 'v3', got {downsample_version!r}")
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio: expected >= 0 (0 means no MLP), got {mlp_ratio!r}")
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f"drop_path_rate: expected a number in [0, 1), got {drop_path_rate!r}")
        resolve_scan_order(scan_order)
        check_backend(scan_backend)

        self.in_chans = in_chans
        self.num_classes = num_classes
        self.dims = dims
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NHWC"
        self.drop_rate = drop_rate

        self.patch_embed = (PatchEmbedV1(in_chans, dims[0], **dd) if patchembed_version == "v1"
                            else PatchEmbedV2(in_chans, dims[0], **dd))
        block_kwargs = dict(
            d_state=ssm_d_state, ssm_ratio=ssm_ratio, dt_rank=ssm_dt_rank, d_conv=ssm_conv,
            conv_bias=ssm_conv_bias, gate=ssm_gate, scan_order=scan_order, backend=scan_backend,
            mlp_ratio=mlp_ratio,
        )
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also under a meta device
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            last = i == len(depths) - 1
            self.layers.append(VMambaStage(
                dims[i], None if last else dims[i + 1], depth, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample_version, block_kwargs, **dd))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"layers.{i}.blocks"))
        self.classifier = VMambaHead(dims[-1], num_classes, global_pool, drop_rate, **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official: trunc_normal(0.02) on every Linear; SS2D's raw parameters keep the Mamba init
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # --- timm API -----------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"*.A_logs", "*.Ds"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^layers\.(\d+)\.downsample", (99999,)),
                (r"^classifier\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.classifier.reset(num_classes, global_pool)

    @torch.jit.ignore
    def set_scan_backend(self, backend: str) -> None:
        """Switch the selective-scan backend of every SS2D ("auto", "reference", "cpu", ...)."""
        check_backend(backend)
        for m in self.modules():
            if isinstance(m, SS2D):
                m.backend = backend

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> the unpooled last-stage map (B, ceil(H/32), ceil(W/32), C), NHWC."""
        check_input(x, self.in_chans)
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.classifier(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ):
        """Stage outputs (before each downsampling), NCHW by default.

        ``indices``: stages to return (None: all four; an int n: the last n). ``norm`` applies the
        classifier's LayerNorm to the last stage's map (the only norm the checkpoints have).
        Returns ``(final, intermediates)``, where ``final`` equals ``forward_features(x)`` unless
        ``stop_early``, or only the list with ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt: expected 'NCHW' or 'NHWC', got {output_fmt!r}")
        check_input(x, self.in_chans)
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        stages = self.layers[:max_index + 1] if (stop_early or intermediates_only) else self.layers
        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if i in take_indices:
                y = self.classifier.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
            x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages (and downsampling) after the last index needed, and the norm / head."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = nn.Identity()
        if prune_norm:
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # --- checkpoints --------------------------------------------------------------------------

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, key: str | None = None) -> None:
        """Load a checkpoint file as released (timm calls this for ``pretrained_cfg_overlay=dict(file=...)``).

        ``key`` picks the weights in a training checkpoint: "model" by default (what the official
        evaluation reports), or "model_ema"; through timm, set ``custom_load="model_ema"`` in the
        overlay. Legacy names are renamed (:func:`checkpoint_filter_fn`), the first conv is adapted
        to ``in_chans`` and the head is dropped when its shape differs (another ``num_classes``).
        Any other difference is a CheckpointError that names a few keys.
        """
        if key is None:
            choice = (getattr(self, "pretrained_cfg", None) or {}).get("custom_load")
            key = choice if isinstance(choice, str) else "model"
        if key not in ("model", "model_ema"):
            raise ValueError(f"key: expected 'model' or 'model_ema', got {key!r}")
        state_dict = checkpoint_filter_fn(state_dict_of(read_checkpoint(checkpoint_path), key == "model_ema",
                                                        checkpoint_path), self)
        load_released(self, state_dict, checkpoint_path, "patch_embed.0", "classifier.head")


# early releases (``VSSM._load_from_state_dict``): prefix renames
_LEGACY_PREFIXES = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
)
# the one-file release (root ``vmamba.py``): grouped-Linear names of the stacked projections
_ONE_FILE_NAMES = (
    (re.compile(r"\.op\.x_proj\.weight$"), ".op.x_proj_weight"),
    (re.compile(r"\.op\.dt_projs\.weight$"), ".op.dt_projs_weight"),
    (re.compile(r"\.op\.dt_projs\.bias$"), ".op.dt_projs_bias"),
)


def checkpoint_filter_fn(state_dict: dict, model: VMamba) -> dict:
    """Adapt an official VMamba checkpoint (the file's dict or its ``['model']``) to ``model``.

    * unwraps ``{'model': ...}`` / ``{'state_dict': ...}``, strips ``module.``, keeps tensors only;
    * renames the legacy names of early checkpoints (``patch_embed.proj``/``.norm``,
      ``blocks.j.ln_1``, ``blocks.j.self_attention``, top-level ``norm``/``head``) and those of the
      one-file release (``op.x_proj.weight``, ``op.dt_projs.weight``/``.bias``, and its patch-merging
      ``downsample.1`` (LN) / ``downsample.2`` (reduction));
    * reshapes a tensor whose element count matches the model's but whose shape does not only by
      stacking or trailing 1x1 dims (grouped/1x1-conv storage of the same Linear weight).
    """
    if isinstance(state_dict, dict):
        for key in ("model", "state_dict"):
            if isinstance(state_dict.get(key), dict):
                state_dict = state_dict[key]
                break
    own = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = k[len("module."):] if k.startswith("module.") else k
        for pattern, repl in _LEGACY_PREFIXES + _ONE_FILE_NAMES:
            k = pattern.sub(repl, k)
        m = re.match(r"^(layers\.\d+\.downsample)\.([12])\.(weight|bias)$", k)
        if m and f"{m.group(1)}.reduction.weight" in own:  # patch merging, one-file indices
            k = f"{m.group(1)}.{'norm' if m.group(2) == '1' else 'reduction'}.{m.group(3)}"
        target = own.get(k)
        if target is not None and v.shape != target.shape and v.numel() == target.numel() \
                and _same_up_to_ones(v, target):
            v = v.reshape(target.shape)
        out[k] = v
    return out


def _same_up_to_ones(v: torch.Tensor, target: torch.Tensor) -> bool:
    """True if ``v`` is ``target``'s layout flattened / stacked / with trailing size-1 dims."""
    drop = [s for s in v.shape if s != 1]
    keep = [s for s in target.shape if s != 1]
    # or (K*M, ...) for (K, M, ...): the stacked per-direction projections as one grouped Linear
    return drop == keep or (len(keep) >= 2 and drop == [keep[0] * keep[1], *keep[2:]])


# ---------------------------------------------------------------------------------------------
# configs and registration


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and (overlay.get("file") or overlay.get("url")) and "custom_load" not in overlay:
        # timm resets custom_load for a user-supplied file, and its generic loader would then refuse
        # the yacs config and prefer model_ema; an official file needs VMamba.load_pretrained
        kwargs["pretrained_cfg_overlay"] = {**overlay, "custom_load": True}
    return build_model_with_cfg(
        VMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )


# the official releases: the URLs the official one-file vmamba.py loads for pretrained=True
_RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download/"


def _cfg(release: str, **kwargs) -> dict:
    return {
        # pretrained=True downloads the file into torch.hub's cache (timm's download_cached_file)
        "url": _RELEASES + release,
        "custom_load": True,  # VMamba.load_pretrained: safe unpickling of the yacs config, 'model' weights
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.0", "classifier": "classifier.head",
        "license": "mit", "origin_url": "https://github.com/MzeroMiko/VMamba",
        "paper_ids": "arXiv:2401.10166",
        "notes": (f"official weights: {_RELEASES}{release}; pretrained=True downloads them into "
                  "torch.hub's cache",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vmamba_vanilla_tiny.in1k": _cfg("%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth"),
    "vmamba_vanilla_small.in1k": _cfg("%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth"),
    "vmamba_vanilla_base.in1k": _cfg("%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth"),
    "vmamba_tiny_s2l5.in1k": _cfg("%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth"),
    "vmamba_small_s2l15.in1k": _cfg("%23v2cls/vssm_small_0229_ckpt_epoch_222.pth"),
    "vmamba_base_s2l15.in1k": _cfg("%23v2cls/vssm_base_0229_ckpt_epoch_237.pth"),
    "vmamba_tiny_s1l8.in1k": _cfg("%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"),
    "vmamba_small_s1l20.in1k": _cfg("%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth"),
    "vmamba_base_s1l20.in1k": _cfg("%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth"),
})

# the vanilla (paper v1, forward_type "v0") and the later (v2, "v05_noz") configurations
_VANILLA = dict(ssm_d_state=16, ssm_ratio=2.0, ssm_conv=3, ssm_conv_bias=True, ssm_gate=True,
                mlp_ratio=0.0, patchembed_version="v1", downsample_version="v1")
_V2 = dict(ssm_d_state=1, ssm_conv=3, ssm_conv_bias=False, ssm_gate=False,
           mlp_ratio=4.0, patchembed_version="v2", downsample_version="v3")


@register_model
def vmamba_vanilla_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-T (22.89M): dims 96, depths 2-2-9-2."""
    args = dict(_VANILLA, dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2)
    return _create_vmamba("vmamba_vanilla_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_vanilla_small(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-S (44.42M): dims 96, depths 2-2-27-2."""
    args = dict(_VANILLA, dims=96, depths=(2, 2, 27, 2), drop_path_rate=0.3)
    return _create_vmamba("vmamba_vanilla_small", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_vanilla_base(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-B (76.25M): dims 128, depths 2-2-27-2 (drop path 0.6 as in the factory)."""
    args = dict(_VANILLA, dims=128, depths=(2, 2, 27, 2), drop_path_rate=0.6)
    return _create_vmamba("vmamba_vanilla_base", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s2l5] (30.71M): ssm_ratio 2, depths 2-2-5-2."""
    args = dict(_V2, ssm_ratio=2.0, dims=96, depths=(2, 2, 5, 2), drop_path_rate=0.2)
    return _create_vmamba("vmamba_tiny_s2l5", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s2l15] (50.15M): ssm_ratio 2, depths 2-2-15-2."""
    args = dict(_V2, ssm_ratio=2.0, dims=96, depths=(2, 2, 15, 2), drop_path_rate=0.3)
    return _create_vmamba("vmamba_small_s2l15", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s2l15] (88.56M): dims 128, ssm_ratio 2, depths 2-2-15-2."""
    args = dict(_V2, ssm_ratio=2.0, dims=128, depths=(2, 2, 15, 2), drop_path_rate=0.6)
    return _create_vmamba("vmamba_base_s2l15", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_tiny_s1l8(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s1l8] (30.25M), the headline tiny model: ssm_ratio 1, depths 2-2-8-2."""
    args = dict(_V2, ssm_ratio=1.0, dims=96, depths=(2, 2, 8, 2), drop_path_rate=0.2)
    return _create_vmamba("vmamba_tiny_s1l8", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s1l20] (49.01M): ssm_ratio 1, depths 2-2-20-2."""
    args = dict(_V2, ssm_ratio=1.0, dims=96, depths=(2, 2, 20, 2), drop_path_rate=0.3)
    return _create_vmamba("vmamba_small_s1l20", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s1l20] (86.61M): dims 128, ssm_ratio 1, depths 2-2-20-2."""
    args = dict(_V2, ssm_ratio=1.0, dims=128, depths=(2, 2, 20, 2), drop_path_rate=0.5)
    return _create_vmamba("vmamba_base_s1l20", pretrained, **dict(args, **kwargs))
