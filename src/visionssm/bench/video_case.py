"""One case of the video benchmark: a model, given as 'NAME[:key=value...]', on a clip of some frames.

The models a user would set VideoMamba against:

* this library's video models (``videomamba_tiny_f8_224``, ...), built for the clip's length
  (``num_frames``) and frame size;
* ``joint_vit_tiny``: a ViT-Ti whose every token attends to every token of every frame, the peer
  of the VideoMamba paper's speed and memory figure ("TimeSformer-Ti", its ``video_sm/models/deit.py``):
  DeiT-Ti's blocks (timm's, dim 192, depth 12, 3 heads) over VideoMamba's embedding (a Conv3d of
  one frame by 16x16 pixels, a class token, a spatial position table shared by the frames and a
  temporal one). Its attention runs in either mode of the models benchmark: 'sdpa' or 'explicit';
* torchvision's video models (``mvit_v2_s``, ``swin3d_t``, ``r2plus1d_18``, ...), random weights.

It runs as the image cases do (:mod:`visionssm.bench.model_case`): :func:`measure_case` in a fresh
process (size, MACs, warmed-up step for the peak memory), :func:`time_case` in a process kept alive
for the timing rounds; both with ``threads`` torch threads.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from visionssm.bench.model_case import model_kind, parse_model, set_attention, setup_step
from visionssm.engine import models as engine
from visionssm.models.videomamba import PatchEmbed3d, embed_video_tokens

JOINT_VIT = "joint_vit_tiny"
# torchvision's video models that are transformers (the others are CNNs)
TORCHVISION_ATTENTION = ("mvit_", "swin3d_")


class JointSpaceTimeViT(nn.Module):
    """A ViT over all 1 + frames * h * w tokens of a clip (joint space-time attention); see the module
    docstring. Attention in timm's ``Attention``, so its ``fused_attn`` switch picks the mode."""

    def __init__(self, img_size: int | tuple[int, int] = 224, num_frames: int = 8, patch_size: int = 16,
                 in_chans: int = 3, num_classes: int = 400, embed_dim: int = 192, depth: int = 12,
                 num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        self.in_chans, self.num_classes, self.num_heads = in_chans, num_classes, num_heads
        self.patch_embed = PatchEmbed3d(img_size, patch_size, 1, num_frames, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True,
                                            norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = embed_video_tokens(self.patch_embed(x), self.cls_token, self.pos_embed, self.temporal_pos_embedding,
                               self.patch_embed.grid_size)
        return self.head(self.norm(self.blocks(x))[:, 0])


def torchvision_models() -> list[str]:
    """torchvision's video classification models (none when torchvision is not installed)."""
    try:
        import torchvision.models as tvm
    except ImportError:
        return []
    return tvm.list_models(module=tvm.video)


def is_known(model: str) -> bool:
    """Whether the benchmark can build 'NAME[:key=value...]' (the joint ViT, a torchvision video
    model or a timm model; whether a timm model takes clips shows when its case runs)."""
    import timm

    name = parse_model(model)[0]
    return name == JOINT_VIT or name in torchvision_models() or timm.is_model(name)


def video_kind(model: str) -> str:
    """'ssm', 'attention' or 'other' (torchvision's MViT and Swin3D count as attention)."""
    name = parse_model(model)[0]
    if name == JOINT_VIT:
        return "attention"
    if name in torchvision_models():
        return "attention" if name.startswith(TORCHVISION_ATTENTION) else "other"
    return model_kind(model)


def has_attention_modes(model: str) -> bool:
    """Whether the model's attention has timm's ``fused_attn`` switch (it then runs in both modes)."""
    name = parse_model(model)[0]
    if name in torchvision_models():
        return False
    try:
        with torch.device("meta"):  # nothing allocated
            net = create_video_model(model, 2, (32, 32))
    except Exception:
        return False
    return any(hasattr(m, "fused_attn") for m in net.modules())


def _conv_out(n: int, conv: nn.Conv3d, axis: int) -> int:
    span = conv.dilation[axis] * (conv.kernel_size[axis] - 1) + 1
    return (n + 2 * conv.padding[axis] - span) // conv.stride[axis] + 1


def create_video_model(model: str, frames: int, size: tuple[int, int], attention: str = "-") -> nn.Module:
    """The model 'NAME[:key=value...]' (random init) for clips of ``frames`` frames of ``size``
    (height, width), attention in mode 'sdpa' or 'explicit' where it has the switch ('-': as built)."""
    name, kwargs = parse_model(model)
    if name == JOINT_VIT:
        net = JointSpaceTimeViT(**{"img_size": size, "num_frames": frames, **kwargs})
    elif name in torchvision_models():
        import torchvision.models as tvm

        net = tvm.get_model(name, weights=None, **kwargs)
        net.in_chans = 3
        if hasattr(net, "pos_encoding"):  # MViT: built for 16x224x224; its token grid set to the clip's
            conv = net.conv_proj  # (the relative position tables are interpolated on the fly, as torchvision does)
            net.pos_encoding.temporal_size = _conv_out(frames, conv, 0)
            net.pos_encoding.spatial_size = (_conv_out(size[0], conv, 1), _conv_out(size[1], conv, 2))
    else:
        net = engine.create_model(name, img_size=size, model_kwargs={"num_frames": frames, **kwargs})
    return set_attention(net, attention)


def explicit_attention_mb(model: str, frames: int, size: tuple[int, int]) -> float | None:
    """MB the joint ViT's explicit attention holds at its peak: the scores and their softmax, two
    (heads x tokens x tokens) float32 matrices; None for the other models (not estimated)."""
    name, kwargs = parse_model(model)
    if name != JOINT_VIT:
        return None
    patch, heads = kwargs.get("patch_size", 16), kwargs.get("num_heads", 3)
    tokens = 1 + frames * (size[0] // patch) * (size[1] // patch)
    return 2 * heads * tokens**2 * 4 / 2**20


def _set_threads(threads: int) -> None:
    """``threads`` for torch and for the numba kernels of the CPU scan (at most the ones numba started with)."""
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def _case(child, model, attention, frames, height, width, batch_size, device, threads, count):
    _set_threads(threads)
    return setup_step(child, lambda: create_video_model(model, frames, (height, width), attention),
                      (frames, height, width), batch_size, False, device, count)


def measure_case(child, model: str, attention: str, frames: int, height: int, width: int, batch_size: int,
                 device: str, threads: int):
    """Run in the case's fresh process: emit params_m, weights_mb and gmacs (per clip); return the
    warmed-up inference step whose peak memory the runner measures (None when it cannot be built)."""
    return _case(child, model, attention, frames, height, width, batch_size, device, threads, count=True)


def time_case(child, model: str, attention: str, frames: int, height: int, width: int, batch_size: int,
              device: str, threads: int):
    """Run in the case's process kept alive for the timing rounds: the warmed-up inference step."""
    return _case(child, model, attention, frames, height, width, batch_size, device, threads, count=False)
