"""Vision Mamba (Vim): fidelity to the official model, checkpoints, and the timm contract.

Forward passes use tiny models (depth 2, width 32, 32x32 images) and the reference scan; the
parameter-count and key-table checks build the real sizes on the meta device.
"""

import argparse
import fnmatch
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.layers import get_notrace_functions, get_notrace_modules  # noqa: E402
from timm.models._manipulate import group_parameters  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names  # noqa: E402

import visionssm  # noqa: E402
from visionssm.layers.mamba import Mamba  # noqa: E402
from visionssm.models.vim import VisionMamba, checkpoint_filter_fn, resample_pos_embed  # noqa: E402
from visionssm.ops import selective_scan_reference  # noqa: E402

TINY = dict(embed_dim=32, depth=2, img_size=32, num_classes=10, scan_backend="reference")
OFFICIAL = {  # name: (embed_dim, stride, params in millions as the official code counts them)
    "vim_tiny_patch16_224": (192, 16, 7.148),
    "vim_small_patch16_224": (384, 16, 25.797),
    "vim_base_patch16_224": (768, 16, 97.598),
    "vim_tiny_patch16_stride8_224": (192, 8, 7.250),
    "vim_small_patch16_stride8_224": (384, 8, 26.001),
}


def tiny(name="vim_tiny_patch16_224", seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **{**TINY, **kwargs}).eval()


def image(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- an independent transcription of the official forward (hustvl/Vim, fused path) ------------


def official_inner(xz, conv, x_proj, dt_proj, A_log, D):
    """mamba_inner_fn_no_out_proj: conv + SiLU, x_proj, dt_proj, scan with the z gate inside."""
    length = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=conv.weight.shape[-1] - 1,
                        groups=x.shape[1])[..., :length])
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), x_proj.weight)  # ((b l), r + 2n)
    r, n = dt_proj.weight.shape[1], A_log.shape[1]
    b = x.shape[0]
    delta = (dt_proj.weight @ x_dbl[:, :r].t()).reshape(-1, b, length).transpose(0, 1)
    B = x_dbl[:, r:r + n].reshape(b, length, n).transpose(1, 2)
    C = x_dbl[:, -n:].reshape(b, length, n).transpose(1, 2)
    return selective_scan_reference(x, delta, -torch.exp(A_log.float()), B, C, D.float(), z=z,
                                    delta_bias=dt_proj.bias.float(), delta_softplus=True)


def official_mixer(m, h):
    xz = (m.in_proj.weight @ h.transpose(1, 2))  # (b, 2d, l)
    out = official_inner(xz, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    if m.bidirectional:  # bimamba v2 with if_divide_out
        out_b = official_inner(xz.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b)
        out = (out + out_b.flip(-1)) / 2
    return F.linear(out.transpose(1, 2), m.out_proj.weight)


def official_rms(x, weight, eps=1e-5):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def official_forward(model, x):
    """VisionMamba.forward of the official code: Add -> Norm -> Mixer blocks, middle class token."""
    x = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    batch, M, _ = x.shape
    pos = M // 2
    x = torch.cat([x[:, :pos], model.cls_token.expand(batch, -1, -1), x[:, pos:]], dim=1) + model.pos_embed
    hidden, residual = x, None
    for layer in model.layers:
        residual = hidden.float() if residual is None else residual + hidden.float()
        hidden = official_mixer(layer.mixer, official_rms(residual, layer.norm.weight))
    hidden = official_rms(residual + hidden, model.norm_f.weight)
    return model.head(hidden[:, pos])


# --- sizes and keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_param_count_equals_official(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == OFFICIAL[name][2]


def official_key_table(C, stride):
    d, r, n = 2 * C, math.ceil(C / 16), 16
    grid = (224 - 16) // stride + 1
    table = {"cls_token": (1, 1, C), "pos_embed": (1, grid * grid + 1, C),
             "patch_embed.proj.weight": (C, 3, 16, 16), "patch_embed.proj.bias": (C,),
             "norm_f.weight": (C,), "head.weight": (1000, C), "head.bias": (1000,)}
    for i in range(24):
        p = f"layers.{i}."
        table.update({p + "mixer.in_proj.weight": (2 * d, C), p + "mixer.out_proj.weight": (C, d),
                      p + "norm.weight": (C,)})
        for s in ("", "_b"):
            table.update({p + f"mixer.conv1d{s}.weight": (d, 1, 4), p + f"mixer.conv1d{s}.bias": (d,),
                          p + f"mixer.x_proj{s}.weight": (r + 2 * n, d),
                          p + f"mixer.dt_proj{s}.weight": (d, r), p + f"mixer.dt_proj{s}.bias": (d,),
                          p + f"mixer.A{s}_log": (d, n), p + f"mixer.D{s}": (d,)})
    return table


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_state_dict_equals_official_key_table(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    C, stride, _ = OFFICIAL[name]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(ours) == 415
    assert ours == official_key_table(C, stride)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


def test_official_init():
    model = tiny(depth=4)
    m = model.layers[0].mixer
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 17.0)).expand(64, 16))
    assert torch.equal(m.D_b, torch.ones(64)) and m.A_log.dtype == torch.float32
    dt = F.softplus(torch.cat([m.dt_proj.bias, m.dt_proj_b.bias]))
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6  # dt in [dt_min, dt_max] via inverse softplus
    assert m.dt_proj.weight.abs().max() <= m.dt_rank ** -0.5
    # out_proj: kaiming_uniform(a=sqrt(5)) bound 1/sqrt(fan_in), then / sqrt(depth)
    assert m.out_proj.weight.abs().max() <= 1 / math.sqrt(64) / math.sqrt(4) + 1e-7
    assert torch.all(model.head.bias == 0) and torch.all(model.patch_embed.proj.bias == 0)


