"""Dense-prediction models: 4-level feature pyramids from any backbone, UperNet, Mask R-CNN.

Every backbone is turned into the same thing (:func:`build_backbone`): a module that maps an NCHW
image to four NCHW maps at strides 4, 8, 16 and 32, with ``out_channels`` and ``strides``.

* hierarchical models (VMamba, ConvNeXt, ResNet, Swin, ...) through timm's ``features_only=True``;
  channels-last outputs (Swin) are permuted to NCHW;
* plain, single-scale models (Vim, and timm's ``vit_*`` / ``deit_*``) through
  ``forward_intermediates`` on four blocks and a :class:`SimpleFeaturePyramid` that rescales the
  stride-16 maps to strides 4, 8, 16 and 32, as BEiT's and Vim's segmentation code do.

On top of that:

* semantic segmentation: :class:`Segmentor` with mmseg's UperNet head (:class:`UperNetHead`) and
  FCN auxiliary head (:class:`FCNHead`). Submodule names follow mmseg (``decode_head.psp_modules``,
  ``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``; ``ConvModule`` blocks with
  ``conv`` / ``bn``), so an mmseg checkpoint's head maps over with prefix renames only;
  :func:`slide_inference` is mmseg's sliding-window test mode;
* detection and instance segmentation: torchvision's Faster / Mask R-CNN over a
  :class:`BackboneWithFPN` (:func:`build_detector`).

Nothing here downloads anything: weights come from a local file (``pretrained_path``) or not at all.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.layers import PatchEmbed as TimmPatchEmbed
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from visionssm.engine.models import create_model
from visionssm.models.checkpoint import read_checkpoint, state_dict_of

__all__ = [
    "BackboneWithFPN", "ConvBNReLU", "FCNHead", "HierarchicalBackbone", "PlainBackbone", "Segmentor",
    "SimpleFeaturePyramid", "UperNetHead", "build_backbone", "build_detector", "build_segmentor",
    "is_mmseg_checkpoint", "load_mmseg_checkpoint", "segmentation_loss", "slide_inference", "sliding_windows",
]

PYRAMID_STRIDES = (4, 8, 16, 32)
# single-scale models, read through forward_intermediates + SimpleFeaturePyramid
_PLAIN_PREFIXES = ("vim", "vit_", "deit")
_DETECTOR_KINDS = ("mask_rcnn", "faster_rcnn")


def _check_image(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected an image batch of shape (batch, channels, height, width), got {shape}")


# ---------------------------------------------------------------------------------------------
# backbones


class HierarchicalBackbone(nn.Module):
    """A timm ``features_only`` model; picks the levels at strides 4..32 and returns them NCHW.

    ``body`` is the timm feature model; ``levels`` indexes its output list; ``channels_last``:
    its maps are NHWC (Swin) and are permuted; ``pad_multiple``: the input is zero-padded on the
    right / bottom to a multiple of it (timm's ``PatchEmbed``, as in Swin, refuses other sizes);
    ``out_norm``: a channel LayerNorm per output (``outnorm0`` .. ``outnorm3``), as the official
    VMamba detection / segmentation backbone has (on by default for VMamba in :func:`build_backbone`).
    """

    def __init__(self, body: nn.Module, levels: Sequence[int], out_channels: Sequence[int],
                 channels_last: bool = False, pad_multiple: int = 1, out_norm: bool = False):
        super().__init__()
        self.body = body
        self.levels = list(levels)
        self.channels_last = channels_last
        self.pad_multiple = pad_multiple
        self.out_channels = list(out_channels)
        self.strides = list(PYRAMID_STRIDES)
        self.out_norm = out_norm
        if out_norm:
            for i, c in enumerate(self.out_channels):
                self.add_module(f"outnorm{i}", LayerNorm2d(c, eps=1e-5))

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size of the image the features describe (the input, padded to ``pad_multiple``)."""
        m = self.pad_multiple
        return height + -height % m, width + -width % m

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_image(x)
        m = self.pad_multiple
        if m > 1 and (x.shape[-2] % m or x.shape[-1] % m):
            x = F.pad(x, (0, -x.shape[-1] % m, 0, -x.shape[-2] % m))
        feats = self.body(x)
        feats = [feats[i] for i in self.levels]
        if self.channels_last:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        if self.out_norm:
            feats = [getattr(self, f"outnorm{i}")(f) for i, f in enumerate(feats)]
        return [f.contiguous() for f in feats]


class SimpleFeaturePyramid(nn.Module):
    """Four single-scale maps at ``in_stride`` -> maps at strides 4, 8, 16, 32 (map i to stride 4 * 2**i).

    The rescaling of BEiT's / Vim's segmentation neck (mmseg's ``Feature2Pyramid``): for an input
    stride of 16, level 0 is ConvTranspose(2, 2) -> BatchNorm -> GELU -> ConvTranspose(2, 2), level
    1 one ConvTranspose(2, 2), level 2 the identity and level 3 MaxPool(2). Other power-of-two input
    strides get as many transposed convs / as large a pool as they need. The pool uses
    ``ceil_mode`` so every level has ``ceil(size / 2)`` positions, as VMamba's stages.

    ``out_channels``: a 1x1 conv per level to that width (``projs``); None keeps ``in_channels``.
    ``ops.i`` keeps the layer indices of mmseg's ``upsample_4x`` / ``upsample_2x`` Sequentials, so
    their weights map by renaming the prefix.
    """

    def __init__(self, in_channels: int, in_stride: int = 16, out_channels: int | None = None):
        super().__init__()
        if in_stride < 1 or in_stride & (in_stride - 1):
            raise ValueError(f"in_stride: expected a power of two, got {in_stride}")
        self.in_channels = in_channels
        self.in_stride = in_stride
        self.ops = nn.ModuleList()
        for stride in PYRAMID_STRIDES:
            if stride < in_stride:
                steps = int(math.log2(in_stride // stride))
                layers: list[nn.Module] = []
                for k in range(steps):
                    if k:
                        layers += [nn.BatchNorm2d(in_channels), nn.GELU()]
                    layers.append(nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2))
                self.ops.append(nn.Sequential(*layers))
            elif stride == in_stride:
                self.ops.append(nn.Identity())
            else:
                factor = stride // in_stride
                self.ops.append(nn.MaxPool2d(kernel_size=factor, stride=factor, ceil_mode=True))
        self.projs = (nn.ModuleList([nn.Conv2d(in_channels, out_channels, 1) for _ in PYRAMID_STRIDES])
                      if out_channels is not None else None)
        self.out_channels = [out_channels or in_channels] * len(PYRAMID_STRIDES)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.ops):
            raise ValueError(f"feats: expected {len(self.ops)} maps, got {len(feats)}")
        out = [op(f) for op, f in zip(self.ops, feats, strict=True)]
        if self.projs is not None:
            out = [proj(f) for proj, f in zip(self.projs, out, strict=True)]
        return out


class PlainBackbone(nn.Module):
    """A single-scale model (Vim, ViT): four blocks' outputs through a :class:`SimpleFeaturePyramid`.

    The image is zero-padded on the right / bottom so that the patch grid covers it
    (``ceil(H / stride)`` rows); the features then describe the padded image, whose top-left part
    is the input. Level i has ``4 * 2**i``-pixel cells: ``ceil(H / 16)`` rows at stride 16,
    ``4 * ceil(H / 16)`` at stride 4 and ``ceil(ceil(H / 16) / 2)`` at stride 32.
    """

    def __init__(self, body: nn.Module, indices: Sequence[int], pyramid_channels: int | None = None):
        super().__init__()
        proj = body.patch_embed.proj
        self.patch_size = tuple(proj.kernel_size)
        self.patch_stride = tuple(proj.stride)
        if self.patch_stride[0] != self.patch_stride[1]:
            raise ValueError(f"body: expected a square patch stride, got {self.patch_stride}")
        self.body = body
        self.indices = list(indices)
        self._take = sorted(set(self.indices))  # forward_intermediates returns each block once
        dim = body.feature_info[self.indices[-1]]["num_chs"]
        self.pyramid = SimpleFeaturePyramid(dim, self.patch_stride[0], pyramid_channels)
        self.out_channels = self.pyramid.out_channels
        self.strides = list(PYRAMID_STRIDES)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The input size after padding: the smallest one whose grid has ceil(size / stride) positions."""
        return tuple((-(-n // s) - 1) * s + p for n, s, p in
                     zip((height, width), self.patch_stride, self.patch_size, strict=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_image(x)
        height, width = self.padded_size(x.shape[-2], x.shape[-1])
        if (height, width) != tuple(x.shape[-2:]):
            x = F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))
        maps = self.body.forward_intermediates(x, indices=self._take, norm=False, output_fmt="NCHW",
                                               intermediates_only=True)
        by_index = dict(zip(self._take, maps, strict=True))
        return self.pyramid([by_index[i] for i in self.indices])


def _default_block_indices(depth: int) -> list[int]:
    """Four blocks evenly spaced, ending at the last: [5, 11, 17, 23] for 24, [2, 5, 8, 11] for 12."""
    return [max((k + 1) * depth // 4 - 1, 0) for k in range(4)]


def build_backbone(name: str, img_size: int | None = None, out_indices=None, pyramid_channels: int | None = None,
                   pretrained_path: str | None = None, **model_kwargs) -> nn.Module:
    """A timm model as a 4-level pyramid: ``forward(x) -> [maps at strides 4, 8, 16, 32]`` (NCHW).

    Args:
        name: a timm model name. ``vim*``, ``vit_*`` and ``deit*`` are read as single-scale models
            (blocks ``out_indices``, default four evenly spaced ending at the last, plus a
            :class:`SimpleFeaturePyramid`); any other name needs ``features_only=True`` with levels
            at strides 4, 8, 16 and 32 (VMamba, ConvNeXt, ResNet, Swin, ...).
        img_size: the native size, for models that have one (Vim, ViT, Swin); others ignore it.
            ViT and Swin are built with ``dynamic_img_size=True`` so any input size works; Vim
            resamples its position embeddings at run time.
        out_indices: plain models: the four block indices; hierarchical models: timm's
            ``out_indices`` (default: all levels, of which those at strides 4..32 are used).
        pyramid_channels: plain models only: 1x1 convs to this width per level (default: embed dim).
        pretrained_path: a local classification checkpoint, loaded through timm
            (``pretrained_cfg_overlay=dict(file=...)``) into the model before it is wrapped, with the
            model's ``checkpoint_filter_fn``; the classifier is dropped.
        model_kwargs: passed to ``timm.create_model`` (e.g. ``depths``, ``dims``, ``depth``, ``embed_dim``).

    The result has ``out_channels`` and ``strides`` (lists of 4) and ``body``, the timm model
    (hierarchical: timm's feature wrapper; plain: the model itself, pruned after the last block used).
    """
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"name: expected a timm model name (see timm.list_models()), got {name!r}")
    kwargs = dict(model_kwargs)
    if pretrained_path is not None:
        if not os.path.isfile(pretrained_path):
            raise ValueError(f"pretrained_path: expected an existing checkpoint file, got {pretrained_path!r}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_path)))
    optional = {"dynamic_img_size": True}
    if img_size is not None:
        optional["img_size"] = img_size
    if name.startswith(_PLAIN_PREFIXES):
        return _build_plain(name, optional, out_indices, pyramid_channels, kwargs)
    if pyramid_channels is not None:
        raise ValueError(f"pyramid_channels: only plain (single-scale) backbones take it, got "
                         f"{pyramid_channels!r} for the hierarchical model {name!r}")
    return _build_hierarchical(name, optional, out_indices, kwargs)


def _build_plain(name: str, optional: dict, out_indices, pyramid_channels: int | None, kwargs: dict) -> nn.Module:
    kwargs.setdefault("num_classes", 0)  # (features_only models drop their head themselves)
    body = create_model(name, model_kwargs=kwargs, optional=optional)
    if not hasattr(body, "forward_intermediates") or not hasattr(getattr(body, "patch_embed", None), "proj"):
        raise ValueError(f"name: {name!r} has no forward_intermediates / patch_embed.proj; it cannot give "
                         "a 4-level pyramid")
    depth = len(body.feature_info)
    if out_indices is None:
        indices = _default_block_indices(depth)
    else:
        indices = [int(i) for i in out_indices]
        if len(indices) != 4 or any(not -depth <= i < depth for i in indices):
            raise ValueError(f"out_indices: expected 4 block indices in [-{depth}, {depth}) for {name!r} "
                             f"(depth {depth}), got {list(out_indices)}")
        indices = [i % depth for i in indices]
    stride = body.patch_embed.proj.stride[0]
    if stride & (stride - 1) or not 4 <= stride <= 32:
        raise ValueError(f"name: {name!r} has patch stride {stride}; a 4-level pyramid at strides 4..32 "
                         "needs a power of two between 4 and 32")
    if hasattr(body, "prune_intermediate_layers"):
        # blocks after the last index, the final norm and the head are unused: drop them (no
        # parameters without gradients, which DistributedDataParallel would refuse)
        body.prune_intermediate_layers([max(indices)], prune_norm=True, prune_head=True)
    return PlainBackbone(body, indices, pyramid_channels)


def _build_hierarchical(name: str, optional: dict, out_indices, kwargs: dict) -> nn.Module:
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    try:
        body = create_model(name, model_kwargs=dict(kwargs, features_only=True), optional=optional)
    except (RuntimeError, AssertionError) as e:  # timm's message for models without feature extraction
        if "feature" not in str(e):
            raise
        raise ValueError(f"name: {name!r} does not support features_only=True, so it cannot give a "
                         f"4-level pyramid ({e})") from e
    reductions = list(body.feature_info.reduction())
    channels = list(body.feature_info.channels())
    levels = []
    for stride in PYRAMID_STRIDES:
        at = [i for i, r in enumerate(reductions) if r == stride]
        if not at:
            hint = (" (a plain ViT-like model: only vim*/vit_*/deit* are read through a simple pyramid)"
                    if len(set(reductions)) == 1 else "")
            raise ValueError(f"name: {name!r} cannot give a 4-level pyramid at strides {list(PYRAMID_STRIDES)}: "
                             f"its feature levels have strides {reductions}"
                             f"{' for out_indices ' + str(list(out_indices)) if out_indices is not None else ''}"
                             f"{hint}")
        levels.append(at[-1])
    fmt = getattr(body, "output_fmt", "NCHW")
    channels_last = str(getattr(fmt, "value", fmt)) == "NHWC"
    pad = 1
    for m in body.modules():  # the stem of Swin-like models refuses sizes that are not multiples of a patch
        if isinstance(m, TimmPatchEmbed):
            if not getattr(m, "dynamic_img_pad", False):
                pad = math.lcm(*m.patch_size)
            break
    return HierarchicalBackbone(body, levels, [channels[i] for i in levels], channels_last, pad,
                                out_norm=name.startswith("vmamba"))


# ---------------------------------------------------------------------------------------------
# semantic segmentation


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, with mmcv ``ConvModule``'s names: ``conv``, ``bn``, ``activate``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            activate=nn.ReLU(inplace=True),
        ))


def _resize(x: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def _check_positive(**values) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")


class UperNetHead(nn.Module):
    """UperNet decode head (Xiao et al. 2018) as in mmseg's ``UPerHead``: logits at the first level's stride.

    A pyramid pooling module on the last level (``psp_modules``: adaptive average pool to each of
    ``pool_scales``, 1x1 ConvBNReLU, bilinear upsampling; concatenated with the input and fused by
    the 3x3 ``bottleneck``), 1x1 ``lateral_convs`` on the other levels, top-down addition with
    bilinear upsampling, 3x3 ``fpn_convs``, everything upsampled to the first level and
    concatenated, the 3x3 ``fpn_bottleneck``, ``dropout`` (Dropout2d) and the 1x1 ``conv_seg``.

    BatchNorm in training needs more than one value per channel: with the pool scale 1, a batch of
    at least 2 images.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 512, *, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, align_corners: bool = False):
        super().__init__()
        in_channels = list(in_channels)
        if len(in_channels) < 2:
            raise ValueError(f"in_channels: expected at least 2 levels, got {in_channels}")
        _check_positive(channels=channels, num_classes=num_classes)
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.pool_scales = tuple(pool_scales)
        self.align_corners = align_corners
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(top, channels, 1)) for scale in self.pool_scales])
        self.bottleneck = ConvBNReLU(top + len(self.pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvBNReLU(channels, channels, 3, padding=1) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [_resize(m(x), x.shape[-2:], self.align_corners) for m in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"feats: expected {len(self.in_channels)} maps, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1], strict=True)]
        laterals.append(self.psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:], self.align_corners)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [_resize(o, size, self.align_corners) for o in outs[1:]]
        x = self.fpn_bottleneck(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(x))


class FCNHead(nn.Module):
    """mmseg's ``FCNHead``, the auxiliary head of its UperNet configs: ``num_convs`` 3x3 ConvBNReLU
    (``convs``; none: the identity, needs ``in_channels == channels``), optionally ``conv_cat`` on the
    concatenation with the input, ``dropout`` and the 1x1 ``conv_seg``, on ``feats[in_index]``."""

    def __init__(self, in_channels: int, channels: int = 256, *, num_classes: int, num_convs: int = 1,
                 concat_input: bool = False, dropout: float = 0.1, in_index: int = 2, align_corners: bool = False):
        super().__init__()
        _check_positive(in_channels=in_channels, channels=channels, num_classes=num_classes)
        if not isinstance(num_convs, int) or num_convs < 0:
            raise ValueError(f"num_convs: expected an int >= 0, got {num_convs!r}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError(f"channels: with num_convs=0 expected in_channels ({in_channels}), got {channels}")
        self.in_index = in_index
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.convs = (nn.Sequential(*[ConvBNReLU(in_channels if i == 0 else channels, channels, 3, padding=1)
                                      for i in range(num_convs)]) if num_convs else nn.Identity())
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, 3, padding=1) if concat_input else None
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = feats if isinstance(feats, torch.Tensor) else feats[self.in_index]
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], dim=1))
        return self.conv_seg(self.dropout(y))


