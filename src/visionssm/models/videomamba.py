"""VideoMamba: Vim's bidirectional Mamba blocks over the tokens of a whole clip, class token first.

Li et al., "VideoMamba: State Space Model for Efficient Video Understanding", ECCV 2024
(arXiv:2403.06977); official code: https://github.com/OpenGVLab/VideoMamba, weights (gated, see the
model card for their licence): https://huggingface.co/OpenGVLab/VideoMamba.

Two families, both Vim configurations built on :class:`visionssm.models.vim.VisionMamba`:

* the image models (``videomamba_{tiny,small,middle,base}_patch16_224``): a Vim whose class token
  sits at index 0 and whose two scan directions are summed, not averaged;
* the video models (``videomamba_{tiny,small,middle}_f{8,16,32,64}_224``): input
  ``(batch, channels, frames, height, width)``, a Conv3d patch embedding (tubelet 1), a spatial
  position embedding shared by every frame plus a temporal one, and one sequence
  ``[cls, frame 0 patches, frame 1 patches, ...]`` (row-major in a frame: the "spatial-first" scan)
  through every block.

Beside them, a baseline with no temporal modelling, ``videomamba_tiny_frameavg_f8_224``
(:class:`VideoMambaFrameAvg`): the image model on each frame, pooled features averaged over the
frames (TSN's average consensus), blind to their order.

The state-dict keys and shapes equal the official ones, so a released file loads as is, in either
layout (``{'model': ...}`` for ImageNet, flat for video):

    model = timm.create_model("videomamba_tiny_f8_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file="videomamba_t16_k400_f8_res224.pth"))

An ImageNet file loads into a video model as the official fine-tuning starts (the 2-D patch kernel
inflated in time, the temporal embedding at zero); any clip length and resolution work (both
position embeddings are resampled at run time, and when loading a checkpoint made for another).

Differences from the official code, none of which changes the logits of a released model: the
residual layout is the textbook one (see :mod:`visionssm.models.vim`), ``forward_features`` returns
all tokens (timm convention), the position embeddings are resampled for other inputs instead of
failing, and ``drop_path_rate`` defaults to 0 (the official constructor's 0.1 is always overridden
by its training scripts).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import adapt_input_conv, checkpoint

from visionssm.models.checkpoint import load_state_dict_checked, read_checkpoint, state_dict_of
from visionssm.models.vim import PatchEmbed, VisionMamba, pool_tokens, resample_pos_embed
from visionssm.models.vim import checkpoint_filter_fn as vim_checkpoint_filter_fn

__all__ = ["VideoMamba", "VideoMambaFrameAvg", "VideoMambaImage", "checkpoint_filter_fn",
           "resample_temporal_embed"]

_HUB = "OpenGVLab/VideoMamba"
# keys of the released files that no classifier has: the self-distillation head of the M/B ImageNet
# files, the CLIP decoder of the masked pre-training files
_EXTRA_PREFIXES = ("distill_head.", "clip_decoder.", "clip_pos_embed")


def resample_temporal_embed(temporal: torch.Tensor, steps: int) -> torch.Tensor:
    """Resample a (1, T, C) temporal position embedding to ``steps`` positions (linear,
    ``align_corners=False``, as the official fine-tuning code does)."""
    if temporal.dim() != 3 or temporal.shape[0] != 1:
        raise ValueError(f"temporal_pos_embedding: expected shape (1, frames, C), got {tuple(temporal.shape)}")
    if temporal.shape[1] == steps:
        return temporal
    out = F.interpolate(temporal.float().transpose(1, 2), size=steps, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(temporal.dtype)


# The helpers below branch on run-time shapes; FX keeps them as single nodes.
@register_notrace_function
def check_video(x: torch.Tensor, in_chans: int, tubelet: int, patch_size: tuple[int, int]) -> None:
    if x.dim() != 5:
        raise ValueError(f"x: expected a video batch of shape (batch, {in_chans}, frames, height, width), "
                         f"got shape {tuple(x.shape)}" + ("; for images use videomamba_*_patch16_224"
                                                          if x.dim() == 4 else ""))
    if x.shape[1] != in_chans:
        raise ValueError(f"x: expected {in_chans} channels (batch, {in_chans}, frames, height, width), "
                         f"got {x.shape[1]} channels in shape {tuple(x.shape)}")
    if x.shape[2] < tubelet or x.shape[2] % tubelet:
        raise ValueError(f"x: expected a number of frames that is a positive multiple of the tubelet size "
                         f"{tubelet}, got {x.shape[2]} frames")
    if x.shape[3] < patch_size[0] or x.shape[4] < patch_size[1]:
        raise ValueError(f"x: expected height >= {patch_size[0]} and width >= {patch_size[1]} "
                         f"(one patch), got {x.shape[3]}x{x.shape[4]}")


@register_notrace_function
def embed_video_tokens(x: torch.Tensor, cls_token: torch.Tensor, pos_embed: torch.Tensor,
                       temporal: torch.Tensor, native_grid: tuple[int, int]) -> torch.Tensor:
    """(batch, C, T, h, w) patch features -> (batch, 1 + T*h*w, C): the class token (with the spatial
    table's slot 0, no temporal term) first, then frame after frame, row-major in a frame; each
    patch gets the spatial embedding of its place and the temporal embedding of its frame."""
    batch, dim, steps, h, w = x.shape
    if (h, w) != tuple(native_grid):
        pos_embed = resample_pos_embed(pos_embed, (h, w), native_grid, "head", "head")
    temporal = resample_temporal_embed(temporal, steps)
    x = x.permute(0, 2, 3, 4, 1).reshape(batch, steps, h * w, dim)
    x = x + pos_embed[:, None, 1:] + temporal[:, :, None]
    cls = (cls_token + pos_embed[:, :1]).expand(batch, -1, -1)
    return torch.cat([cls, x.flatten(1, 2)], dim=1)


class PatchEmbed3d(PatchEmbed):
    """Clip to patch features: a Conv3d with kernel = stride = (tubelet, patch, patch).

    ``grid_size`` / ``num_patches`` are per frame (what the spatial position table is learned for);
    ``num_frames`` is the clip length the temporal table is learned for.
    """

    def __init__(self, img_size=224, patch_size=16, tubelet_size=1, num_frames=8, in_chans=3, embed_dim=192,
                 device=None, dtype=None):
        super().__init__(img_size, patch_size, patch_size, in_chans, embed_dim, device=device, dtype=dtype)
        if not isinstance(tubelet_size, int) or tubelet_size < 1:
            raise ValueError(f"tubelet_size: expected a positive int, got {tubelet_size!r}")
        if not isinstance(num_frames, int) or num_frames < tubelet_size or num_frames % tubelet_size:
            raise ValueError(f"num_frames: expected a positive multiple of tubelet_size={tubelet_size}, "
                             f"got {num_frames!r}")
        self.tubelet_size = tubelet_size
        self.num_frames = num_frames
        kernel = (tubelet_size, *self.patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel, kernel, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video(x, self.in_chans, self.tubelet_size, self.patch_size)
        return self.proj(x)


class VideoMambaImage(VisionMamba):
    """VideoMamba's image model: Vim with the class token at index 0, the two directions summed,
    and VideoMamba's initialisation. Its keys equal Vim's; its checkpoints put the class slot of
    ``pos_embed`` at index 0.

    Args:
        mamba_init: keep the mixers' own Mamba initialisation (mamba_ssm's) where the official one
            redraws every Linear at std 0.02 and zeroes the dt biases: the step sizes log-uniform in
            [0.001, 0.1] (a long memory from the start, where steps near 0.69 halve the state every
            token or faster) and PyTorch's default for ``in_proj`` and ``x_proj``. With the official
            one, a later frame's effect on the class token (which only the scan carries) starts
            far smaller: in a 64-wide, 4-deep model at 32 px, 100x for the second frame, 2x10^4
            for the fourth, 7x10^8 for the eighth (input gradients, 3 seeds), and learning to
            carry one frame to another takes far longer. For training from scratch on clips;
            checkpoints overwrite either.
        others: those of :class:`~visionssm.models.vim.VisionMamba` except the ones fixed here
            (``stride`` = ``patch_size``, a head class token, position embeddings, bidirectional summed).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 192, depth: int = 24, mamba_init: bool = False, **kwargs):
        super().__init__(img_size=img_size, patch_size=patch_size, stride=patch_size, in_chans=in_chans,
                         num_classes=num_classes, embed_dim=embed_dim, depth=depth, bidirectional=True,
                         divide_out=False, class_token=True, cls_position="head", pos_embed=True, **kwargs)
        if mamba_init:
            for blk in self.layers:
                mixer = blk.mixer
                for proj in (mixer.in_proj, mixer.x_proj, getattr(mixer, "x_proj_b", None)):
                    if proj is not None:
                        proj.reset_parameters()
                mixer.reset_parameters()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation: every Linear (the mixers' too, which wipes Mamba's dt init:
        the dt biases start at 0) trunc_normal(0.02) with zero bias, ``pos_embed`` trunc_normal(0.02),
        the class token at zero, then each ``out_proj`` kaiming_uniform(a=sqrt(5)) / sqrt(depth).
        Convolutions keep PyTorch's default; A_log and D stay as the mixer built them."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.cls_token)
        for blk in self.layers:
            nn.init.kaiming_uniform_(blk.mixer.out_proj.weight, a=math.sqrt(5))
            blk.mixer.out_proj.weight.div_(math.sqrt(len(self.layers)))

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load a released file (timm calls this for ``pretrained_cfg_overlay=dict(file=...)``).

        :func:`checkpoint_filter_fn` adapts it; the first conv is adapted to ``in_chans``, and the
        head is dropped when the file has none or one of another shape (a new ``num_classes``).
        Any other missing, unexpected or misshapen key is a CheckpointError that names them.
        """
        state_dict = checkpoint_filter_fn(read_checkpoint(checkpoint_path), self)
        key = "patch_embed.proj.weight"
        if key in state_dict and state_dict[key].shape[1] != self.in_chans:
            state_dict[key] = _adapt_in_chans(state_dict[key], self.in_chans)
        own = self.state_dict()
        for key in ("head.weight", "head.bias"):
            if key in state_dict and (key not in own or own[key].shape != state_dict[key].shape):
                state_dict.pop(key)
        new_head = "head.weight" not in state_dict
        load_state_dict_checked(self, state_dict, checkpoint_path, ignore_missing=("head.",) if new_head else ())


def _adapt_in_chans(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's first-conv adaptation (sum / repeat over RGB) for a 2-D or a 3-D kernel."""
    if weight.dim() == 4:
        return adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])
    out, chans, t, kh, kw = weight.shape
    w2 = weight.transpose(1, 2).reshape(out * t, chans, kh, kw)
    w2 = adapt_input_conv(in_chans, w2, base_chans=chans)
    return w2.reshape(out, t, in_chans, kh, kw).transpose(1, 2).contiguous()