# --- numerical fidelity -----------------------------------------------------------------------


def test_logits_equal_official_forward():
    model = tiny()
    x = image(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), official_forward(model, x), atol=1e-5, rtol=1e-5)


def test_logits_equal_official_forward_odd_token_count():
    # 3x3 patches: the class token goes to index 4, with 4 patches before and after
    model = tiny(img_size=48)
    x = image(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), official_forward(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_vim_tiny_at_224_equals_official_forward_within_1e4():
    """The acceptance bound, at full size: the fastest backend against the transcription + reference scan."""
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224").eval()
    x = image(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - official_forward(model, x)).abs().max() <= 1e-4


def test_bidirectional_off_equals_plain_mamba_stack():
    model = tiny(bidirectional=False)
    assert not any("_b" in k for k in model.state_dict())
    x = image(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), official_forward(model, x), atol=1e-5, rtol=1e-5)
        # and the plain mixer is mamba_ssm's Mamba: one direction, z gate fused into the scan
        h = image(2, 7, 32)
        m = model.layers[0].mixer
        assert torch.allclose(m(h), official_mixer(m, h), atol=1e-6, rtol=1e-5)


def test_sum_of_directions_without_divide_out():
    torch.manual_seed(0)
    avg = Mamba(16, bidirectional=True, backend="reference")
    total = Mamba(16, bidirectional=True, divide_out=False, backend="reference")
    total.load_state_dict(avg.state_dict())
    h = image(1, 6, 16)
    with torch.no_grad():
        assert torch.allclose(total(h), 2 * avg(h), atol=1e-6)


OTHER_BACKENDS = [b for b in visionssm.available_backends("cpu") if b != "reference"]


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backends_give_the_reference_logits_and_grads(backend):
    model = tiny()
    x = image(2, 3, 32, 32)
    ref = model(x)
    ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_scan_backend(backend)
    out = model(x)
    out.square().sum().backward()
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-5, rtol=1e-3), n


# --- position embeddings ------------------------------------------------------------------------


def test_pos_embed_resample_is_identity_at_native_size():
    pe = image(1, 17, 8)
    assert torch.equal(resample_pos_embed(pe, (4, 4), (4, 4), "middle", "middle"), pe)
    model = tiny()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(checkpoint_filter_fn({"model": sd}, model)["pos_embed"], model.pos_embed)


def test_pos_embed_resample_keeps_the_middle_class_slot_apart():
    # a 14x14 grid of zeros with the class slot (index 98) at 1: resampled to 20x20 the class value
    # sits at index 200 and nothing of it leaks into the grid (the official code takes slot 0)
    pe = torch.zeros(1, 197, 4)
    pe[:, 98] = 1.0
    out = resample_pos_embed(pe, (20, 20), (14, 14), "middle", "middle")
    assert out.shape == (1, 401, 4)
    assert torch.equal(out[:, 200], torch.ones(1, 4))
    assert torch.count_nonzero(out) == 4
    # the grid part is a plain bicubic resize of the patch tokens
    pe = image(1, 197, 4)
    grid = torch.cat([pe[:, :98], pe[:, 99:]], 1).reshape(1, 14, 14, 4).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(20, 20), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    out = resample_pos_embed(pe, (20, 20), (14, 14), "middle", "middle")
    assert torch.allclose(torch.cat([out[:, :200], out[:, 201:]], 1), want.reshape(1, 400, 4), atol=1e-6)
    # other layouts: no class slot in the target, or the class token at the head
    assert torch.equal(resample_pos_embed(pe, (14, 14), (14, 14), "middle", None),
                       torch.cat([pe[:, :98], pe[:, 99:]], 1))
    assert torch.equal(resample_pos_embed(pe, (14, 14), (14, 14), "middle", "head")[:, 0], pe[:, 98])


