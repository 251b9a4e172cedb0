"""VideoMamba: fidelity to the official model, checkpoints in both released layouts, any clip length
and resolution, and the timm contract.

Forward passes use tiny models (depth 2, width 32, 32x32 frames, 4 frames) and the reference scan;
the parameter-count and key-table checks build the real sizes on the meta device.
"""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.layers import get_notrace_functions, get_notrace_modules  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names  # noqa: E402

import visionssm.models.videomamba  # noqa: E402, F401  (registers the models until models/__init__ does)
from visionssm.models.checkpoint import CheckpointError  # noqa: E402
from visionssm.models.videomamba import VideoMamba, VideoMambaFrameAvg, resample_temporal_embed  # noqa: E402
from visionssm.models.vim import resample_pos_embed  # noqa: E402
from visionssm.ops import selective_scan_reference  # noqa: E402

TINY = dict(embed_dim=32, depth=2, img_size=32, num_classes=10, scan_backend="reference")


def tiny(name="videomamba_tiny_f8_224", seed=0, randomize=True, **kwargs):
    """A tiny model; the zero-initialised class token and temporal table made random so that the
    tests see where they go."""
    torch.manual_seed(seed)
    kwargs = {**TINY, **({"num_frames": 4} if "_f" in name else {}), **kwargs}
    model = timm.create_model(name, **kwargs).eval()
    if randomize:
        with torch.no_grad():
            model.cls_token.normal_()
            if hasattr(model, "temporal_pos_embedding"):
                model.temporal_pos_embedding.normal_()
    return model


def clip(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- an independent transcription of the official forward (OpenGVLab/VideoMamba, fused path) ----


def official_inner(xz, conv, x_proj, dt_proj, A_log, D):
    """One direction of mamba_inner_fn_no_out_proj: conv + SiLU, x/dt projections, scan gated by z."""
    length = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=conv.weight.shape[-1] - 1, groups=x.shape[1]))
    x = x[..., :length]
    r, n = dt_proj.weight.shape[1], A_log.shape[1]
    dt, B, C = torch.einsum("od,bdl->bol", x_proj.weight, x).split([r, n, n], dim=1)
    delta = torch.einsum("dr,brl->bdl", dt_proj.weight, dt)
    return selective_scan_reference(x, delta, -torch.exp(A_log.float()), B, C, D.float(), z=z,
                                     delta_bias=dt_proj.bias.float(), delta_softplus=True)


