"""The optional OpenMMLab registration (runs where mmengine is installed: pip install mmengine)."""

import pytest
import torch

mmengine = pytest.importorskip("mmengine")


def test_a_child_registry_builds_our_backbone_from_a_config():
    from mmengine.registry import MODELS, Registry

    import visionssm.dense.mmlab  # noqa: F401  (what custom_imports does)

    seg_models = Registry("model", parent=MODELS, scope="mmseg_like")  # as mmseg's MODELS is made
    cfg = dict(type="VisionSSMBackbone", name="vmamba_tiny_s1l8", dims=8, depths=[1, 1, 1, 1])
    backbone = seg_models.build(cfg)
    feats = backbone(torch.randn(1, 3, 64, 96))
    assert isinstance(feats, tuple) and [f.shape[1] for f in feats] == backbone.out_channels == [8, 16, 32, 64]
    assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
