"""Dense-prediction models: pyramids from every backbone kind, UperNet, sliding windows, Mask R-CNN."""

import math

import pytest
import timm
import torch
import torch.nn as nn

import visionssm  # noqa: F401  (registers the models with timm)
from visionssm.dense.models import (
    BackboneWithFPN,
    FCNHead,
    Segmentor,
    SimpleFeaturePyramid,
    UperNetHead,
    build_backbone,
    build_detector,
    build_segmentor,
    segmentation_loss,
    slide_inference,
    sliding_windows,
)

# tiny variants: a forward at 64x96 takes milliseconds
VMAMBA = ("vmamba_tiny_s1l8", dict(depths=(1, 1, 1, 1), dims=8))
VIM = ("vim_tiny_patch16_224", dict(depth=4, embed_dim=32))
CNN = ("resnet18", {})
SIZES = [(64, 96), (72, 100)]  # the second is a multiple of neither 16 nor 32


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name,kwargs", [VMAMBA, VIM, CNN], ids=["vmamba", "vim", "resnet18"])
def test_backbone_pyramid(name, kwargs):
    bb = build_backbone(name, **kwargs)
    assert bb.strides == [4, 8, 16, 32]
    assert isinstance(bb.body, nn.Module)
    for h, w in SIZES:
        feats = bb(torch.randn(2, 3, h, w))
        assert len(feats) == 4
        assert [f.shape[1] for f in feats] == bb.out_channels
        for f, s in zip(feats, bb.strides, strict=True):
            assert f.shape[0] == 2
            if name.startswith("vim"):  # features of the image padded to 16: exactly ceil(padded / stride)
                ph, pw = bb.padded_size(h, w)
                assert (ph, pw) == (16 * math.ceil(h / 16), 16 * math.ceil(w / 16))
                assert tuple(f.shape[-2:]) == (math.ceil(ph / s), math.ceil(pw / s))
            elif name.startswith("vmamba"):  # pads every stage: ceil
                assert tuple(f.shape[-2:]) == (math.ceil(h / s), math.ceil(w / s))
            else:
                assert h // s <= f.shape[-2] <= math.ceil(h / s) and w // s <= f.shape[-1] <= math.ceil(w / s)


def test_vim_pyramid_layout_and_indices():
    bb = build_backbone("vim_tiny_patch16_224", depth=12, embed_dim=16, pyramid_channels=8)
    assert bb.indices == [2, 5, 8, 11]
    assert bb.out_channels == [8] * 4
    ops = bb.pyramid.ops
    assert [type(m) for m in ops[0]] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.GELU, nn.ConvTranspose2d]
    assert [type(m) for m in ops[1]] == [nn.ConvTranspose2d]
    assert isinstance(ops[2], nn.Identity) and isinstance(ops[3], nn.MaxPool2d)
    feats = bb(torch.randn(1, 3, 48, 80))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 12, 20), (1, 8, 6, 10), (1, 8, 3, 5), (1, 8, 2, 3)]
    # 24 blocks -> [5, 11, 17, 23]; explicit (negative) indices are normalised
    assert build_backbone("vim_tiny_patch16_224", depth=24, embed_dim=8).indices == [5, 11, 17, 23]
    assert build_backbone("vim_tiny_patch16_224", depth=4, embed_dim=8, out_indices=(0, 1, 2, -1)).indices \
        == [0, 1, 2, 3]
    # the blocks after the last index and the final norm are pruned: every parameter gets a gradient
    bb = build_backbone("vim_tiny_patch16_224", depth=4, embed_dim=8, out_indices=(0, 0, 1, 1))
    assert len(bb.body.layers) == 2
    sum(f.sum() for f in bb(torch.randn(2, 3, 32, 48))).backward()
    assert all(p.grad is not None for p in bb.parameters())


