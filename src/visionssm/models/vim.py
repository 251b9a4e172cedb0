"""Vision Mamba (Vim): bidirectional Mamba blocks over patch tokens with a middle class token.

Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State
Space Model", ICML 2024 (arXiv:2401.09417); official code and weights: https://github.com/hustvl/Vim.

The state-dict keys and shapes equal the official ones, so a released checkpoint loads as is:
``pretrained=True`` downloads it from the Hugging Face Hub (``hustvl/Vim-{tiny,small}-midclstok``)
into the Hugging Face cache, and a local copy loads offline:

    model = timm.create_model("vim_tiny_patch16_224", pretrained=True)
    model = timm.create_model("vim_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file="vim_t_midclstok_76p1acc.pth"))

Differences from the official code, none of which changes the logits of a released model:

* any input size: position embeddings are resampled (bicubic) at run time and when loading a
  checkpoint made for another grid, with the class-token slot kept apart at its real index;
* the residual layout is the textbook ``x + drop_path(mixer(norm(x)))``. The official block
  returns (mixer output, residual) and adds the previous block's output at the start of the next;
  with its ``[0] + linspace`` drop-path schedule and the extra DropPath before the final norm,
  mixer ``i`` is dropped with ``linspace(0, rate, depth)[i]`` in both;
* ``forward_features`` returns all tokens (timm convention); the head picks the class token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    lecun_normal_,
    register_notrace_function,
    register_notrace_module,
    to_2tuple,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint

from visionssm.layers.mamba import Mamba, RMSNorm
from visionssm.models.checkpoint import load_released, read_checkpoint

__all__ = ["VisionMamba", "VimBlock", "checkpoint_filter_fn", "resample_pos_embed"]

# The scan loops over time and validates shapes in Python: FX must see the mixer as one leaf.
register_notrace_module(Mamba)

_CLS_POSITIONS = ("middle", "head")
_POOL_TYPES = ("token", "avg", "")


def cls_index(num_patches: int, position: str) -> int:
    """Index of the class token among ``num_patches + 1`` tokens: M // 2 in the middle (official), or 0."""
    return num_patches // 2 if position == "middle" else 0


def resample_pos_embed(
        pos_embed: torch.Tensor,
        new_grid: Sequence[int],
        old_grid: Sequence[int],
        old_cls_position: str | None = "middle",
        new_cls_position: str | None = "middle",
        interpolation: str = "bicubic",
) -> torch.Tensor:
    """Resample (1, tokens, C) position embeddings from ``old_grid`` to ``new_grid``.

    The class-token slot (at ``cls_index(old_h * old_w, old_cls_position)``; None for no slot) is
    taken out before the grid is interpolated and put back at its index for the new grid, or
    dropped when ``new_cls_position`` is None. The official fine-tuning code treats slot 0 as the
    class token, which for the middle layout interpolates the class slot into the grid.
    Interpolation is bicubic without antialiasing, as in the official fine-tuning code.
    """
    old_h, old_w = old_grid
    new_h, new_w = new_grid
    n_old = old_h * old_w
    expected = n_old + (old_cls_position is not None)
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[1] != expected:
        raise ValueError(f"pos_embed: expected shape (1, {expected}, C) for a {old_h}x{old_w} grid"
                         f"{' plus a class slot' if old_cls_position else ''}, got {tuple(pos_embed.shape)}")
    cls_slot = None
    grid = pos_embed
    if old_cls_position is not None:
        i = cls_index(n_old, old_cls_position)
        cls_slot = pos_embed[:, i:i + 1]
        grid = torch.cat([pos_embed[:, :i], pos_embed[:, i + 1:]], dim=1)
    if (new_h, new_w) != (old_h, old_w):
        dim = grid.shape[-1]
        grid = grid.reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(new_h, new_w), mode=interpolation, align_corners=False)
        grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim)
    if new_cls_position is None:
        return grid
    if cls_slot is None:
        raise ValueError("new_cls_position: the source has no class-token slot to place, "
                         f"got new_cls_position={new_cls_position!r} with old_cls_position=None")
    j = cls_index(new_h * new_w, new_cls_position)
    return torch.cat([grid[:, :j], cls_slot, grid[:, j:]], dim=1)