def official_mixer(m, h):
    """bimamba v2 as VideoMamba vendors it: out_proj(y_f + flip(y_b)), no division by 2."""
    xz = torch.einsum("od,bld->bol", m.in_proj.weight, h)
    y = official_inner(xz, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    y_b = official_inner(xz.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b)
    return F.linear((y + y_b.flip(-1)).transpose(1, 2), m.out_proj.weight)


def official_rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def official_trunk(model, x):
    """Add -> Norm -> Mixer blocks, residual in float32, norm_f(residual + last output), token 0."""
    hidden, residual = x, None
    for layer in model.layers:
        residual = hidden.float() if residual is None else residual + hidden.float()
        hidden = official_mixer(layer.mixer, official_rms(residual, layer.norm.weight))
    return model.head(official_rms(residual + hidden, model.norm_f.weight)[:, 0])


def official_video_forward(model, x):
    """video_sm VisionMamba.forward_features: per-frame cls + pos_embed, one cls kept, temporal table
    added over (b n) t m, then b (t n) m: spatial-first."""
    x = model.patch_embed.proj(x)
    B, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
    x = torch.cat([model.cls_token.expand(B * T, -1, -1), x], dim=1) + model.pos_embed
    cls_tokens, x = x[:B, :1], x[:, 1:]
    N = H * W
    x = x.reshape(B, T, N, C).permute(0, 2, 1, 3).reshape(B * N, T, C) + model.temporal_pos_embedding
    x = x.reshape(B, N, T, C).permute(0, 2, 1, 3).reshape(B, T * N, C)
    return official_trunk(model, torch.cat([cls_tokens, x], dim=1))


def official_image_forward(model, x):
    x = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
    return official_trunk(model, x)


# --- sizes and keys ---------------------------------------------------------------------------

OFFICIAL_COUNTS = {  # name: {(img_size, classes) or None for the registered default: parameters}, the reference's table
    "videomamba_tiny_patch16_224": {None: 7_148_008, (448, 1000): 7_260_904, (576, 1000): 7_359_208},
    "videomamba_small_patch16_224": {None: 25_796_584, (448, 1000): 26_022_376, (576, 1000): 26_218_984},
    "videomamba_middle_patch16_224": {None: 74_217_448, (448, 1000): 74_556_136, (576, 1000): 74_851_048},
    "videomamba_base_patch16_224": {None: 97_598_440},
    "videomamba_tiny_f8_224": {None: 7_033_744, (224, 174): 6_990_126},
    "videomamba_tiny_f16_224": {None: 7_035_280, (224, 174): 6_991_662, (288, 174): 7_016_238},
    "videomamba_tiny_f32_224": {None: 7_038_352},
    "videomamba_tiny_f64_224": {None: 7_044_496, (384, 400): 7_117_456},
    "videomamba_small_f8_224": {None: 25_568_656, (224, 174): 25_481_646},
    "videomamba_small_f16_224": {None: 25_571_728, (224, 174): 25_484_718, (288, 174): 25_533_870},
    "videomamba_small_f32_224": {None: 25_577_872},
    "videomamba_small_f64_224": {None: 25_590_160, (384, 400): 25_736_080},
    "videomamba_middle_f8_224": {None: 73_875_856, (224, 174): 73_745_454},
    "videomamba_middle_f16_224": {None: 73_880_464, (224, 174): 73_750_062, (288, 174): 73_823_790},
    "videomamba_middle_f32_224": {None: 73_889_680},
    "videomamba_middle_f64_224": {None: 73_908_112, (384, 400): 74_126_992},
}


@pytest.mark.parametrize("name", list(OFFICIAL_COUNTS))
def test_param_count_equals_official(name):
    """Every count of the reference's table: the registered model, then at the fine-tuned sizes and
    with the SSv2 head (the same counts as building with img_size / num_classes)."""
    with torch.device("meta"):
        model = timm.create_model(name)
        for setting, count in OFFICIAL_COUNTS[name].items():
            if setting is not None:
                model.set_input_size(img_size=setting[0])
                model.reset_classifier(setting[1])
            assert sum(p.numel() for p in model.parameters()) == count, setting
    assert set(timm.list_models("videomamba_*")) == set(OFFICIAL_COUNTS) | {FRAMEAVG}


def official_key_table(C, depth, frames=None, classes=1000):
    d, r, n = 2 * C, math.ceil(C / 16), 16
    table = {"cls_token": (1, 1, C), "pos_embed": (1, 197, C), "patch_embed.proj.bias": (C,),
             "patch_embed.proj.weight": (C, 3, 16, 16) if frames is None else (C, 3, 1, 16, 16),
             "norm_f.weight": (C,), "head.weight": (classes, C), "head.bias": (classes,)}
    if frames is not None:
        table["temporal_pos_embedding"] = (1, frames, C)
    for i in range(depth):
        p = f"layers.{i}."
        table.update({p + "mixer.in_proj.weight": (2 * d, C), p + "mixer.out_proj.weight": (C, d),
                      p + "norm.weight": (C,)})
        for s in ("", "_b"):
            table.update({p + f"mixer.conv1d{s}.weight": (d, 1, 4), p + f"mixer.conv1d{s}.bias": (d,),
                          p + f"mixer.x_proj{s}.weight": (r + 2 * n, d),
                          p + f"mixer.dt_proj{s}.weight": (d, r), p + f"mixer.dt_proj{s}.bias": (d,),
                          p + f"mixer.A{s}_log": (d, n), p + f"mixer.D{s}": (d,)})
    return table


@pytest.mark.parametrize("name,C,depth,frames,keys", [
    ("videomamba_tiny_f8_224", 192, 24, 8, 416),
    ("videomamba_middle_f64_224", 576, 32, 64, 552),
    ("videomamba_small_patch16_224", 384, 24, None, 415),
])
def test_state_dict_equals_official_key_table(name, C, depth, frames, keys):
    with torch.device("meta"):
        model = timm.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(ours) == keys
    assert ours == official_key_table(C, depth, frames, 1000 if frames is None else 400)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    # Ti's x_proj rows: dt 12, then B 16, then C 16
    assert model.layers[0].mixer.dt_rank == math.ceil(C / 16)


def test_official_init():
    model = tiny(depth=4, randomize=False)
    m = model.layers[0].mixer
    # segm_init_weights over the whole model wipes Mamba's dt init: dt biases 0, trunc_normal(0.02) weights
    assert torch.all(m.dt_proj.bias == 0) and torch.all(m.dt_proj_b.bias == 0)
    assert abs(m.in_proj.weight.std() - 0.02) < 0.002 and abs(model.head.weight.std() - 0.02) < 0.01
    assert m.dt_proj_b.weight.abs().max() < 0.1  # not Mamba's U(-1/sqrt(dt_rank), 1/sqrt(dt_rank))
    assert torch.equal(m.A_b_log, torch.log(torch.arange(1, 17.0)).expand(64, 16)) and torch.equal(m.D, torch.ones(64))
    assert m.out_proj.weight.abs().max() <= 1 / math.sqrt(64) / math.sqrt(4) + 1e-7
    assert torch.all(model.cls_token == 0) and torch.all(model.temporal_pos_embedding == 0)
    assert abs(model.pos_embed.std() - 0.02) < 0.005
    assert model.patch_embed.proj.weight.shape == (32, 3, 1, 16, 16) and model.patch_embed.proj.bias.abs().sum() > 0
    assert torch.all(model.head.bias == 0)
    # mamba_init keeps the mixers' own initialisation: steps log-uniform in [1e-3, 0.1], in_proj and
    # x_proj at PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the rest stays official
    model = tiny(depth=4, randomize=False, mamba_init=True)
    m = model.layers[0].mixer
    dt = F.softplus(torch.cat([m.dt_proj.bias, m.dt_proj_b.bias]))
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    for proj in (m.in_proj, m.x_proj, m.x_proj_b):
        bound = proj.in_features ** -0.5
        assert proj.weight.abs().max() <= bound and abs(proj.weight.std() - bound / math.sqrt(3)) < 0.2 * bound
    assert m.out_proj.weight.abs().max() <= 1 / math.sqrt(64) / math.sqrt(4) + 1e-7
    assert abs(model.head.weight.std() - 0.02) < 0.01 and torch.all(model.cls_token == 0)


def test_mamba_init_lets_the_last_frame_reach_the_class_token():
    """Why mamba_init is there: only the scan carries a later frame to the class token, and at the
    official initialisation that path starts orders of magnitude weaker (training from scratch on
    cue-probe then waits far longer for it to grow; docs/benchmarks.md)."""
    def reach(**kwargs):
        model = tiny(randomize=False, **kwargs)
        x = clip(4, 3, 4, 32, 32).requires_grad_()
        model.forward_features(x)[:, 0].sum().backward()
        return x.grad.abs().mean((0, 1, 3, 4))  # per frame

    official, mamba = reach(), reach(mamba_init=True)
    assert (mamba[1:] > 30 * official[1:]).all(), (official, mamba)


# --- numerical fidelity -----------------------------------------------------------------------


def test_video_logits_equal_official_forward():
    model = tiny()
    x = clip(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), official_video_forward(model, x), atol=1e-5, rtol=1e-5)