class VideoMamba(VideoMambaImage):
    """VideoMamba for clips ``(batch, channels, frames, height, width)``.

    Args:
        img_size, num_frames: the frame size and clip length the spatial and temporal position
            embeddings are learned for; other inputs resample them (bicubic in space, linear in time).
        tubelet_size: frames per patch (1 in every released model).
        fc_drop_rate: dropout before the head.
        others: as :class:`VideoMambaImage` (``embed_dim``, ``depth``, ``drop_path_rate``, the mixer sizes, ...).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, num_frames: int = 8, tubelet_size: int = 1,
                 patch_size: int = 16, in_chans: int = 3, num_classes: int = 400, embed_dim: int = 192,
                 depth: int = 24, fc_drop_rate: float = 0.0, device=None, dtype=None, **kwargs):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         embed_dim=embed_dim, depth=depth, device=device, dtype=dtype, **kwargs)
        dd = dict(device=device, dtype=dtype)
        # the 2-D embedding VisionMamba built is replaced; the Conv3d keeps PyTorch's init, as official
        self.patch_embed = PatchEmbed3d(img_size, patch_size, tubelet_size, num_frames, in_chans, embed_dim, **dd)
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames // tubelet_size, embed_dim, **dd))
        self.head_drop = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()

    @property
    def num_frames(self) -> int:
        return self.patch_embed.num_frames

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"temporal_pos_embedding"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^temporal_pos_embedding|^patch_embed",
                    blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))])

    @torch.jit.ignore
    def set_input_size(self, img_size: int | tuple[int, int] | None = None, num_frames: int | None = None) -> None:
        """Change the native frame size and / or clip length: the position embeddings are resampled."""
        if img_size is not None:
            super().set_input_size(img_size)
        if num_frames is not None:
            tubelet = self.patch_embed.tubelet_size
            if not isinstance(num_frames, int) or num_frames < tubelet or num_frames % tubelet:
                raise ValueError(f"num_frames: expected a positive multiple of tubelet_size={tubelet}, "
                                 f"got {num_frames!r}")
            with torch.no_grad():
                data = resample_temporal_embed(self.temporal_pos_embedding.data, num_frames // tubelet)
            self.temporal_pos_embedding = nn.Parameter(data, requires_grad=self.temporal_pos_embedding.requires_grad)
            self.patch_embed.num_frames = num_frames

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = embed_video_tokens(x, self.cls_token, self.pos_embed, self.temporal_pos_embedding,
                               self.patch_embed.grid_size)
        return self.pos_drop(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(pool_tokens(x, self.global_pool, True, "head"))
        return x if pre_logits else self.head(x)

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
        """Block outputs as channel-first maps ``(batch, C, frames / tubelet, h, w)`` ('NCHW', the
        input's layout with its time axis kept; 'NCTHW' names the same) or tokens (NLC, ``(batch,
        frames / tubelet * h * w, C)``), class token removed. Arguments as for Vim."""
        if output_fmt not in ("NCHW", "NCTHW", "NLC"):
            raise ValueError(f"output_fmt: expected 'NCHW', 'NCTHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        pe = self.patch_embed
        check_video(x, pe.in_chans, pe.tubelet_size, pe.patch_size)
        batch, steps = x.shape[0], x.shape[2] // pe.tubelet_size
        h, w = pe.feat_size(x.shape[3:])
        x = self._embed(x)
        intermediates = []
        for i, blk in enumerate(self.layers[:max_index + 1] if stop_early else self.layers):
            x = checkpoint(blk, x) if self.grad_checkpointing and not torch.jit.is_scripting() else blk(x)
            if i in take_indices:
                # the residual stream is float32; hand out features in the parameters' dtype
                intermediates.append(self.norm_f(x) if norm else x.to(self.patch_embed.proj.weight.dtype))
        prefix = [y[:, :1] for y in intermediates]
        intermediates = [y[:, 1:] for y in intermediates]
        if output_fmt != "NLC":
            intermediates = [y.reshape(batch, steps, h, w, -1).permute(0, 4, 1, 2, 3).contiguous()
                             for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix, strict=True))
        if intermediates_only:
            return intermediates
        return self.norm_f(x), intermediates


class VideoMambaFrameAvg(VideoMambaImage):
    """The frame-averaging baseline of VideoMamba (TSN's average consensus): the image model run on
    every frame of a clip ``(batch, channels, frames, height, width)`` on its own, its pooled features
    averaged over the frames, then the head (a linear head: the same as averaging per-frame logits).

    No token sees another frame, and nothing says where a frame sits in the clip, so the output is the
    same for every order of the frames: what a video model gains over it is what it learns from time.
    Its parameters are the image model's (an official ImageNet file loads as it is); ``num_frames`` is
    only the clip length the data pipeline is asked for, any length works.

    Args:
        num_frames: the clip length it is trained on (no parameter depends on it).
        fc_drop_rate: dropout before the head.
        others: as :class:`VideoMambaImage`.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, num_frames: int = 8, patch_size: int = 16,
                 in_chans: int = 3, num_classes: int = 400, embed_dim: int = 192, depth: int = 24,
                 fc_drop_rate: float = 0.0, **kwargs):
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames: expected a positive int, got {num_frames!r}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         embed_dim=embed_dim, depth=depth, **kwargs)
        self.num_frames = num_frames
        self.head_drop = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()

    @torch.jit.ignore
    def set_input_size(self, img_size: int | tuple[int, int] | None = None, num_frames: int | None = None) -> None:
        """Change the native frame size (the position embedding is resampled) and / or the clip length."""
        if img_size is not None:
            super().set_input_size(img_size)
        if num_frames is not None:
            if not isinstance(num_frames, int) or num_frames < 1:
                raise ValueError(f"num_frames: expected a positive int, got {num_frames!r}")
            self.num_frames = num_frames

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, T, H, W) -> (batch * T, C, H, W), clip-major."""
        pe = self.patch_embed
        check_video(x, pe.in_chans, 1, pe.patch_size)
        return x.transpose(1, 2).flatten(0, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, T, H, W) -> each frame's normalised tokens (batch, T, tokens, embed_dim)."""
        batch = x.shape[0]
        return super().forward_features(self._frames(x)).unflatten(0, (batch, -1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        batch = x.shape[0]
        x = pool_tokens(x.flatten(0, 1), self.global_pool, True, "head")  # per frame
        x = self.head_drop(x.unflatten(0, (batch, -1)).mean(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here, not inherited: FX wraps the no-trace helpers (check_video) of the module
        # that holds the traced forward
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
        """Block outputs in :class:`VideoMamba`'s layouts: maps ``(batch, C, frames, h, w)`` ('NCHW' or
        'NCTHW') or tokens (NLC, ``(batch, frames * h * w, C)``); the prefix tokens are the frames'
        class tokens ``(batch, frames, C)``; the final output is that of :meth:`forward_features`."""
        if output_fmt not in ("NCHW", "NCTHW", "NLC"):
            raise ValueError(f"output_fmt: expected 'NCHW', 'NCTHW' or 'NLC', got {output_fmt!r}")
        batch, steps = x.shape[0], x.shape[2]
        out = super().forward_intermediates(self._frames(x), indices, return_prefix_tokens, norm, stop_early,
                                            "NLC" if output_fmt == "NLC" else "NCHW", intermediates_only)
        final, intermediates = (None, out) if intermediates_only else out

        def clip_layout(y: torch.Tensor) -> torch.Tensor:
            if output_fmt == "NLC":  # frame after frame, as VideoMamba's tokens
                return y.reshape(batch, -1, y.shape[-1])
            return y.unflatten(0, (batch, steps)).transpose(1, 2).contiguous()

        if return_prefix_tokens:
            intermediates = [(clip_layout(y), cls.reshape(batch, steps, -1)) for y, cls in intermediates]
        else:
            intermediates = [clip_layout(y) for y in intermediates]
        if intermediates_only:
            return intermediates
        return final.unflatten(0, (batch, steps)), intermediates


def checkpoint_filter_fn(state_dict: dict, model: VideoMambaImage) -> dict:
    """Adapt an official VideoMamba checkpoint (image or video, in either layout) to ``model``.

    * unwraps ``{'model': ...}`` / ``{'module': ...}`` / ``{'state_dict': ...}``, strips ``module.``;
    * drops what no classifier has (``distill_head.*``, ``clip_decoder.*``, ``clip_pos_embed``) and
      names the masked pre-training model's final ``norm`` ``norm_f`` (the same trunk norm);
    * image file into a video model: the 2-D patch kernel is put in the middle time slice of the
      tubelet (an unsqueeze for tubelet 1) and ``temporal_pos_embedding`` starts at zero, as the
      official video fine-tuning starts from ImageNet;
    * resamples ``temporal_pos_embedding`` (linear) when the clip length differs, and ``pos_embed``
      (bicubic, class slot 0 kept apart) when the grid differs.

    A video file into an image model is refused (its temporal embedding has no place there).
    """
    if isinstance(state_dict.get("module"), dict) and not isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["module"]
    state_dict = state_dict_of(state_dict)
    out = {}
    for k, v in state_dict.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if isinstance(v, torch.Tensor) and not k.startswith(_EXTRA_PREFIXES):
            out[k] = v
    if "norm.weight" in out and "norm_f.weight" not in out:
        out["norm_f.weight"] = out.pop("norm.weight")

    key = "patch_embed.proj.weight"
    if isinstance(model, VideoMamba):
        tubelet = model.patch_embed.tubelet_size
        w = out.get(key)
        if w is not None and w.dim() == 4:  # an image checkpoint
            inflated = w.new_zeros(w.shape[0], w.shape[1], tubelet, *w.shape[2:])
            inflated[:, :, tubelet // 2] = w
            out[key] = inflated
        steps = model.temporal_pos_embedding.shape[1]
        temporal = out.get("temporal_pos_embedding")
        out["temporal_pos_embedding"] = (torch.zeros(1, steps, model.embed_dim) if temporal is None
                                         else resample_temporal_embed(temporal, steps))
    elif "temporal_pos_embedding" in out:
        raise ValueError("checkpoint: a video checkpoint (it has temporal_pos_embedding); build a video model, "
                         "videomamba_*_f<frames>_224, to load it")
    # the spatial part is Vim's: grid resampling with the class slot at index 0
    return vim_checkpoint_filter_fn(out, model, source_cls_position="head")


def _create(cls: type, variant: str, pretrained: bool = False, **kwargs) -> VideoMambaImage:
    out_indices = kwargs.pop("out_indices", 3)
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and "custom_load" not in overlay:
        # timm switches custom_load off when the overlay names a weight source; the file then has to go
        # through VideoMambaImage.load_pretrained still (the safe reader, either layout, head handling)
        hub_only = not (overlay.get("file") or overlay.get("url"))
        kwargs["pretrained_cfg_overlay"] = {**overlay, "custom_load": "hf" if hub_only else True}
    return build_model_with_cfg(
        cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(file: str | None = None, num_classes: int = 400, **kwargs) -> dict:
    """A released model: ``file`` in the (gated) Hugging Face Hub repository OpenGVLab/VideoMamba,
    saved as the official scripts did. Video defaults: a short-side resize to the input size and a
    square crop (crop_pct 1), bilinear, ImageNet mean/std (the official ``default_cfg`` is a
    placeholder that says otherwise)."""
    source = dict(hf_hub_id=_HUB, hf_hub_filename=file) if file else {}
    return {
        **source,
        "num_classes": num_classes, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bilinear", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "custom_load": "hf",  # VideoMambaImage.load_pretrained reads either file layout
        "license": "apache-2.0", "paper_ids": "arXiv:2403.06977", "origin_url": "https://github.com/OpenGVLab/VideoMamba",
        "notes": (f"official weights: https://huggingface.co/{_HUB} ({file}); the repository is gated (accept "
                  "its terms and log in) and its model card states a non-commercial licence for the weights; "
                  "a local copy loads with pretrained=True, pretrained_cfg_overlay=dict(file=PATH)",),
        **kwargs,
    }


_SIZE_LETTER = {"tiny": "t", "small": "s", "middle": "m", "base": "b"}
# released video checkpoints: tag -> (classes, test views (clips, crops), {size: frame counts})
_VIDEO_RELEASES = {
    "k400": (400, (4, 3), {"tiny": (8, 16, 32, 64), "small": (8, 16, 32, 64), "middle": (8, 16, 32, 64)}),
    "k400_mask_ft": (400, (4, 3), {"middle": (8, 32, 64)}),
    "ssv2": (174, (2, 3), {"tiny": (8, 16), "small": (8, 16), "middle": (8, 16)}),
    "ssv2_mask_ft": (174, (2, 3), {"middle": (8,)}),
    "breakfast": (10, (4, 3), {"tiny": (32, 64), "small": (32, 64), "middle": (32, 64)}),
    "breakfast_mask_ft": (10, (4, 3), {"middle": (32, 64)}),
    "coin": (180, (10, 3), {"tiny": (32, 64), "small": (32, 64), "middle": (32, 64)}),
    "coin_mask_ft": (180, (10, 3), {"middle": (32, 64)}),
}

default_cfgs = generate_default_cfgs({
    **{f"videomamba_{size}_patch16_224.in1k": _cfg(f"videomamba_{letter}16_in1k_res224.pth", 1000, crop_pct=0.875,
                                                   interpolation="bicubic")
       for size, letter in _SIZE_LETTER.items()},
    # the first tag of a name is its default: k400 comes first
    **{f"videomamba_{size}_f{frames}_224.{tag}": _cfg(
        f"videomamba_{_SIZE_LETTER[size]}16_{tag}_f{frames}_res224.pth", classes,
        description=f"{frames} frames; the official test: {views[0]} clips x {views[1]} crops, softmax-averaged")
       for tag, (classes, views, released) in _VIDEO_RELEASES.items()
       for size, frame_counts in released.items() for frames in frame_counts},
    # the frame-averaging baseline's weights are the image model's
    "videomamba_tiny_frameavg_f8_224.in1k": _cfg("videomamba_t16_in1k_res224.pth", 1000, crop_pct=0.875,
                                                 interpolation="bicubic"),
})


# --- image models ---------------------------------------------------------------------------------


@register_model
def videomamba_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VideoMambaImage:
    """VideoMamba-Ti, images: 7.148M parameters, 76.9% ImageNet top-1."""
    model_args = dict(patch_size=16, embed_dim=192, depth=24)
    return _create(VideoMambaImage, "videomamba_tiny_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_small_patch16_224(pretrained: bool = False, **kwargs) -> VideoMambaImage:
    """VideoMamba-S, images: 25.797M parameters, 81.2% ImageNet top-1."""
    model_args = dict(patch_size=16, embed_dim=384, depth=24)
    return _create(VideoMambaImage, "videomamba_small_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_middle_patch16_224(pretrained: bool = False, **kwargs) -> VideoMambaImage:
    """VideoMamba-M, images: 74.217M parameters, 82.8% ImageNet top-1 (self-distilled from S)."""
    model_args = dict(patch_size=16, embed_dim=576, depth=32)
    return _create(VideoMambaImage, "videomamba_middle_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_base_patch16_224(pretrained: bool = False, **kwargs) -> VideoMambaImage:
    """VideoMamba-B, images: 97.598M parameters, 82.7% ImageNet top-1 (self-distilled from S)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=24)
    return _create(VideoMambaImage, "videomamba_base_patch16_224", pretrained, **dict(model_args, **kwargs))


# --- video models (parameters with the 400-class Kinetics head; top-1 with 3 crops x 4 clips) ---


@register_model
def videomamba_tiny_f8_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-Ti, 8 frames: 7.034M parameters, K400 top-1 76.9, SSv2 65.1."""
    model_args = dict(patch_size=16, embed_dim=192, depth=24, num_frames=8)
    return _create(VideoMamba, "videomamba_tiny_f8_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_tiny_f16_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-Ti, 16 frames: 7.035M parameters, K400 top-1 78.1, SSv2 66.0."""
    model_args = dict(patch_size=16, embed_dim=192, depth=24, num_frames=16)
    return _create(VideoMamba, "videomamba_tiny_f16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_tiny_f32_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-Ti, 32 frames: 7.038M parameters, K400 top-1 78.8."""
    model_args = dict(patch_size=16, embed_dim=192, depth=24, num_frames=32)
    return _create(VideoMamba, "videomamba_tiny_f32_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_tiny_f64_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-Ti, 64 frames: 7.044M parameters, K400 top-1 79.6."""
    model_args = dict(patch_size=16, embed_dim=192, depth=24, num_frames=64)
    return _create(VideoMamba, "videomamba_tiny_f64_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_small_f8_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-S, 8 frames: 25.569M parameters, K400 top-1 79.3, SSv2 66.6."""
    model_args = dict(patch_size=16, embed_dim=384, depth=24, num_frames=8)
    return _create(VideoMamba, "videomamba_small_f8_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_small_f16_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-S, 16 frames: 25.572M parameters, K400 top-1 80.8, SSv2 67.7."""
    model_args = dict(patch_size=16, embed_dim=384, depth=24, num_frames=16)
    return _create(VideoMamba, "videomamba_small_f16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_small_f32_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-S, 32 frames: 25.578M parameters, K400 top-1 81.5."""
    model_args = dict(patch_size=16, embed_dim=384, depth=24, num_frames=32)
    return _create(VideoMamba, "videomamba_small_f32_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_small_f64_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-S, 64 frames: 25.590M parameters, K400 top-1 81.8."""
    model_args = dict(patch_size=16, embed_dim=384, depth=24, num_frames=64)
    return _create(VideoMamba, "videomamba_small_f64_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_middle_f8_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-M, 8 frames: 73.876M parameters, K400 top-1 80.6 (82.0 from masked pre-training), SSv2 67.3."""
    model_args = dict(patch_size=16, embed_dim=576, depth=32, num_frames=8)
    return _create(VideoMamba, "videomamba_middle_f8_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_middle_f16_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-M, 16 frames: 73.880M parameters, K400 top-1 81.9, SSv2 68.3."""
    model_args = dict(patch_size=16, embed_dim=576, depth=32, num_frames=16)
    return _create(VideoMamba, "videomamba_middle_f16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_middle_f32_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-M, 32 frames: 73.890M parameters, K400 top-1 82.4 (83.9 from masked pre-training)."""
    model_args = dict(patch_size=16, embed_dim=576, depth=32, num_frames=32)
    return _create(VideoMamba, "videomamba_middle_f32_224", pretrained, **dict(model_args, **kwargs))


@register_model
def videomamba_middle_f64_224(pretrained: bool = False, **kwargs) -> VideoMamba:
    """VideoMamba-M, 64 frames: 73.908M parameters, K400 top-1 82.8 (84.3 from masked pre-training)."""
    model_args = dict(patch_size=16, embed_dim=576, depth=32, num_frames=64)
    return _create(VideoMamba, "videomamba_middle_f64_224", pretrained, **dict(model_args, **kwargs))


# --- the frame-averaging baseline (no temporal modelling; same parameters as the image model) ---


@register_model
def videomamba_tiny_frameavg_f8_224(pretrained: bool = False, **kwargs) -> VideoMambaFrameAvg:
    """VideoMamba-Ti's image model on each of 8 frames, pooled features averaged (TSN): 7.148M parameters
    with a 1000-class head, the baseline a video model has to beat."""
    model_args = dict(patch_size=16, embed_dim=192, depth=24, num_frames=8)
    return _create(VideoMambaFrameAvg, "videomamba_tiny_frameavg_f8_224", pretrained, **dict(model_args, **kwargs))