# The helpers below branch on run-time shapes; FX keeps them as single nodes (torch.fx autowraps
# only public names, hence no leading underscore).
@register_notrace_function
def check_image(x: torch.Tensor, in_chans: int, patch_size: tuple[int, int]) -> None:
    if x.dim() != 4:
        raise ValueError(f"x: expected an image batch of shape (batch, {in_chans}, height, width), "
                         f"got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"x: expected {in_chans} channels (batch, {in_chans}, height, width), "
                         f"got {x.shape[1]} channels in shape {tuple(x.shape)}")
    if x.shape[2] < patch_size[0] or x.shape[3] < patch_size[1]:
        raise ValueError(f"x: expected height >= {patch_size[0]} and width >= {patch_size[1]} "
                         f"(one patch), got {x.shape[2]}x{x.shape[3]}")


@register_notrace_function
def embed_tokens(x: torch.Tensor, cls_token: torch.Tensor | None, pos_embed: torch.Tensor | None,
                  native_grid: tuple[int, int], cls_position: str) -> torch.Tensor:
    """(batch, C, h, w) patch features -> (batch, h*w [+1], C) tokens with class token and positions."""
    batch, _, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    if cls_token is not None:
        i = cls_index(h * w, cls_position)
        x = torch.cat([x[:, :i], cls_token.expand(batch, -1, -1), x[:, i:]], dim=1)
    if pos_embed is not None:
        if (h, w) != tuple(native_grid):
            pos = cls_position if cls_token is not None else None
            pos_embed = resample_pos_embed(pos_embed, (h, w), native_grid, pos, pos)
        x = x + pos_embed
    return x