def test_simple_pyramid_stride8():
    pyr = SimpleFeaturePyramid(4, in_stride=8)
    feats = pyr([torch.randn(1, 4, 8, 12)] * 4)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_swin_channels_last_any_size():
    bb = build_backbone("swin_tiny_patch4_window7_224", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    feats = bb(torch.randn(1, 3, 70, 90))  # not a multiple of the patch: padded
    assert [f.shape[1] for f in feats] == bb.out_channels == [8, 16, 32, 64]
    assert [tuple(f.shape[-2:]) for f in feats] == [(18, 23), (9, 12), (5, 6), (3, 3)]


def test_backbone_errors():
    with pytest.raises(ValueError, match="name: .*not_a_model"):
        build_backbone("not_a_model")
    with pytest.raises(ValueError, match="mixer_s16_224.*4-level pyramid"):
        build_backbone("mixer_s16_224")
    with pytest.raises(ValueError, match="out_indices"):
        build_backbone("vim_tiny_patch16_224", depth=4, embed_dim=8, out_indices=(0, 1, 2, 4))
    with pytest.raises(ValueError, match="pyramid_channels"):
        build_backbone(*CNN[:1], pyramid_channels=8)
    with pytest.raises(ValueError, match="pretrained_path"):
        build_backbone("resnet18", pretrained_path="/nonexistent/ckpt.pth")
    with pytest.raises(ValueError, match="x: expected an image batch"):
        build_backbone(VIM[0], **VIM[1])(torch.randn(3, 32, 32))


@pytest.mark.parametrize("name,kwargs", [VMAMBA, VIM], ids=["vmamba", "vim"])
def test_pretrained_path_loads_classifier_weights(tmp_path, name, kwargs):
    cls = timm.create_model(name, num_classes=7, **kwargs)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": cls.state_dict()}, path)
    bb = build_backbone(name, pretrained_path=str(path), **kwargs)
    want = cls.state_dict()
    got = {k.removeprefix("model."): v for k, v in bb.body.state_dict().items()}  # features_only wraps VMamba
    assert got and all(torch.equal(v, want[k]) for k, v in got.items())


def test_segmentor_shapes_aux_and_gradients():
    seg = build_segmentor(VIM[0], num_classes=5, channels=16, backbone_kwargs=VIM[1])
    assert seg.num_classes == 5
    assert isinstance(seg.decode_head, UperNetHead) and isinstance(seg.auxiliary_head, FCNHead)
    x = torch.randn(2, 3, 72, 100)
    out = seg.train()(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 5, 72, 100)
    segmentation_loss(out, torch.randint(0, 5, (2, 72, 100))).backward()
    grads = [p.grad for p in seg.backbone.body.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    seg.eval()
    with torch.no_grad():
        out = seg(x)
    assert set(out) == {"out"} and out["out"].shape == (2, 5, 72, 100)
    # no auxiliary head at all
    seg = build_segmentor(VMAMBA[0], num_classes=3, channels=8, aux=False, backbone_kwargs=VMAMBA[1])
    assert seg.auxiliary_head is None and set(seg.train()(torch.randn(2, 3, 64, 96))) == {"out"}


def test_upernet_mmseg_names():
    head = UperNetHead([8, 16, 32, 64], channels=16, num_classes=4)
    keys = set(head.state_dict())
    for key in ("psp_modules.0.1.conv.weight", "psp_modules.3.1.bn.running_mean", "bottleneck.conv.weight",
                "lateral_convs.2.bn.weight", "fpn_convs.0.conv.weight", "fpn_bottleneck.bn.bias",
                "conv_seg.weight", "conv_seg.bias"):
        assert key in keys, key
    assert head.bottleneck.conv.weight.shape == (16, 64 + 4 * 16, 3, 3)
    assert head.fpn_bottleneck.conv.weight.shape == (16, 4 * 16, 3, 3)
    feats = [torch.randn(2, c, 16 // 2 ** i, 24 // 2 ** i) for i, c in enumerate([8, 16, 32, 64])]
    assert head(feats).shape == (2, 4, 16, 24)  # stride 4
    aux = FCNHead(32, 8, num_classes=4)
    assert {"convs.0.conv.weight", "convs.0.bn.weight", "conv_seg.weight"} <= set(aux.state_dict())
    assert aux(feats).shape == (2, 4, 4, 6)
    with pytest.raises(ValueError, match="feats"):
        head(feats[:3])
    with pytest.raises(TypeError):
        UperNetHead([8, 16], 16)  # num_classes is required


class _Conv1x1(nn.Module):
    """A translation-invariant segmentor stand-in: dict(out=1x1 conv)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


@pytest.mark.parametrize("size,crop,stride", [((40, 52), 16, 10), ((40, 52), (24, 20), (8, 20)), ((10, 13), 16, 8)])
def test_slide_inference_equals_whole_image(size, crop, stride):
    model = _Conv1x1().train()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        whole = model(x)["out"]
    slid = slide_inference(model, x, 3, crop, stride)
    assert slid.shape == (2, 3, *size)
    torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-5)
    assert model.training  # the mode is restored


def test_sliding_windows_cover_every_pixel():
    for (h, w), crop, stride in [((50, 70), 16, 12), ((33, 17), (8, 5), (3, 5)), ((8, 8), 16, 8), ((64, 64), 32, 32)]:
        cover = torch.zeros(h, w)
        wins = sliding_windows(h, w, crop, stride)
        ch, cw = (crop, crop) if isinstance(crop, int) else crop
        for y1, y2, x1, x2 in wins:
            assert (y2 - y1, x2 - x1) == (min(ch, h), min(cw, w))
            cover[y1:y2, x1:x2] += 1
        assert cover.min() >= 1
    assert len(sliding_windows(64, 64, 32, 32)) == 4
    with pytest.raises(ValueError, match="stride"):
        slide_inference(_Conv1x1(), torch.randn(1, 3, 20, 20), 3, 8, 10)
    with pytest.raises(ValueError, match="num_classes=4"):
        slide_inference(_Conv1x1(), torch.randn(1, 3, 20, 20), 4, 8, 8)


def test_slide_inference_with_segmentor():
    seg = build_segmentor(VIM[0], num_classes=4, channels=8, backbone_kwargs=VIM[1])
    out = slide_inference(seg, torch.randn(1, 3, 40, 72), 4, crop_size=32, stride=24)
    assert out.shape == (1, 4, 40, 72) and torch.isfinite(out).all()


def _targets(images, masks: bool):
    targets = []
    for img in images:
        h, w = img.shape[-2:]
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, w - 5.0, h - 8.0]])
        t = dict(boxes=boxes, labels=torch.tensor([1, 2]))
        if masks:
            m = torch.zeros(2, h, w, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                m[i, y1:y2, x1:x2] = 1
            t["masks"] = m
        targets.append(t)
    return targets


# small RPN / RoI budgets keep the detector tests fast
_FAST = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
             rpn_post_nms_top_n_test=50, box_batch_size_per_image=64, box_detections_per_img=10)


@pytest.mark.parametrize("name,kwargs,kind", [(*VMAMBA, "mask_rcnn"), (*VIM, "mask_rcnn"), (*VIM, "faster_rcnn")],
                         ids=["vmamba-mask", "vim-mask", "vim-faster"])
def test_detector_train_and_eval(name, kwargs, kind):
    det = build_detector(name, num_classes=3, kind=kind, min_size=96, max_size=128, backbone_kwargs=kwargs, **_FAST)
    assert isinstance(det.backbone, BackboneWithFPN) and det.backbone.out_channels == 256
    images = [torch.rand(3, 80, 120), torch.rand(3, 100, 90)]  # different sizes and aspect ratios
    losses = det.train()(images, _targets(images, masks=kind == "mask_rcnn"))
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == (expected | {"loss_mask"} if kind == "mask_rcnn" else expected)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in det.backbone.body.body.parameters())
    det.eval()
    with torch.no_grad():
        results = det(images)
    assert len(results) == 2
    for res, img in zip(results, images, strict=True):
        assert {"boxes", "labels", "scores"} <= set(res)
        assert ("masks" in res) == (kind == "mask_rcnn")
        if "masks" in res:
            assert res["masks"].shape[1:] == (1, *img.shape[-2:])


def test_backbone_with_fpn_levels():
    fpn = BackboneWithFPN(build_backbone(*CNN[:1]), out_channels=32)
    out = fpn(torch.randn(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert all(v.shape[1] == 32 for v in out.values())


def test_detector_errors():
    with pytest.raises(ValueError, match="kind: .*'retinanet'"):
        build_detector(VIM[0], num_classes=3, kind="retinanet", backbone_kwargs=VIM[1])
    with pytest.raises(ValueError, match="num_classes"):
        build_detector(VIM[0], num_classes=1, backbone_kwargs=VIM[1])


def test_segmentor_learns():
    seg = build_segmentor(VIM[0], num_classes=4, channels=16, backbone_kwargs=VIM[1]).train()
    x, y = torch.randn(2, 3, 48, 64), torch.randint(0, 4, (2, 48, 64))
    opt = torch.optim.AdamW(seg.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = segmentation_loss(seg(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_segmentor_with_custom_heads():
    bb = build_backbone(*CNN[:1])
    seg = Segmentor(bb, UperNetHead(bb.out_channels, 8, num_classes=2, dropout=0.0))
    assert seg.eval()(torch.randn(1, 3, 40, 56))["out"].shape == (1, 2, 40, 56)


def test_vim_segmentor_logits_align_with_padded_image():
    # Vim pads 40x56 to 48x64: the logits are those of the padded image, cropped (not stretched)
    seg = build_segmentor(VIM[0], num_classes=3, channels=8, backbone_kwargs=VIM[1]).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        out = seg(x)["out"]
        ref = seg(torch.nn.functional.pad(x, (0, 8, 0, 8)))["out"][..., :40, :56]
    torch.testing.assert_close(out, ref)