def test_video_logits_equal_official_forward_non_square_three_frames():
    model = tiny(num_frames=3, img_size=(48, 32))
    x = clip(1, 3, 3, 48, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), official_video_forward(model, x), atol=1e-5, rtol=1e-5)


def test_image_logits_equal_official_forward():
    model = tiny("videomamba_tiny_patch16_224")
    x = clip(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), official_image_forward(model, x), atol=1e-5, rtol=1e-5)


def test_token_order_is_spatial_first_with_class_token_first():
    model = tiny()
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.pos_embed.zero_()
        model.temporal_pos_embedding.copy_(torch.arange(4.0)[None, :, None].expand(1, 4, 32))
        model.pos_embed[:, 1:, 0] = torch.arange(1.0, 5.0)  # patch n of a frame carries n + 1 in channel 0
        tokens = model._embed(clip(1, 3, 4, 32, 32))
    assert tokens.shape == (1, 1 + 4 * 4, 32)
    assert torch.equal(tokens[0, 0], model.cls_token[0, 0])  # no temporal term on the class token
    t = torch.arange(4.0).repeat_interleave(4)  # frame of token 1 + t*4 + n
    n = torch.arange(1.0, 5.0).repeat(4)
    assert torch.equal(tokens[0, 1:, 1], t) and torch.equal(tokens[0, 1:, 0], t + n)