@register_notrace_function
def split_cls_token(x: torch.Tensor, has_cls: bool,
                    cls_position: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(batch, tokens, C) -> (patch tokens, class token (batch, 1, C) or None)."""
    if not has_cls:
        return x, None
    i = cls_index(x.shape[1] - 1, cls_position)
    return torch.cat([x[:, :i], x[:, i + 1:]], dim=1), x[:, i:i + 1]


@register_notrace_function
def pool_tokens(x: torch.Tensor, pool_type: str, has_cls: bool, cls_position: str) -> torch.Tensor:
    if pool_type == "token":
        return x[:, cls_index(x.shape[1] - 1, cls_position)]
    if pool_type == "avg":
        # the mean over patch tokens; the official 'mean' pool (used when there is no class token)
        return split_cls_token(x, has_cls, cls_position)[0].mean(dim=1)
    return x


class PatchEmbed(nn.Module):
    """Image to patch features with a stride that may be below the patch size (Vim's "+" models).

    The grid is ((H - patch) // stride + 1, (W - patch) // stride + 1): 14x14 at 224 for stride 16,
    27x27 for stride 8. Any size of at least one patch is accepted.
    """

    def __init__(self, img_size=224, patch_size=16, stride=16, in_chans=3, embed_dim=192, device=None,
                 dtype=None):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride)
        self.in_chans = in_chans
        for name, value in (("patch_size", self.patch_size), ("stride", self.stride)):
            if min(value) < 1:
                raise ValueError(f"{name}: expected positive sizes, got {value}")
        if self.img_size[0] < self.patch_size[0] or self.img_size[1] < self.patch_size[1]:
            raise ValueError(f"img_size: expected at least patch_size {self.patch_size}, got {self.img_size}")
        self.grid_size = self.feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.stride, device=device, dtype=dtype)

    def feat_size(self, img_size: Sequence[int]) -> tuple[int, int]:
        (h, w), (ph, pw), (sh, sw) = to_2tuple(img_size), self.patch_size, self.stride
        return (h - ph) // sh + 1, (w - pw) // sw + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_chans, self.patch_size)
        return self.proj(x)


class VimBlock(nn.Module):
    """Pre-norm residual Mamba block: ``x + drop_path(mixer(norm(x)))``.

    With ``residual_in_fp32`` the residual stream is kept in float32 whatever the compute dtype,
    as the official ``residual_in_fp32=True`` does; the norm output takes the parameters' dtype.
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", bidirectional: bool = True, divide_out: bool = True,
                 drop_path: float = 0.0, norm_eps: float = 1e-5, residual_in_fp32: bool = True,
                 scan_backend: str = "auto", device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                           bidirectional=bidirectional, divide_out=divide_out, backend=scan_backend, **dd)
        self.norm = RMSNorm(dim, eps=norm_eps, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual_in_fp32:
            x = x.float()
        return x + self.drop_path(self.mixer(self.norm(x)))


class VisionMamba(nn.Module):
    """Vision Mamba (Vim).

    Args:
        img_size: native input size; the position embeddings are learned for its grid and
            resampled for other sizes.
        patch_size, stride: patch embedding kernel and stride (stride 8 for the "+" models).
        in_chans, num_classes: input channels and classes (0 for no head).
        global_pool: 'token' (the class token, default with one), 'avg' (mean of the patch
            tokens, default without) or '' (no pooling: forward returns tokens).
        embed_dim, depth: width and number of blocks.
        d_state, d_conv, expand, dt_rank: Mamba mixer sizes.
        bidirectional: Vim's bimamba v2 (True) or a plain forward Mamba stack (False).
        divide_out: average (True, official) or sum the two directions.
        class_token, cls_position: a class token at all, and where: 'middle' (official, index
            M // 2 of M patch tokens) or 'head' (index 0).
        pos_embed: learned absolute position embeddings.
        drop_rate: dropout after the position embeddings; drop_path_rate: stochastic depth,
            linear over the blocks from 0.
        norm_eps: RMSNorm epsilon (1e-5 in every official model).
        residual_in_fp32: keep the residual stream in float32.
        scan_backend: selective-scan backend ("auto", "reference", "cpu", "torch", "triton").
    """

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 16,
            stride: int | None = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str | None = None,
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            dt_rank: int | str = "auto",
            bidirectional: bool = True,
            divide_out: bool = True,
            class_token: bool = True,
            cls_position: str = "middle",
            pos_embed: bool = True,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_eps: float = 1e-5,
            residual_in_fp32: bool = True,
            scan_backend: str = "auto",
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if cls_position not in _CLS_POSITIONS:
            raise ValueError(f"cls_position: expected one of {_CLS_POSITIONS}, got {cls_position!r}")
        if global_pool is None:
            global_pool = "token" if class_token else "avg"
        self._check_pool(global_pool, class_token)
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth: expected a positive int, got {depth!r}")
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim: expected a positive int, got {embed_dim!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans: expected a positive int, got {in_chans!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes: expected an int >= 0, got {num_classes!r}")
        stride = patch_size if stride is None else stride

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.cls_position = cls_position
        self.num_prefix_tokens = 1 if class_token else 0
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim, **dd)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = (nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim, **dd))
                          if pos_embed else None)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # linspace
        self.layers = nn.ModuleList([
            VimBlock(embed_dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                     bidirectional=bidirectional, divide_out=divide_out, drop_path=dpr[i], norm_eps=norm_eps,
                     residual_in_fp32=residual_in_fp32, scan_backend=scan_backend, **dd)
            for i in range(depth)])
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps, **dd)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        reduction = self.patch_embed.stride[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"layers.{i}")
                             for i in range(depth)]
        self.init_weights()

    @staticmethod
    def _check_pool(global_pool, class_token):
        if global_pool not in _POOL_TYPES:
            raise ValueError(f"global_pool: expected one of {_POOL_TYPES}, got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool: 'token' needs a class token, got class_token=False "
                             "(use 'avg' or '')")

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation (the mixers' SSM part happens in ``Mamba.reset_parameters``)."""
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        # GPT-2 style: each residual branch's last projection scaled by 1/sqrt(depth) (mamba_ssm's
        # _init_weights re-draws kaiming_uniform(a=sqrt(5)), which nn.Linear already drew)
        for blk in self.layers:
            blk.mixer.out_proj.weight.div_(math.sqrt(len(self.layers)))

    # --- timm API ---------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {n for n in ("pos_embed", "cls_token") if getattr(self, n) is not None}
        mixer_params = {n.split(".")[-1] for n, _ in self.layers[0].mixer.named_parameters(recurse=False)}
        return names | {f"layers.*.mixer.{n}" for n in mixer_params}  # A_log, D (and A_b_log, D_b)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_scan_backend(self, backend: str) -> None:
        """Switch every mixer to another selective-scan backend (same numbers, other speed)."""
        for blk in self.layers:
            blk.mixer.backend = backend

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self._check_pool(global_pool, self.cls_token is not None)
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.patch_embed.proj.weight
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity()).train(self.training)

    @torch.jit.ignore
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Change the native input size: the position embeddings are resampled to the new grid."""
        pe = self.patch_embed
        img_size = to_2tuple(img_size)
        if img_size[0] < pe.patch_size[0] or img_size[1] < pe.patch_size[1]:
            raise ValueError(f"img_size: expected at least patch_size {pe.patch_size}, got {img_size}")
        new_grid = pe.feat_size(img_size)
        if self.pos_embed is not None and new_grid != pe.grid_size:
            pos = self.cls_position if self.cls_token is not None else None
            with torch.no_grad():
                data = resample_pos_embed(self.pos_embed.data, new_grid, pe.grid_size, pos, pos)
            self.pos_embed = nn.Parameter(data, requires_grad=self.pos_embed.requires_grad)
        pe.img_size, pe.grid_size = img_size, new_grid
        pe.num_patches = new_grid[0] * new_grid[1]

    # --- forward ----------------------------------------------------------------------------

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = embed_tokens(x, self.cls_token, self.pos_embed, self.patch_embed.grid_size, self.cls_position)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, H, W) -> normalised tokens (batch, tokens, embed_dim), class token included."""
        x = self._embed(x)
        for blk in self.layers:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return self.norm_f(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = pool_tokens(x, self.global_pool, self.cls_token is not None, self.cls_position)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ):
        """Block outputs as feature maps (NCHW at the patch stride) or tokens (NLC, class token removed).

        Args:
            indices: the last n blocks if int, all if None, else these block indices.
            return_prefix_tokens: pair every intermediate with its class token (batch, 1, C).
            norm: apply the final norm to the intermediates.
            stop_early: stop after the last requested block.
            intermediates_only: return only the list of intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt: expected 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        batch, _, height, width = x.shape
        x = self._embed(x)
        blocks = self.layers[:max_index + 1] if stop_early else self.layers
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take_indices:
                # the residual stream is float32; hand out features in the parameters' dtype
                y = self.norm_f(x) if norm else x.to(self.patch_embed.proj.weight.dtype)
                intermediates.append(y)
        has_cls = self.cls_token is not None
        split = [split_cls_token(y, has_cls, self.cls_position) for y in intermediates]
        intermediates = [s[0] for s in split]
        if output_fmt == "NCHW":
            h, w = self.patch_embed.feat_size((height, width))
            intermediates = [y.reshape(batch, h, w, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if return_prefix_tokens and has_cls:
            intermediates = list(zip(intermediates, [s[1] for s in split], strict=True))
        if intermediates_only:
            return intermediates
        # as in timm: with stop_early the "final" output is the norm of the last block run
        return self.norm_f(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last index needed (and the norm / head): for feature extraction."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # --- checkpoints ------------------------------------------------------------------------

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, source_cls_position: str = "auto") -> None:
        """Load a checkpoint file as released (timm calls this for ``pretrained_cfg_overlay=dict(file=...)``).

        Takes ``ckpt['model']`` (the weights the official evaluation uses, not ``model_ema``), strips a
        ``module.`` prefix, re-lays-out the position embeddings for this model's grid and class
        position (the checkpoint's: ``source_cls_position``, see :func:`checkpoint_filter_fn`),
        adapts the first conv to ``in_chans`` and drops the head when its shape differs (a new
        ``num_classes``). Any other difference is a CheckpointError that names a few keys.
        """
        state_dict = checkpoint_filter_fn(read_checkpoint(checkpoint_path), self, source_cls_position)
        load_released(self, state_dict, checkpoint_path, "patch_embed.proj", "head")


def _source_stride(args, state_dict: dict, model: VisionMamba) -> tuple[int | None, str]:
    """The stride a checkpoint was trained with, and how we know; None when it cannot be told."""
    name = getattr(args, "model", None)
    if isinstance(name, str) and name.startswith("vim_"):
        return (8 if "stride8" in name else model.patch_embed.patch_size[0]), f"args.model={name!r}"
    pe = state_dict.get("pos_embed")
    if pe is None or pe.dim() != 3:
        return None, ""
    n = pe.shape[1] - ("cls_token" in state_dict)
    side = math.isqrt(n)
    if side * side != n or (side, side) == model.patch_embed.grid_size:
        return None, ""
    # every released checkpoint is at 224: a 27x27 grid is stride 8, 14x14 is stride 16
    patch = model.patch_embed.patch_size[0]
    for s in (8, 16):
        if side == (224 - patch) // s + 1:
            return s, f"a {side}x{side} position grid, which a 224x224 model of stride {s} has"
    return None, ""


_SOURCE_CLS_POSITIONS = ("auto", *_CLS_POSITIONS)


def _model_kwargs(ckpt: dict) -> dict:
    """The model kwargs a training run recorded: timm's ``args.model_kwargs`` or this library's
    ``config['model_kwargs']``; empty when there are none."""
    args, config = ckpt.get("args"), ckpt.get("config")
    kwargs = getattr(args, "model_kwargs", None)
    if not isinstance(kwargs, dict) and isinstance(config, dict):
        kwargs = config.get("model_kwargs")
    return kwargs if isinstance(kwargs, dict) else {}


def _source_cls_position(ckpt: dict, state_dict: dict, requested: str) -> tuple[str | None, str]:
    """Where the checkpoint's class token sits in its ``pos_embed`` ('middle', 'head', or None when
    it has no class token), and how we know."""
    if "cls_token" not in state_dict:
        return None, "the checkpoint has no cls_token"
    if requested != "auto":
        return requested, f"source_cls_position={requested!r}"
    name = getattr(ckpt.get("args"), "model", None)
    if isinstance(name, str) and ("midclstok" in name or "middle_cls_token" in name):
        return "middle", f"args.model={name!r}"  # the official models' names say so
    recorded = _model_kwargs(ckpt).get("cls_position")
    if recorded in _CLS_POSITIONS:
        return recorded, f"model_kwargs cls_position={recorded!r} recorded in the checkpoint"
    # every released checkpoint, and this library's default
    return "middle", "the default (official) middle layout"


def checkpoint_filter_fn(state_dict: dict, model: VisionMamba, source_cls_position: str = "auto") -> dict:
    """Adapt an official Vim checkpoint (or its ``['model']`` dict) to ``model``.

    * unwraps ``{'model': ...}`` / ``{'state_dict': ...}`` and strips a ``module.`` prefix;
    * refuses a checkpoint of another patch stride (Vim's "+" models are stride 8) with a message,
      instead of silently resampling a 27x27 grid onto 14x14;
    * re-lays-out ``pos_embed`` whenever the checkpoint's layout differs from the model's: its
      class slot is moved from the checkpoint's class position to the model's (or dropped for a
      model without class token), and the patch part is resampled when the grid differs;
    * drops ``cls_token`` / ``pos_embed`` when the model has none, and refuses a checkpoint
      without class token for a model that needs one (a class token is never made up).

    The checkpoint's class position: ``source_cls_position`` when given ('middle' or 'head');
    with "auto", the official model name in ``args.model`` ('midclstok'), else a ``cls_position``
    in the model kwargs the training run recorded, else 'middle', the layout of every released
    checkpoint and of this library's models by default.
    """
    if source_cls_position not in _SOURCE_CLS_POSITIONS:
        raise ValueError(f"source_cls_position: expected one of {_SOURCE_CLS_POSITIONS}, "
                         f"got {source_cls_position!r}")
    ckpt = state_dict if isinstance(state_dict, dict) else {}
    args = ckpt.get("args")
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    state_dict = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()
                  if isinstance(v, torch.Tensor)}

    stride = model.patch_embed.stride[0]
    src_stride, how = _source_stride(args, state_dict, model)
    if src_stride is not None and src_stride != stride:
        raise ValueError(f"checkpoint: made for a stride-{src_stride} Vim ({how}), but this model has "
                         f"stride {stride}; build the matching model (vim_*_patch16_stride8_224 for the "
                         "'+' / '_ft_' checkpoints, vim_*_patch16_224 otherwise)")

    # the checkpoint's pos_embed has a class slot exactly when it has a class token
    src_cls, src_how = _source_cls_position(ckpt, state_dict, source_cls_position)
    dst_cls = model.cls_position if model.cls_token is not None else None
    if dst_cls is not None and src_cls is None:
        raise ValueError("checkpoint: has no class token (no 'cls_token' key) but the model has one; "
                         "build the model with class_token=False")
    if dst_cls is None:
        state_dict.pop("cls_token", None)
    pe = state_dict.get("pos_embed")
    if pe is not None and model.pos_embed is None:
        state_dict.pop("pos_embed")
    elif pe is not None:
        grid = model.patch_embed.grid_size
        n = pe.shape[1] - (src_cls is not None) if pe.dim() == 3 else -1
        if n == model.patch_embed.num_patches:
            old_grid = grid
        elif n > 0 and math.isqrt(n) ** 2 == n:
            old_grid = (math.isqrt(n), math.isqrt(n))
        else:
            raise ValueError(f"checkpoint: pos_embed of shape {tuple(pe.shape)} is neither a square grid nor "
                             f"the model's {grid} grid{' plus a class slot' if src_cls else ''} "
                             f"(class token: {src_how})")
        if old_grid != grid or src_cls != dst_cls:
            state_dict["pos_embed"] = resample_pos_embed(pe, grid, old_grid, src_cls, dst_cls)
    return state_dict


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> VisionMamba:
    out_indices = kwargs.pop("out_indices", 3)
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and "custom_load" not in overlay:
        # timm switches custom_load off when the overlay names a weight source, and would then take
        # model_ema from an official checkpoint; the official evaluation (and its reported accuracy)
        # uses 'model', which VisionMamba.load_pretrained reads. A hub file goes through timm's
        # custom loader for the hub ('hf'), a local file or a URL through the plain one (True).
        if overlay.get("file"):
            kwargs["pretrained_cfg_overlay"] = {**overlay, "custom_load": True}
        elif overlay.get("hf_hub_id") or overlay.get("hf_hub_filename"):
            kwargs["pretrained_cfg_overlay"] = {**overlay, "custom_load": "hf"}
        elif overlay.get("url"):
            kwargs["pretrained_cfg_overlay"] = {**overlay, "custom_load": True}
    return build_model_with_cfg(
        VisionMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(hub: str, file: str | None, **kwargs) -> dict:
    """A released model: ``hub`` (a Hugging Face Hub repository) holds ``file``, the checkpoint as
    the official training script saved it; ``file=None`` where the file name is not known."""
    source = dict(hf_hub_id=hub, hf_hub_filename=file) if file else {}
    where = f"https://huggingface.co/{hub}" + (f" ({file})" if file else "")
    return {
        **source,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        # timm's custom loader for a hub file: it downloads the file into the Hugging Face cache and
        # calls VisionMamba.load_pretrained, which takes ckpt['model'] (timm's generic loader would
        # take model_ema) and allow-lists only argparse.Namespace when unpickling
        "custom_load": "hf",
        "license": "apache-2.0", "paper_ids": "arXiv:2401.09417", "origin_url": "https://github.com/hustvl/Vim",
        "notes": ((f"official weights: {where}; pretrained=True downloads them into the Hugging Face cache",)
                  if file else
                  (f"official weights: {where}; no download source is configured (the release's file name "
                   "is not recorded here): load the file with pretrained=True, "
                   "pretrained_cfg_overlay=dict(file=PATH)",)),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vim_tiny_patch16_224": _cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224": _cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224": _cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224": _cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base_patch16_224": _cfg("hustvl/Vim-base-midclstok", None),
})


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti: 7.148M parameters, 76.1% ImageNet top-1."""
    model_args = dict(patch_size=16, stride=16, embed_dim=192, depth=24)
    return _create_vim("vim_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti+ (stride-8 fine-tune, 27x27 tokens): 7.250M parameters, 78.3% top-1."""
    model_args = dict(patch_size=16, stride=8, embed_dim=192, depth=24)
    return _create_vim("vim_tiny_patch16_stride8_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S: 25.797M parameters, 80.5% top-1."""
    model_args = dict(patch_size=16, stride=16, embed_dim=384, depth=24)
    return _create_vim("vim_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S+ (stride-8 fine-tune): 26.001M parameters, 81.6% top-1."""
    model_args = dict(patch_size=16, stride=8, embed_dim=384, depth=24)
    return _create_vim("vim_small_patch16_stride8_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B: 97.598M parameters, 81.9% top-1."""
    model_args = dict(patch_size=16, stride=16, embed_dim=768, depth=24)
    return _create_vim("vim_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))