class Segmentor(nn.Module):
    """Backbone + decode head (+ auxiliary head), mmseg's ``EncoderDecoder`` names.

    ``forward(x) -> {"out": logits (N, num_classes, H, W)}``, bilinearly upsampled to the input
    size (to the backbone's ``padded_size`` and cropped, when it pads the image); in training mode
    with an auxiliary head also ``"aux"`` (same shape).
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, auxiliary_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.num_classes = decode_head.num_classes
        self.align_corners = getattr(decode_head, "align_corners", False)

    def _upsample(self, logits: torch.Tensor, size, padded) -> torch.Tensor:
        return _resize(logits, padded, self.align_corners)[..., :size[0], :size[1]]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_image(x)
        size = tuple(x.shape[-2:])
        # a backbone that pads the image (Vim to its patch grid) has features of the padded image:
        # upsample the logits to that size and crop, so that they stay aligned with the pixels
        padded = self.backbone.padded_size(*size) if hasattr(self.backbone, "padded_size") else size
        feats = self.backbone(x)
        out = {"out": self._upsample(self.decode_head(feats), size, padded)}
        if self.training and self.auxiliary_head is not None:
            out["aux"] = self._upsample(self.auxiliary_head(feats), size, padded)
        return out


def build_segmentor(backbone: str, num_classes: int, img_size: int | None = None, channels: int = 512,
                    aux: bool = True, pyramid_channels: int | None = None,
                    backbone_kwargs: dict | None = None) -> Segmentor:
    """UperNet on :func:`build_backbone` (mmseg's UperNet configs): decode head of ``channels`` width,
    pool scales (1, 2, 3, 6), dropout 0.1; with ``aux`` an FCN head of ``channels // 2`` on the
    stride-16 level. ``backbone_kwargs`` go to :func:`build_backbone` (``out_indices``,
    ``pretrained_path``, model arguments)."""
    _check_positive(num_classes=num_classes, channels=channels)
    bb = build_backbone(backbone, img_size=img_size, pyramid_channels=pyramid_channels, **(backbone_kwargs or {}))
    head = UperNetHead(bb.out_channels, channels, num_classes=num_classes)
    aux_head = (FCNHead(bb.out_channels[2], max(channels // 2, 1), num_classes=num_classes, in_index=2)
                if aux else None)
    return Segmentor(bb, head, aux_head)


def segmentation_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, ignore_index: int = 255,
                      aux_weight: float = 0.4) -> torch.Tensor:
    """Pixel cross-entropy of ``outputs["out"]`` plus ``aux_weight`` times that of ``outputs["aux"]``
    when present (mmseg's UperNet weights: 1 and 0.4). ``target``: (N, H, W) class indices."""
    if target.dim() != 3 or target.shape[-2:] != outputs["out"].shape[-2:]:
        raise ValueError(f"target: expected shape (N, {', '.join(map(str, outputs['out'].shape[-2:]))}), "
                         f"got {tuple(target.shape)}")
    target = target.long()
    loss = F.cross_entropy(outputs["out"], target, ignore_index=ignore_index)
    if "aux" in outputs:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"], target, ignore_index=ignore_index)
    return loss


def _pair(v, name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or any(not isinstance(p, int) or p < 1 for p in pair):
        raise ValueError(f"{name}: expected a positive int or (height, width), got {v!r}")
    return pair


def sliding_windows(height: int, width: int, crop_size, stride) -> list[tuple[int, int, int, int]]:
    """mmseg's windows (y1, y2, x1, x2): a grid of ``stride`` steps, the last one moved back to the
    border; a side smaller than the crop gets one window of that side's size."""
    (ch, cw), (sh, sw) = _pair(crop_size, "crop_size"), _pair(stride, "stride")
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return windows


@torch.no_grad()
def slide_inference(model: nn.Module, x: torch.Tensor, num_classes: int, crop_size, stride) -> torch.Tensor:
    """mmseg's sliding-window inference: logits (N, num_classes, H, W), the mean over the windows.

    Windows of ``crop_size`` every ``stride`` pixels (int or (height, width)), the last one aligned
    to the border, so every pixel is covered; an image smaller than the crop is zero-padded on the
    right / bottom to it and the result cropped back. Runs ``model(crop)["out"]`` in eval mode (the
    model's mode is restored afterwards) without gradients. The sums are kept in float32.
    """
    _check_image(x)
    (ch, cw), (sh, sw) = _pair(crop_size, "crop_size"), _pair(stride, "stride")
    if sh > ch or sw > cw:
        raise ValueError(f"stride: expected at most crop_size {(ch, cw)} so every pixel is covered, got {(sh, sw)}")
    _check_positive(num_classes=num_classes)
    batch, _, height, width = x.shape
    ph, pw = max(ch - height, 0), max(cw - width, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    H, W = x.shape[-2:]
    was_training = model.training
    model.eval()
    try:
        logits = torch.zeros(batch, num_classes, H, W, device=x.device, dtype=torch.float32)
        count = torch.zeros(1, 1, H, W, device=x.device, dtype=torch.float32)
        out_dtype = None
        for y1, y2, x1, x2 in sliding_windows(H, W, (ch, cw), (sh, sw)):
            out = model(x[:, :, y1:y2, x1:x2])["out"]
            if out.shape != (batch, num_classes, y2 - y1, x2 - x1):
                raise ValueError(f"model: expected window logits of shape {(batch, num_classes, y2 - y1, x2 - x1)}, "
                                 f"got {tuple(out.shape)} (num_classes={num_classes})")
            out_dtype = out.dtype
            logits[:, :, y1:y2, x1:x2] += out.float()
            count[:, :, y1:y2, x1:x2] += 1
    finally:
        model.train(was_training)
    return (logits / count)[:, :, :height, :width].to(out_dtype)


# ---------------------------------------------------------------------------------------------
# detection / instance segmentation


class BackboneWithFPN(nn.Module):
    """A :func:`build_backbone` pyramid + torchvision's FPN and an extra max-pooled level.

    ``forward(x) -> OrderedDict("0", "1", "2", "3" at strides 4..32, "pool" at 64)``, each
    ``out_channels`` wide: the input torchvision's detectors expect (names as torchvision's
    ``BackboneWithFPN``: ``body``, ``fpn``).
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 256):
        super().__init__()
        _check_positive(out_channels=out_channels)
        self.body = backbone
        self.fpn = FeaturePyramidNetwork(list(backbone.out_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_detector(backbone: str, num_classes: int, kind: str = "mask_rcnn", img_size: int | None = None,
                   min_size: int = 800, max_size: int = 1333, backbone_kwargs: dict | None = None,
                   **detector_kwargs) -> nn.Module:
    """torchvision's Mask R-CNN (``kind="mask_rcnn"``) or Faster R-CNN (``"faster_rcnn"``) on a
    :class:`BackboneWithFPN` over :func:`build_backbone`.

    ``num_classes`` counts the background (torchvision's convention): COCO's 80 categories are
    ``num_classes=91`` with the original ids or 81 with contiguous ones; label 0 is background.
    Anchors and RoI pooling are torchvision's FPN defaults: one size per level (32, 64, 128, 256,
    512) with aspect ratios (0.5, 1, 2), ``MultiScaleRoIAlign`` over "0".."3" (7x7 boxes, 14x14
    masks). The detector resizes each image to ``min_size`` / ``max_size`` and pads the batch to a
    multiple of 32. ``detector_kwargs`` go to the torchvision class (and override these defaults).
    """
    if kind not in _DETECTOR_KINDS:
        raise ValueError(f"kind: expected one of {_DETECTOR_KINDS}, got {kind!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2 (the background counts as a class), got {num_classes!r}")
    body = BackboneWithFPN(build_backbone(backbone, img_size=img_size, **(backbone_kwargs or {})))
    kwargs = dict(
        rpn_anchor_generator=AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5),
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
    )
    if kind == "mask_rcnn":
        kwargs["mask_roi_pool"] = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2)
    kwargs.update(detector_kwargs)
    cls = MaskRCNN if kind == "mask_rcnn" else FasterRCNN
    return cls(body, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)


# ---------------------------------------------------------------------------------------------
# official dense checkpoints


def _read_state_dict(path: str) -> dict:
    # mmengine saves {'state_dict': ..., 'meta': ...}, which state_dict_of unwraps
    return state_dict_of(read_checkpoint(path), path=path)


def is_mmseg_checkpoint(path: str) -> bool:
    """Whether ``path`` holds a whole mmseg segmentor (``decode_head.*`` keys), not a classifier."""
    return any(k.startswith("decode_head.") for k in _read_state_dict(path))


def load_mmseg_checkpoint(model: Segmentor, path: str) -> None:
    """Load an mmseg UperNet checkpoint of VMamba (the official release's layout: ``backbone.*`` as
    the VMamba classifier's keys plus ``backbone.outnorm{i}``, then ``decode_head.*`` and
    ``auxiliary_head.*``) into a :class:`Segmentor` built with the same VMamba variant and classes.
    Legacy backbone key names are renamed as for classification; a key that does not fit is an error
    that lists the missing and unexpected keys."""
    from visionssm.models.vmamba import VMamba, checkpoint_filter_fn

    body = getattr(model.backbone, "body", None)
    vmamba = getattr(body, "model", None)
    if not isinstance(vmamba, VMamba):
        raise ValueError(f"model: expected a Segmentor over a VMamba backbone, got {type(model.backbone).__name__} "
                         f"over {type(vmamba or body).__name__}")
    sd = _read_state_dict(path)
    backbone = {k[len("backbone."):]: v for k, v in sd.items()
                if k.startswith("backbone.") and not k.startswith("backbone.outnorm")}
    out = {f"backbone.body.model.{k}": v for k, v in checkpoint_filter_fn(backbone, vmamba).items()}
    out.update({k: v for k, v in sd.items()
                if k.startswith(("backbone.outnorm", "decode_head.", "auxiliary_head."))})
    unused = sorted(k for k in sd if not k.startswith(("backbone.", "decode_head.", "auxiliary_head.")))
    missing, unexpected = model.load_state_dict(out, strict=False)
    if missing or unexpected or unused:
        raise ValueError(f"path: {path!r} does not fit this segmentor: missing {sorted(missing)[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {sorted(unexpected + unused)[:8]}")