def test_directions_are_summed_not_averaged():
    model = tiny()
    assert all(not blk.mixer.divide_out for blk in model.layers)
    h = clip(1, 9, 32)
    m = model.layers[0].mixer
    with torch.no_grad():
        assert torch.allclose(m(h), official_mixer(m, h), atol=1e-6, rtol=1e-5)


# --- clip length and resolution -----------------------------------------------------------------


def test_temporal_resample_is_linear_and_identity_at_native_length():
    t = clip(1, 4, 8)
    assert torch.equal(resample_temporal_embed(t, 4), t)
    want = F.interpolate(t.transpose(1, 2), size=7, mode="linear", align_corners=False).transpose(1, 2)
    assert torch.allclose(resample_temporal_embed(t, 7), want)
    with pytest.raises(ValueError, match=r"temporal_pos_embedding: expected shape \(1, frames, C\)"):
        resample_temporal_embed(clip(4, 8), 2)


@pytest.mark.parametrize("frames,size", [(6, (48, 32)), (1, (16, 16)), (8, (64, 64))])
def test_any_clip_length_and_resolution(frames, size):
    model = tiny()
    x = clip(1, 3, frames, *size)
    resized = tiny()
    resized.set_input_size(img_size=size, num_frames=frames)
    assert resized.temporal_pos_embedding.shape == (1, frames, 32) and resized.num_frames == frames
    assert resized.pos_embed.shape == (1, 1 + (size[0] // 16) * (size[1] // 16), 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 10)
        # run-time resampling equals resampling the parameters once
        assert torch.allclose(out, resized(x), atol=1e-6)
        assert torch.allclose(out, official_video_forward(resized, x), atol=1e-5, rtol=1e-5)


def test_tubelet_two():
    model = tiny(tubelet_size=2)
    assert model.patch_embed.proj.weight.shape == (32, 3, 2, 16, 16) and model.temporal_pos_embedding.shape[1] == 2
    assert model.forward_features(clip(1, 3, 4, 32, 32)).shape == (1, 1 + 2 * 4, 32)
    with pytest.raises(ValueError, match="positive multiple of the tubelet size 2, got 3 frames"):
        model(clip(1, 3, 3, 32, 32))


# --- checkpoints --------------------------------------------------------------------------------


def load(name="videomamba_tiny_f8_224", path=None, **kwargs):
    return tiny(name, randomize=False, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in sa.items() if k not in skip)


@pytest.mark.parametrize("layout", ["flat", "module", "model", "prefixed"])
def test_video_checkpoint_round_trips(tmp_path, layout):
    src = tiny(seed=3)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    obj = {"flat": sd, "module": {"module": sd}, "model": {"model": sd},
           "prefixed": {"module." + k: v for k, v in sd.items()}}[layout]
    torch.save(obj, tmp_path / "v.pth")
    model = load(path=tmp_path / "v.pth")
    assert same_weights(src, model)
    x = clip(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_image_checkpoint_into_image_and_video_models(tmp_path):
    """The in1k layout ({'model': ...}, distill head of the M/B files) into the image model as is,
    and into a video model the way the official fine-tuning starts: a 1-frame clip then gives the
    image model's logits."""
    src = tiny("videomamba_tiny_patch16_224", seed=4)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd.update({"distill_head.0.weight": torch.ones(32), "distill_head.1.weight": torch.ones(8, 32)})
    torch.save({"model": sd}, tmp_path / "in1k.pth")
    image_model = load("videomamba_tiny_patch16_224", tmp_path / "in1k.pth")
    assert same_weights(src, image_model)
    video = load(path=tmp_path / "in1k.pth")
    assert torch.equal(video.patch_embed.proj.weight[:, :, 0], src.patch_embed.proj.weight)
    assert torch.all(video.temporal_pos_embedding == 0) and video.temporal_pos_embedding.shape == (1, 4, 32)
    x = clip(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(video(x[:, :, None]), src(x), atol=1e-6)
    centred = load(path=tmp_path / "in1k.pth", tubelet_size=2)
    w = centred.patch_embed.proj.weight
    assert torch.equal(w[:, :, 1], src.patch_embed.proj.weight) and torch.all(w[:, :, 0] == 0)


def test_checkpoint_of_other_length_resolution_and_head(tmp_path):
    src = tiny(seed=3, num_frames=8)
    torch.save(src.state_dict(), tmp_path / "f8.pth")
    model = load(path=tmp_path / "f8.pth", num_frames=4, img_size=64, num_classes=7)
    assert torch.allclose(model.temporal_pos_embedding, resample_temporal_embed(src.temporal_pos_embedding, 4))
    assert torch.allclose(model.pos_embed, resample_pos_embed(src.pos_embed, (4, 4), (2, 2), "head", "head"))
    assert model.pos_embed[0, 0].equal(src.pos_embed[0, 0])
    assert model.head.weight.shape == (7, 32)
    assert same_weights(src, model, skip={"temporal_pos_embedding", "pos_embed", "head.weight", "head.bias"})
    gray = load(path=tmp_path / "f8.pth", num_frames=8, in_chans=1)
    assert torch.allclose(gray.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))


def test_masked_pretraining_layout_loads_its_trunk(tmp_path):
    src = tiny(seed=5)
    sd = {k: v.clone() for k, v in src.state_dict().items() if not k.startswith("head.")}
    sd["norm.weight"] = sd.pop("norm_f.weight")
    sd.update({"clip_decoder.0.head.weight": torch.ones(4, 32), "clip_pos_embed": torch.ones(1, 17, 4)})
    torch.save(sd, tmp_path / "mask_pt.pth")
    model = load(path=tmp_path / "mask_pt.pth")
    assert same_weights(src, model, skip={"head.weight", "head.bias"})


def test_bad_checkpoints_are_refused_with_the_keys(tmp_path):
    torch.save(tiny().state_dict(), tmp_path / "video.pth")
    with pytest.raises(ValueError, match="a video checkpoint.*build a video model"):
        load("videomamba_tiny_patch16_224", tmp_path / "video.pth")
    sd = tiny(depth=3).state_dict()
    torch.save(sd, tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match="unexpected keys 17 .*layers.2"):
        load(path=tmp_path / "deeper.pth")
    torch.save(tiny(embed_dim=48).state_dict(), tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load(path=tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(path=tmp_path / "missing.pth")


def test_pretrained_cfgs_name_the_released_files():
    cfg = timm.models.get_pretrained_cfg("videomamba_middle_f32_224.coin_mask_ft")
    assert cfg.hf_hub_id == "OpenGVLab/VideoMamba"
    assert cfg.hf_hub_filename == "videomamba_m16_coin_mask_ft_f32_res224.pth" and cfg.num_classes == 180
    assert timm.models.get_pretrained_cfg("videomamba_small_f16_224").hf_hub_filename == \
        "videomamba_s16_k400_f16_res224.pth"
    image = timm.models.get_pretrained_cfg("videomamba_base_patch16_224")
    assert image.hf_hub_filename == "videomamba_b16_in1k_res224.pth" and image.num_classes == 1000
    assert image.mean == (0.485, 0.456, 0.406)


def test_pretrained_true_reads_the_hub_file_from_the_local_cache(tmp_path, monkeypatch):
    """pretrained=True fetches the registered file through the Hugging Face cache (offline here:
    the file is put where a download would have left it) and loads the flat video layout."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    src = tiny(seed=6)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--OpenGVLab--VideoMamba"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.save(src.state_dict(), repo / "snapshots" / commit / "videomamba_t16_ssv2_f8_res224.pth")
    model = tiny("videomamba_tiny_f8_224.ssv2", randomize=False, pretrained=True)
    assert same_weights(src, model)


# --- timm contract --------------------------------------------------------------------------------


def test_timm_api_contract():
    model = tiny()
    x = clip(2, 3, 4, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 17, 32)
    assert torch.equal(model.forward_head(feats, pre_logits=True), feats[:, 0])
    assert model.num_frames == 4 and model.get_classifier() is model.head
    model.reset_classifier(0, "avg")
    assert torch.allclose(model(x), feats[:, 1:].mean(1), atol=1e-6)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    assert "temporal_pos_embedding" in model.no_weight_decay() and "pos_embed" in model.no_weight_decay()
    assert "temporal_pos_embedding" in model.group_matcher()["stem"]
    rates = [blk.drop_path.drop_prob for blk in tiny(depth=3, drop_path_rate=0.2).layers[1:]]
    assert rates == pytest.approx([0.1, 0.2])
    assert isinstance(tiny(fc_drop_rate=0.5).head_drop, torch.nn.Dropout)


def test_forward_intermediates_and_features_only():
    model = tiny(depth=3)
    x = clip(2, 3, 4, 48, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [tuple(t.shape) for t in inter] == [(2, 32, 4, 3, 2)] * 3
        tokens = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", norm=True, intermediates_only=True)
        assert torch.equal(tokens[0], final[:, 1:])
        maps = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        assert torch.equal(maps[:, :, 2, 1, 0], final[:, 1 + 2 * 6 + 1 * 2 + 0])  # frame 2, row 1, column 0
        pairs = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, norm=True, intermediates_only=True)
        assert torch.equal(pairs[0][1], final[:, :1])
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], inter[0])
    feats = tiny(depth=3, features_only=True, out_indices=(0, 2), randomize=False)
    assert feats.feature_info.channels() == [32, 32] and feats.feature_info.reduction() == [16, 16]
    assert [tuple(m.shape) for m in feats(x)] == [(2, 32, 4, 3, 2)] * 2


def test_backward_reaches_every_parameter_and_grad_checkpointing():
    model = tiny().train()
    x = clip(2, 3, 4, 32, 32)
    model(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing()
        assert torch.equal(model(x), ref)


def assert_fx_trace_equals_eager(model):
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    for shape in ((2, 3, 4, 32, 32), (1, 3, 6, 48, 32)):  # one graph for every clip shape
        x = clip(*shape)
        with torch.no_grad():
            assert torch.equal(next(iter(fx_model(x).values())), model(x)), shape


def test_fx_trace_equals_eager():
    assert_fx_trace_equals_eager(tiny())


def test_meta_full_size_forward():
    with torch.device("meta"):
        model = timm.create_model("videomamba_tiny_f16_224").eval()
        out = model.forward_features(torch.randn(1, 3, 16, 224, 224))
    assert out.shape == (1, 1 + 16 * 196, 192)


# --- the frame-averaging baseline ---------------------------------------------------------------------

FRAMEAVG = "videomamba_tiny_frameavg_f8_224"


def test_frame_average_is_the_image_model_on_each_frame_in_any_order():
    model = tiny(FRAMEAVG)
    image = tiny("videomamba_tiny_patch16_224", randomize=False)
    image.load_state_dict(model.state_dict())  # the very same parameters
    assert isinstance(model, VideoMambaFrameAvg) and model.num_frames == 4
    x = clip(2, 3, 4, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, torch.stack([image(x[:, :, t]) for t in range(4)]).mean(0), atol=1e-6)
        for order in ([3, 2, 1, 0], [2, 0, 3, 1]):  # blind to the order of the frames
            assert torch.allclose(model(x[:, :, order]), out, atol=1e-6)
        assert model(clip(1, 3, 7, 48, 32)).shape == (1, 10)  # any clip length and frame size
    with torch.device("meta"):  # the image model's size: nothing depends on the clip length
        counts = {sum(p.numel() for p in timm.create_model(n).parameters())
                  for n in (FRAMEAVG, "videomamba_tiny_patch16_224")}
    assert counts == {OFFICIAL_COUNTS["videomamba_tiny_patch16_224"][None]}


def test_frame_average_timm_contract():
    model = tiny(FRAMEAVG, depth=3)
    x = clip(2, 3, 4, 48, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 4, 1 + 3 * 2, 32)  # each frame's tokens
        assert torch.allclose(model.forward_head(feats, pre_logits=True), feats[:, :, 0].mean(1), atol=1e-6)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, feats) and [tuple(t.shape) for t in inter] == [(2, 32, 4, 3, 2)] * 3
        maps = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        assert torch.equal(maps[:, :, 2, 1, 0], feats[:, 2, 1 + 1 * 2 + 0])  # frame 2, row 1, column 0
        tokens, cls = model.forward_intermediates(x, indices=1, output_fmt="NLC", norm=True,
                                                  return_prefix_tokens=True, intermediates_only=True)[0]
        assert torch.equal(tokens, feats[:, :, 1:].flatten(1, 2)) and torch.equal(cls, feats[:, :, 0])
    fo = tiny(FRAMEAVG, depth=3, features_only=True, out_indices=(0, 2), randomize=False)
    assert fo.feature_info.channels() == [32, 32] and [tuple(m.shape) for m in fo(x)] == [(2, 32, 4, 3, 2)] * 2
    model.reset_classifier(0, "avg")
    with torch.no_grad():
        assert torch.allclose(model(x), feats[:, :, 1:].mean((1, 2)), atol=1e-6)
    model.reset_classifier(5)
    model.set_input_size(img_size=48, num_frames=6)
    assert model.num_frames == 6 and model.pos_embed.shape == (1, 10, 32) and model(x).shape == (2, 5)
    assert isinstance(tiny(FRAMEAVG, fc_drop_rate=0.5).head_drop, torch.nn.Dropout)
    train = tiny(FRAMEAVG).train()
    train(clip(2, 3, 4, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in train.parameters())
    assert_fx_trace_equals_eager(tiny(FRAMEAVG))


@pytest.mark.parametrize("name", ["videomamba_tiny_f8_224", FRAMEAVG])
def test_reset_classifier_keeps_device_dtype_and_mode(name):
    """timm's model-suite check (tests/test_timm_suite.py runs it on the image families) on clips."""
    model = tiny(name).eval().to(torch.float64)
    for num_classes, pool in ((0, None), (2, None), (3, "avg")):
        model.reset_classifier(num_classes, pool)
        assert all(p.dtype == torch.float64 for p in model.get_classifier().parameters())
        assert not any(m.training for m in model.modules())
    assert model(clip(1, 3, 4, 32, 32).double()).shape == (1, 3)
    model.train()
    model.reset_classifier(4)
    assert all(m.training for m in model.modules())


def test_frame_average_loads_image_files_and_refuses_video_ones(tmp_path):
    src = tiny("videomamba_tiny_patch16_224", seed=4)
    torch.save({"model": src.state_dict()}, tmp_path / "in1k.pth")
    assert same_weights(src, load(FRAMEAVG, path=tmp_path / "in1k.pth"))
    assert timm.models.get_pretrained_cfg(FRAMEAVG).hf_hub_filename == "videomamba_t16_in1k_res224.pth"
    torch.save(tiny(seed=5).state_dict(), tmp_path / "k400.pth")
    with pytest.raises(ValueError, match="a video checkpoint"):
        load(FRAMEAVG, path=tmp_path / "k400.pth")
    with pytest.raises(ValueError, match=r"x: expected a video batch .*got shape \(1, 3, 32, 32\)"):
        tiny(FRAMEAVG)(clip(1, 3, 32, 32))
    with pytest.raises(ValueError, match="num_frames: expected a positive int, got 0"):
        tiny(FRAMEAVG, num_frames=0)


# --- bad input --------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"x: expected a video batch .*got shape \(1, 3, 32, 32\); for images"):
        model(clip(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected 3 channels.*got 1 channels"):
        model(clip(1, 1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected height >= 16 and width >= 16.*got 8x32"):
        model(clip(1, 3, 4, 8, 32))
    with pytest.raises(ValueError, match="num_frames: expected a positive multiple of tubelet_size=2, got 3"):
        VideoMamba(**{**TINY, "num_frames": 3, "tubelet_size": 2})
    with pytest.raises(ValueError, match="tubelet_size: expected a positive int, got 0"):
        VideoMamba(**{**TINY, "tubelet_size": 0})
    with pytest.raises(ValueError, match="num_frames: expected a positive multiple"):
        model.set_input_size(num_frames=0)
    with pytest.raises(TypeError):
        timm.create_model("videomamba_tiny_f8_224", cls_position="middle")
