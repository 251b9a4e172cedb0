"""Our backbones in OpenMMLab configs (mmdet / mmseg 3.x on mmengine). Never imported by default.

In a config::

    custom_imports = dict(imports=["visionssm.dense.mmlab"], allow_failed_imports=False)
    model = dict(backbone=dict(type="VisionSSMBackbone", name="vmamba_tiny_s1l8",
                               pretrained_path="vssm_tiny.pth", drop_path_rate=0.2), ...)
    # the neck / decode head then takes in_channels=[96, 192, 384, 768] (the backbone's out_channels)

The class is registered in mmengine's root ``MODELS`` registry, which mmdet's and mmseg's registries
search when a type is not their own. It returns the four maps at strides 4, 8, 16, 32 as a tuple,
as their backbones do (Vim through the simple feature pyramid; see ``visionssm.dense.models``).
Needs ``pip install mmengine``.
"""

from __future__ import annotations

try:
    from mmengine.model import BaseModule
    from mmengine.registry import MODELS
except ImportError as e:  # pragma: no cover - exercised only without mmengine
    raise ImportError("visionssm.dense.mmlab needs mmengine: pip install mmengine") from e

from visionssm.dense.models import build_backbone


@MODELS.register_module()
class VisionSSMBackbone(BaseModule):
    """``build_backbone(name, ...)`` as an mmengine module; ``init_cfg`` as for any BaseModule."""

    def __init__(self, name: str, img_size: int | None = None, out_indices=None, pyramid_channels: int | None = None,
                 pretrained_path: str | None = None, init_cfg=None, **model_kwargs):
        super().__init__(init_cfg)
        self.net = build_backbone(name, img_size, out_indices, pyramid_channels, pretrained_path, **model_kwargs)
        self.out_channels = list(self.net.out_channels)

    def forward(self, x):
        return tuple(self.net(x))
