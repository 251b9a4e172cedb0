"""``pretrained=True``: the official weights come from where timm users expect, through timm's loader.

VMamba's files are on the GitHub releases of MzeroMiko/VMamba (a ``url`` downloaded into torch.hub's
cache), Vim's on the Hugging Face Hub (``hf_hub_id`` + ``hf_hub_filename``, into the Hugging Face
cache). Nothing here reaches the network: the same loading code runs against local sources, a
``file://`` URL and a torch.hub cache for the ``url`` route, a local Hugging Face cache (offline
mode) for the hub route, with tiny models saved in the official checkpoint layout.
"""

import argparse
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub.constants  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.hub  # noqa: E402

import visionssm  # noqa: E402, F401

VMAMBA_TINY = dict(dims=8, depths=[1, 1, 1, 1], scan_backend="reference")
VIM_TINY = dict(embed_dim=32, depth=2, img_size=32, num_classes=10, scan_backend="reference")
RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download/"
VMAMBA_FILES = {
    "vmamba_vanilla_tiny": "%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth",
    "vmamba_vanilla_small": "%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth",
    "vmamba_vanilla_base": "%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth",
    "vmamba_tiny_s2l5": "%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth",
    "vmamba_small_s2l15": "%23v2cls/vssm_small_0229_ckpt_epoch_222.pth",
    "vmamba_base_s2l15": "%23v2cls/vssm_base_0229_ckpt_epoch_237.pth",
    "vmamba_tiny_s1l8": "%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth",
    "vmamba_small_s1l20": "%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth",
    "vmamba_base_s1l20": "%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth",
}
VIM_FILES = {  # None: the release's file name is not recorded, so there is no download source
    "vim_tiny_patch16_224": ("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224": ("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224": ("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224": ("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base_patch16_224": None,
}
VIM_OFFICIAL_NAMES = {
    "vim_tiny_patch16_224": "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim_tiny_patch16_stride8_224":
        "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """torch.hub may open file:// URLs only; the hub client is offline (HF_HUB_OFFLINE=1)."""
    real = torch.hub.urlopen

    def urlopen(req, *args, **kwargs):
        url = getattr(req, "full_url", req)
        if not str(url).startswith("file://"):
            raise AssertionError(f"a test tried to reach the network: {url}")
        return real(req, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    assert huggingface_hub.constants.HF_HUB_OFFLINE


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache as the default one."""
    cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def seed_hf_cache(cache, repo_id, filename, src_path):
    """Put a file where the hub client's cache keeps a downloaded one (refs/main -> snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / filename).write_bytes(src_path.read_bytes())


def randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def save_vmamba_official(path, model):
    """The official VMamba trainer's file: weights under 'model' and 'model_ema', a yacs config."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    yacs_config.CfgNode, yacs.config = CfgNode, yacs_config
    sd = model.state_dict()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "yacs", yacs)
        mp.setitem(sys.modules, "yacs.config", yacs_config)
        torch.save({"model": sd, "model_ema": {k: v + 1 for k, v in sd.items()}, "optimizer": {},
                    "lr_scheduler": {}, "max_accuracy": 82.6, "scaler": {}, "epoch": 263,
                    "config": CfgNode(MODEL=CfgNode(TYPE="vssm"))}, path)
    return path


def save_vim_official(path, model, official_name):
    """The official Vim main.py file: weights under 'model' and 'model_ema', argparse args."""
    sd = model.state_dict()
    torch.save({"model": sd, "model_ema": {k: v + 1 for k, v in sd.items()}, "optimizer": {},
                "lr_scheduler": {}, "epoch": 299, "scaler": {},
                "args": argparse.Namespace(model=official_name, input_size=224)}, path)
    return path


def assert_same_weights(model, src):
    want = src.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def tiny_source(name, **kwargs):
    torch.manual_seed(0)
    tiny = VMAMBA_TINY if name.startswith("vmamba") else VIM_TINY
    return randomized(timm.create_model(name, **{**tiny, **kwargs}))


# --- the registered sources ----------------------------------------------------------------------


def test_every_variant_names_its_official_source():
    for name, release in VMAMBA_FILES.items():
        cfg = timm.models.get_pretrained_cfg(f"{name}.in1k")
        assert cfg.url == RELEASES + release and cfg.custom_load is True and not cfg.hf_hub_id, name
    for name, source in VIM_FILES.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert not cfg.url, name
        if source is None:
            assert not cfg.hf_hub_id and not cfg.hf_hub_filename, name
        else:
            assert (cfg.hf_hub_id, cfg.hf_hub_filename, cfg.custom_load) == (*source, "hf"), name
    with_weights = set(timm.list_models(["vim_*", "vmamba_*"], pretrained=True))
    assert with_weights == {f"{n}.in1k" for n in VMAMBA_FILES} | {n for n, s in VIM_FILES.items() if s}


# --- VMamba: a URL, downloaded into torch.hub's cache --------------------------------------------


def test_vmamba_downloads_a_url_into_the_torch_hub_cache(tmp_path, torch_home):
    src = tiny_source("vmamba_tiny_s1l8")
    (tmp_path / "release").mkdir()
    path = save_vmamba_official(tmp_path / "release" / "vssm1_tiny_0230s_ckpt_epoch_264.pth", src)
    model = timm.create_model("vmamba_tiny_s1l8", pretrained=True, **VMAMBA_TINY,
                              pretrained_cfg_overlay=dict(url=path.as_uri()))
    assert (torch_home / path.name).is_file()  # downloaded once, as timm caches url weights
    assert_same_weights(model, src)  # 'model', not 'model_ema'
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src(x))


@pytest.mark.parametrize("name", ["vmamba_vanilla_tiny", "vmamba_tiny_s1l8"])
def test_vmamba_pretrained_true_loads_the_registered_release(tmp_path, torch_home, name):
    """No overlay: the registered URL's file, once in the cache, is what pretrained=True loads."""
    src = tiny_source(name)
    torch_home.mkdir(parents=True)
    save_vmamba_official(torch_home / VMAMBA_FILES[name].split("/")[-1], src)
    assert_same_weights(timm.create_model(name, pretrained=True, **VMAMBA_TINY), src)
    # the EMA weights on request, a new head, features
    ema = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(custom_load="model_ema"),
                            **VMAMBA_TINY)
    assert torch.equal(ema.state_dict()["classifier.norm.weight"], src.state_dict()["classifier.norm.weight"] + 1)
    head7 = timm.create_model(name, pretrained=True, num_classes=7, **VMAMBA_TINY)
    assert head7.get_classifier().out_features == 7
    assert torch.equal(head7.patch_embed[0].weight, src.patch_embed[0].weight)
    feats = timm.create_model(name, pretrained=True, features_only=True, **VMAMBA_TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = src.forward_intermediates(x, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(feats(x), want, strict=True))


def test_vmamba_without_the_file_or_network_fails_loudly(torch_home):
    with pytest.raises(AssertionError, match="reach the network.*vssm1_tiny_0230s_ckpt_epoch_264.pth"):
        timm.create_model("vmamba_tiny_s1l8", pretrained=True, **VMAMBA_TINY)
    timm.create_model("vmamba_tiny_s1l8", **VMAMBA_TINY)  # pretrained=False touches nothing


# --- Vim: a file on the Hugging Face Hub -----------------------------------------------------------


@pytest.mark.parametrize("name", ["vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224"])
def test_vim_pretrained_true_loads_the_hub_file(tmp_path, hf_cache, name):
    src = tiny_source(name)
    repo_id, filename = VIM_FILES[name]
    seed_hf_cache(hf_cache, repo_id, filename,
                  save_vim_official(tmp_path / filename, src, VIM_OFFICIAL_NAMES[name]))
    model = timm.create_model(name, pretrained=True, **VIM_TINY)
    assert_same_weights(model, src)  # 'model', not 'model_ema'
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src(x))
    # converted on the way: the official middle class slot moved for a head-class-token model,
    # the position embeddings resampled for another size, the head replaced for other classes
    head = timm.create_model(name, pretrained=True, **{**VIM_TINY, "cls_position": "head", "img_size": 48,
                                                       "num_classes": 3})
    pe, mid = src.pos_embed.detach(), (src.pos_embed.shape[1] - 1) // 2  # M // 2 of M patches
    assert torch.equal(head.pos_embed[:, 0], pe[:, mid]) and head.head.out_features == 3


def test_vim_hub_cache_dir_argument(tmp_path):
    src = tiny_source("vim_tiny_patch16_224")
    repo_id, filename = VIM_FILES["vim_tiny_patch16_224"]
    seed_hf_cache(tmp_path / "models", repo_id, filename,
                  save_vim_official(tmp_path / filename, src, VIM_OFFICIAL_NAMES["vim_tiny_patch16_224"]))
    model = timm.create_model("vim_tiny_patch16_224", pretrained=True, cache_dir=tmp_path / "models", **VIM_TINY)
    assert_same_weights(model, src)


def test_vim_without_the_file_fails_loudly(hf_cache):
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError, match="cannot find the requested files in the local cache"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True, **VIM_TINY)
    # no file name recorded for Vim-B: refused, never random weights under pretrained=True
    with pytest.raises(RuntimeError, match="No pretrained weights exist for vim_base_patch16_224"):
        timm.create_model("vim_base_patch16_224", pretrained=True, **VIM_TINY)


# --- timm's test_model_load_pretrained / test_model_features_pretrained, on local copies ----------


@pytest.mark.parametrize("name", ["vmamba_vanilla_tiny", "vmamba_tiny_s2l5", "vim_tiny_patch16_224",
                                  "vim_small_patch16_stride8_224"])
def test_timm_pretrained_contract(tmp_path, torch_home, hf_cache, name):
    """What timm's suite asks of every model with weights (it downloads the real files; here the
    registered source is served from the cache): other in_chans / num_classes, and features_only."""
    src = tiny_source(name)
    if name.startswith("vmamba"):
        torch_home.mkdir(parents=True)
        save_vmamba_official(torch_home / VMAMBA_FILES[name].split("/")[-1], src)
        kw, feature_kw = VMAMBA_TINY, {}
    else:
        repo_id, filename = VIM_FILES[name]
        official = name.replace("_224", "_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2")
        seed_hf_cache(hf_cache, repo_id, filename, save_vim_official(tmp_path / filename, src, official))
        kw, feature_kw = VIM_TINY, dict(out_indices=(0, 1))
    gray = timm.create_model(name, pretrained=True, **{**kw, "in_chans": 1, "num_classes": 5})
    first = src.pretrained_cfg["first_conv"] + ".weight"
    assert torch.allclose(gray.state_dict()[first], src.state_dict()[first].sum(1, keepdim=True))
    assert gray.get_classifier().out_features == 5
    bare = timm.create_model(name, pretrained=True, **{**kw, "in_chans": 1, "num_classes": 0})
    assert bare.num_classes == 0 and isinstance(bare.get_classifier(), torch.nn.Identity)
    feats = timm.create_model(name, pretrained=True, features_only=True, **kw, **feature_kw).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = src.forward_intermediates(x, indices=list(feats.feature_info.out_indices), intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(feats(x), want, strict=True))


# --- a local file still works offline, whatever the registered source ------------------------------


@pytest.mark.parametrize("name", ["vmamba_tiny_s1l8", "vim_tiny_patch16_224", "vim_base_patch16_224"])
def test_local_file_overlay_loads_offline(tmp_path, torch_home, hf_cache, name):
    src = tiny_source(name)
    if name.startswith("vmamba"):
        path = save_vmamba_official(tmp_path / "weights.pth", src)
        kw = VMAMBA_TINY
    else:
        path = save_vim_official(tmp_path / "weights.pth", src, VIM_OFFICIAL_NAMES["vim_tiny_patch16_224"])
        kw = VIM_TINY
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)
    assert_same_weights(model, src)
    assert not any(torch_home.parent.parent.glob("**/*.pth")) and not any(hf_cache.glob("**/*.pth"))