def test_non_square_input_uses_resampled_pos_embed():
    model = tiny()
    x = image(1, 3, 64, 48)
    out = model.forward_features(x)
    assert out.shape == (1, 4 * 3 + 1, 32)
    resized = tiny()
    resized.set_input_size((64, 48))
    assert resized.pos_embed.shape == (1, 13, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), resized(x), atol=1e-6)


def test_512x384_input():
    model = tiny(scan_backend="auto")
    with torch.no_grad():
        out = model.forward_features(image(1, 3, 512, 384))
    assert out.shape == (1, 32 * 24 + 1, 32) and torch.isfinite(out).all()


def test_class_token_options():
    x = image(2, 3, 48, 32)  # 3x2 grid
    head = tiny(cls_position="head")
    assert head(x).shape == (2, 10)
    nocls = tiny(class_token=False)
    assert nocls.cls_token is None and nocls.pos_embed.shape == (1, 4, 32) and nocls.global_pool == "avg"
    assert nocls.forward_features(x).shape == (2, 6, 32) and nocls(x).shape == (2, 10)
    nopos = tiny(pos_embed=False, class_token=False)
    assert nopos.pos_embed is None and nopos(x).shape == (2, 10)
    with torch.no_grad():  # the head position changes only where the token goes in and is read
        feats = head.forward_features(image(1, 3, 32, 32))
        assert torch.equal(head.forward_head(feats, pre_logits=True), feats[:, 0])


# --- checkpoints --------------------------------------------------------------------------------


def save_official(path, model, prefix="", model_name="vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_"
                  "embed_with_midclstok_div2", **extra):
    """The on-disk format of hustvl/Vim's main.py: weights under 'model', plus EMA, optimizer, args."""
    sd = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: v + 1.0 for k, v in sd.items()}  # different on purpose: 'model' must be the one loaded
    ckpt = {"model": sd, "model_ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
            "lr_scheduler": {"base_values": [1e-3]}, "epoch": 299, "scaler": {},
            "args": argparse.Namespace(model=model_name, input_size=224, drop_path=0.0, lr=5e-4), **extra}
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_checkpoint_round_trips(tmp_path, prefix):
    src = tiny(seed=3)
    path = save_official(tmp_path / "vim_t.pth", src, prefix)
    model = tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = image(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_checkpoint_into_other_head_size_and_features(tmp_path):
    src = tiny(seed=3)
    path = str(save_official(tmp_path / "vim_t.pth", src))
    model = tiny(num_classes=7, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    assert model.head.weight.shape == (7, 32)
    assert torch.equal(model.layers[1].mixer.x_proj_b.weight, src.layers[1].mixer.x_proj_b.weight)
    feats = tiny(features_only=True, out_indices=(0, 1), pretrained=True,
                 pretrained_cfg_overlay=dict(file=path))
    with torch.no_grad():
        maps = feats(image(1, 3, 32, 32))
        want = src.forward_intermediates(image(1, 3, 32, 32), indices=[0, 1], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 32, 2, 2)] * 2
    assert all(torch.equal(a, b) for a, b in zip(maps, want, strict=True))


def test_checkpoint_into_one_channel_model_and_from_safetensors(tmp_path):
    src = tiny(seed=3)
    path = str(save_official(tmp_path / "vim_t.pth", src))
    gray = tiny(in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    assert torch.allclose(gray.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    safetensors = pytest.importorskip("safetensors.torch")
    st = str(tmp_path / "vim_t.safetensors")
    safetensors.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, st)
    model = tiny(pretrained=True, pretrained_cfg_overlay=dict(file=st))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in src.state_dict().items())


def test_checkpoint_at_other_resolution_and_without_class_token(tmp_path):
    src = tiny(seed=3)
    path = str(save_official(tmp_path / "vim_t.pth", src))
    big = tiny(img_size=64, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    assert torch.allclose(big.pos_embed, resample_pos_embed(src.pos_embed, (4, 4), (2, 2)))
    seg = tiny(class_token=False, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    pe = src.pos_embed.detach()
    assert torch.equal(seg.pos_embed, torch.cat([pe[:, :2], pe[:, 3:]], 1))


SOURCES = {  # how a checkpoint of each class-token layout says which it is
    "middle": dict(kwargs={}, extra={}),  # the official model name in args.model
    "head": dict(kwargs=dict(cls_position="head"),  # the model kwargs this library's trainer records
                 extra=dict(model_name="vim_tiny_patch16_224",
                            config={"model": "vim_tiny_patch16_224", "model_kwargs": {"cls_position": "head"}})),
    "none": dict(kwargs=dict(class_token=False), extra={}),
}
TARGETS = {"middle": {}, "head": dict(cls_position="head"), "none": dict(class_token=False)}


def split_pos_embed(pe, layout):
    """(class slot or None, patch part) of a (1, tokens, C) pos_embed, by hand."""
    if layout == "none":
        return None, pe
    i = (pe.shape[1] - 1) // 2 if layout == "middle" else 0
    return pe[:, i], torch.cat([pe[:, :i], pe[:, i + 1:]], 1)


@pytest.mark.parametrize("img_size", [32, 64])  # the source's 2x2 grid, and a 4x4 grid
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("source", SOURCES)
def test_checkpoint_pos_embed_follows_the_class_position(tmp_path, source, target, img_size):
    """The class slot moves to the model's class position (same grid or not); patches keep their positions."""
    src = tiny(seed=3, **SOURCES[source]["kwargs"])
    with torch.no_grad():  # distinct rows, so a misplaced slot cannot go unnoticed
        src.pos_embed.copy_(torch.randn(src.pos_embed.shape, generator=torch.Generator().manual_seed(5)))
    path = str(save_official(tmp_path / "src.pth", src, **SOURCES[source]["extra"]))
    load = dict(pretrained=True, pretrained_cfg_overlay=dict(file=path), img_size=img_size, **TARGETS[target])
    if source == "none" and target != "none":
        with pytest.raises(ValueError, match="no class token.*class_token=False"):
            tiny(**load)
        return
    model = tiny(**load)
    src_cls, src_patches = split_pos_embed(src.pos_embed.detach(), source)
    cls, patches = split_pos_embed(model.pos_embed.detach(), target)
    if img_size != 32:  # bicubic, as the official fine-tuning code resamples
        grid = src_patches.reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
        src_patches = grid.permute(0, 2, 3, 1).reshape(1, 16, -1)
    assert torch.allclose(patches, src_patches, atol=1e-6)
    if target != "none":
        assert torch.equal(cls, src_cls) and torch.equal(model.cls_token, src.cls_token)
    if img_size == 32 and target != "none":
        # what the blocks see: every patch and the class token embedded exactly as in the source
        x = image(1, 3, 32, 32)
        with torch.no_grad():
            want_patches, want_cls = model_tokens(src, x, source)
            got_patches, got_cls = model_tokens(model, x, target)
        assert torch.equal(got_patches, want_patches) and torch.equal(got_cls, want_cls)


def model_tokens(model, x, layout):
    tokens = model._embed(x)
    i = (tokens.shape[1] - 1) // 2 if layout == "middle" else 0
    return torch.cat([tokens[:, :i], tokens[:, i + 1:]], 1), tokens[:, i]


def test_checkpoint_class_position_is_told_by_the_checkpoint_or_the_caller(tmp_path):
    head = tiny(seed=3, cls_position="head")
    sd = {k: v.clone() for k, v in head.state_dict().items()}
    pe = sd["pos_embed"]
    middle = tiny()
    relaid = torch.cat([pe[:, 1:3], pe[:, :1], pe[:, 3:]], 1)  # class slot from index 0 to 4 // 2
    # by the caller (a bare state dict says nothing)
    assert torch.equal(checkpoint_filter_fn(sd, middle, source_cls_position="head")["pos_embed"], relaid)
    assert torch.equal(checkpoint_filter_fn(sd, middle)["pos_embed"], pe)  # default: the official middle
    # by the model kwargs a training run recorded: timm's train.py (args) or visionssm's (config)
    for ckpt in ({"model": sd, "args": argparse.Namespace(model="vim_tiny_patch16_224",
                                                           model_kwargs={"cls_position": "head"})},
                 {"model": sd, "config": {"model": "vim_tiny_patch16_224", "model_kwargs": {"cls_position": "head"}}}):
        assert torch.equal(checkpoint_filter_fn(ckpt, middle)["pos_embed"], relaid)
    # by the official model name
    official = {"model": sd, "args": argparse.Namespace(
        model="vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2")}
    assert torch.equal(checkpoint_filter_fn(official, tiny(cls_position="head"))["pos_embed"],
                       torch.cat([pe[:, 2:3], pe[:, :2], pe[:, 3:]], 1))
    # and through the file loader
    path = tmp_path / "head.pth"
    torch.save({"model": sd}, path)
    model = tiny()
    model.load_pretrained(str(path), source_cls_position="head")
    assert torch.equal(model.pos_embed.detach(), relaid)
    with pytest.raises(ValueError, match="source_cls_position: expected one of.*got 'tail'"):
        checkpoint_filter_fn(sd, middle, source_cls_position="tail")


def test_stride_mismatch_is_refused(tmp_path):
    kw = dict(embed_dim=16, depth=1, img_size=224, scan_backend="reference")
    with torch.device("meta"):
        stride8 = timm.create_model("vim_tiny_patch16_stride8_224", **kw)
    sd = {k: torch.zeros(v.shape) for k, v in stride8.state_dict().items()}
    # told by args.model
    path = tmp_path / "vim_t_ft.pth"
    overlay = dict(file=str(path))
    args = argparse.Namespace(model="vim_tiny_patch16_stride8_224_bimambav2")
    torch.save({"model": sd, "args": args}, path)
    with pytest.raises(ValueError, match="stride-8"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    # told by the 27x27 position grid alone
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match="stride-8.*stride 16"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    # and the reverse: a 14x14 (stride-16) checkpoint into a stride-8 model
    with torch.device("meta"):
        stride16 = timm.create_model("vim_tiny_patch16_224", **kw)
    torch.save({"model": {k: torch.zeros(v.shape) for k, v in stride16.state_dict().items()}}, path)
    with pytest.raises(ValueError, match="stride-16.*stride 8"):
        timm.create_model("vim_tiny_patch16_stride8_224", pretrained=True, pretrained_cfg_overlay=overlay, **kw)


class NotAllowed:
    pass


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = save_official(tmp_path / "evil.pth", tiny(), payload=NotAllowed())
    with pytest.raises(ValueError, match="allow-list"):
        tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_checkpoint_with_wrong_keys_names_them(tmp_path):
    path = save_official(tmp_path / "uni.pth", tiny(bidirectional=False))
    with pytest.raises(ValueError, match="missing keys.*conv1d_b"):
        tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


# --- timm contract --------------------------------------------------------------------------------


def test_timm_api_contract():
    model = tiny()
    x = image(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 5, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.get_classifier() is model.head
    model.reset_classifier(0)
    assert model(x).shape == (2, 32) and model.num_classes == 0
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 5, 32)
    model.reset_classifier(5, "avg")
    assert model(x).shape == (2, 5)
    with pytest.raises(TypeError):
        timm.create_model("vim_tiny_patch16_224", not_a_model_arg=1)
    names = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in names), pattern
    assert fnmatch.fnmatch("layers.1.mixer.A_b_log", "layers.*.mixer.A_b_log")
    groups = group_parameters(model, model.group_matcher(), reverse=True)
    assert len(set(groups.values())) > 1
    # timm's optimizer factory keeps A_log (2-D) out of weight decay through the patterns
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.layers[1].mixer.A_b_log) in no_decay and id(model.pos_embed) in no_decay
    assert id(model.layers[1].mixer.in_proj.weight) not in no_decay
    rates = [blk.drop_path.drop_prob for blk in tiny(depth=3, drop_path_rate=0.2).layers[1:]]
    assert rates == pytest.approx([0.1, 0.2])  # linspace(0, rate, depth), the first block undropped


def test_timm_non_std_cfg_checks_on_meta():
    """What timm's test_model_default_cfgs_non_std checks, on a full-size Vim-Ti on the meta device."""
    with torch.device("meta"):
        model = timm.create_model("vim_tiny_patch16_224", device="meta", dtype=torch.float32).eval()
    x = torch.randn(1, 3, 224, 224, device="meta")
    out = model.forward_features(x)
    assert out.shape == (1, 197, model.num_features)
    assert model.forward_head(out, pre_logits=True).shape == (1, model.head_hidden_size)
    model.to(torch.bfloat16)
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
    model.to(torch.float32)
    cfg = model.pretrained_cfg
    assert model.in_chans == cfg["input_size"][0]
    assert cfg["classifier"] + ".weight" in model.state_dict()
    assert cfg["first_conv"] + ".weight" in model.state_dict()
    model.to(device="meta", dtype=torch.float64)
    model.reset_classifier(2)
    assert all(p.dtype == torch.float64 and p.is_meta for p in model.head.parameters())
    assert not model.head.training  # the new head follows the model's eval mode
    frozen = timm.create_model("vim_tiny_patch16_224", device="meta").requires_grad_(False)
    frozen.reset_classifier(0)
    frozen.set_input_size((448, 448))
    assert not any(p.requires_grad for p in frozen.parameters())
    assert frozen.pos_embed.shape == (1, 28 * 28 + 1, 192)


def test_backward_reaches_every_parameter_and_grad_checkpointing():
    model = tiny(num_classes=42).train()
    x = image(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 42)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing()
        assert torch.equal(model(x), ref)
    x.requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None


def test_forward_intermediates():
    model = tiny(depth=3)
    x = image(2, 3, 48, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [tuple(t.shape) for t in inter] == [(2, 32, 3, 2)] * 3
        tokens = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", norm=True,
                                             intermediates_only=True)
        assert torch.equal(tokens[0], torch.cat([final[:, :3], final[:, 4:]], 1))  # class token at 6 // 2
        pairs = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, norm=True,
                                            intermediates_only=True)
        assert torch.equal(pairs[0][1], final[:, 3:4])
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], inter[0])
        model.set_grad_checkpointing()
        final_ckpt, _ = model.forward_intermediates(x)
        assert torch.equal(final_ckpt, final)


def test_features_only_getter():
    feats = tiny(depth=3, features_only=True, out_indices=(0, 2))
    assert feats.feature_info.channels() == [32, 32] and feats.feature_info.reduction() == [16, 16]
    assert len(feats.model.layers) == 3
    maps = feats(image(1, 3, 64, 48))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 4, 3)] * 2
    stride8 = tiny("vim_tiny_patch16_stride8_224", depth=1, features_only=True, out_indices=(0,))
    assert stride8.feature_info.reduction() == [8] and stride8(image(1, 3, 32, 32))[0].shape == (1, 32, 3, 3)


@pytest.mark.parametrize("train", [False, True])
def test_fx_trace(train):
    """timm's FX tests: the traced model gives the same output and every parameter gets a grad."""
    model = tiny().train(train)
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                        eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    x = image(2, 3, 32, 32)
    out = next(iter(fx_model(x).values()))
    assert torch.equal(out, model(x))
    out.mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters())


@pytest.mark.skipif("torch" not in visionssm.available_backends("cpu"), reason="needs the torch scan backend")
def test_dynamo_captures_one_graph():
    model = tiny(scan_backend="torch")
    x = image(1, 3, 32, 32)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


def test_dtypes_and_autocast():
    model = tiny(dtype=torch.bfloat16)
    m = model.layers[0].mixer
    assert model.head.weight.dtype == torch.bfloat16 and m.A_log.dtype == m.D.dtype == torch.float32
    x = image(2, 3, 32, 32)
    assert model(x.bfloat16()).dtype == torch.bfloat16
    model = tiny()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref, atol=0.1, rtol=0.1)


# --- bad input --------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"x: expected 3 channels.*got 1 channels"):
        model(image(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected height >= 16 and width >= 16.*got 8x32"):
        model(image(1, 3, 8, 32))
    with pytest.raises(ValueError, match=r"x: expected an image batch.*got shape \(3, 32, 32\)"):
        model(image(3, 32, 32))
    with pytest.raises(ValueError, match="cls_position: expected one of .*got 'tail'"):
        VisionMamba(**{**TINY, "cls_position": "tail"})
    with pytest.raises(ValueError, match="global_pool: 'token' needs a class token"):
        VisionMamba(**{**TINY, "class_token": False, "global_pool": "token"})
    with pytest.raises(ValueError, match="img_size: expected at least patch_size"):
        VisionMamba(**{**TINY, "img_size": 8})
    with pytest.raises(ValueError, match="backend: expected one of"):
        model.set_scan_backend("cuda")
    with pytest.raises(ValueError, match="global_pool: expected one of"):
        model.reset_classifier(0, "max")
