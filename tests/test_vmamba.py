"""VMamba: scan orders, SS2D, the nine registered variants, checkpoints and the timm contract.

Forward tests use tiny configs (dims 8, one block per stage) and the reference scan backend, so
the whole file runs in seconds on two cores. Fidelity to the official code is checked against
``official_*`` below: a separate, deliberately plain transcription of the official forward
(``SS2D.forwardv0`` / ``forward_corev2``, ``VSSM``) that reads the parameters by their official
names from a state dict.
"""

from __future__ import annotations

import math
import os
import sys
import types

import pytest
import timm
import torch
import torch.nn.functional as F

import visionssm  # noqa: F401  (registers the models)
from visionssm.layers.scan_orders import (
    DIRECTIONS,
    SCAN_ORDERS,
    cross_merge,
    cross_scan,
    resolve_scan_order,
    scan_permutation,
)
from visionssm.layers.ss2d import SS2D, VSSBlock
from visionssm.models.vmamba import VMamba, checkpoint_filter_fn
from visionssm.ops import available_backends, selective_scan, selective_scan_reference

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = dict(dims=8, depths=[1, 1, 1, 1], scan_backend="reference")

VARIANTS = {  # name: (params in M, dims, depths, d_state, ssm_ratio, mlp_ratio, vanilla)
    "vmamba_vanilla_tiny": (22.89, 96, (2, 2, 9, 2), 16, 2.0, 0.0, True),
    "vmamba_vanilla_small": (44.42, 96, (2, 2, 27, 2), 16, 2.0, 0.0, True),
    "vmamba_vanilla_base": (76.25, 128, (2, 2, 27, 2), 16, 2.0, 0.0, True),
    "vmamba_tiny_s1l8": (30.25, 96, (2, 2, 8, 2), 1, 1.0, 4.0, False),
    "vmamba_small_s2l15": (50.15, 96, (2, 2, 15, 2), 1, 2.0, 4.0, False),
    "vmamba_base_s2l15": (88.56, 128, (2, 2, 15, 2), 1, 2.0, 4.0, False),
    "vmamba_tiny_s2l5": (30.71, 96, (2, 2, 5, 2), 1, 2.0, 4.0, False),
    "vmamba_small_s1l20": (49.01, 96, (2, 2, 20, 2), 1, 1.0, 4.0, False),
    "vmamba_base_s1l20": (86.61, 128, (2, 2, 20, 2), 1, 1.0, 4.0, False),
}


def tiny(name="vmamba_tiny_s1l8", **kw):
    torch.manual_seed(0)
    return timm.create_model(name, **{**TINY, **kw}).eval()


def randomize(model):
    """Non-trivial values everywhere (LayerNorm affine, biases), so a swapped key changes the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_logs"):
                continue
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------------------------------------
# the official key table, written out from the official layout


def official_shapes(dims, depths, d_state, ssm_ratio, mlp_ratio, vanilla, num_classes=1000):
    dims = [dims * 2 ** i for i in range(4)]
    t = {}
    if vanilla:
        t.update({"patch_embed.0.weight": (dims[0], 3, 4, 4), "patch_embed.0.bias": (dims[0],),
                  "patch_embed.2.weight": (dims[0],), "patch_embed.2.bias": (dims[0],)})
    else:
        h = dims[0] // 2
        t.update({"patch_embed.0.weight": (h, 3, 3, 3), "patch_embed.0.bias": (h,),
                  "patch_embed.2.weight": (h,), "patch_embed.2.bias": (h,),
                  "patch_embed.5.weight": (dims[0], h, 3, 3), "patch_embed.5.bias": (dims[0],),
                  "patch_embed.7.weight": (dims[0],), "patch_embed.7.bias": (dims[0],)})
    for i, (C, depth) in enumerate(zip(dims, depths)):
        D, R, N = int(ssm_ratio * C), math.ceil(C / 16), d_state
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            t.update({b + "norm.weight": (C,), b + "norm.bias": (C,),
                      b + "op.in_proj.weight": (2 * D if vanilla else D, C),
                      b + "op.conv2d.weight": (D, 1, 3, 3),
                      b + "op.x_proj_weight": (4, R + 2 * N, D), b + "op.dt_projs_weight": (4, D, R),
                      b + "op.dt_projs_bias": (4, D), b + "op.A_logs": (4 * D, N), b + "op.Ds": (4 * D,),
                      b + "op.out_norm.weight": (D,), b + "op.out_norm.bias": (D,),
                      b + "op.out_proj.weight": (C, D)})
            if vanilla:
                t[b + "op.conv2d.bias"] = (D,)
            if mlp_ratio > 0:
                H = int(C * mlp_ratio)
                t.update({b + "norm2.weight": (C,), b + "norm2.bias": (C,),
                          b + "mlp.fc1.weight": (H, C), b + "mlp.fc1.bias": (H,),
                          b + "mlp.fc2.weight": (C, H), b + "mlp.fc2.bias": (C,)})
        if i < 3:
            d = f"layers.{i}.downsample."
            if vanilla:
                t.update({d + "reduction.weight": (2 * C, 4 * C), d + "norm.weight": (4 * C,),
                          d + "norm.bias": (4 * C,)})
            else:
                t.update({d + "1.weight": (2 * C, C, 3, 3), d + "1.bias": (2 * C,),
                          d + "3.weight": (2 * C,), d + "3.bias": (2 * C,)})
    t.update({"classifier.norm.weight": (dims[3],), "classifier.norm.bias": (dims[3],),
              "classifier.head.weight": (num_classes, dims[3]), "classifier.head.bias": (num_classes,)})
    return t


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_counts_and_key_table(name):
    params_m, dims, depths, d_state, ssm_ratio, mlp_ratio, vanilla = VARIANTS[name]
    model = timm.create_model(name, device="meta")
    assert name in visionssm.list_models()
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_shapes(dims, depths, d_state, ssm_ratio, mlp_ratio, vanilla)


def test_builds_under_a_meta_device_context():
    """`with torch.device("meta")` (how empty-weight initialisation builds big models) as device="meta"."""
    with torch.device("meta"):
        meta = timm.create_model("vmamba_tiny_s1l8", drop_path_rate=0.2, **TINY)
    cpu = timm.create_model("vmamba_tiny_s1l8", drop_path_rate=0.2, **TINY)
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in cpu.state_dict().items()}


def test_key_table_counts_of_reference():
    # the tensor counts the reference document lists for the two tiny models
    assert len(timm.create_model("vmamba_vanilla_tiny", device="meta").state_dict()) == 212
    assert len(timm.create_model("vmamba_tiny_s1l8", device="meta").state_dict()) == 276
    sd = timm.create_model("vmamba_vanilla_tiny", device="meta").state_dict()
    assert sd["layers.0.blocks.0.op.in_proj.weight"].shape == (384, 96)
    assert sd["layers.0.blocks.0.op.x_proj_weight"].shape == (4, 38, 192)


# ---------------------------------------------------------------------------------------------
# scan orders


def test_scan_directions_order():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # rows (0 1 2), (3 4 5)
    want = {
        "row": [0, 1, 2, 3, 4, 5], "col": [0, 3, 1, 4, 2, 5],
        "row_rev": [5, 4, 3, 2, 1, 0], "col_rev": [5, 2, 4, 1, 3, 0],
        "snake_row": [0, 1, 2, 5, 4, 3], "snake_col": [0, 3, 4, 1, 2, 5],
        "snake_row_rev": [3, 4, 5, 2, 1, 0], "snake_col_rev": [5, 2, 1, 4, 3, 0],
    }
    assert set(want) == set(DIRECTIONS)
    for d, seq in want.items():
        assert cross_scan(x, d).flatten().tolist() == seq, d
        assert scan_permutation(2, 3, d).tolist() == seq, d
    # VMamba's official order: row, column, then both reversed
    assert SCAN_ORDERS["cross"] == ("row", "col", "row_rev", "col_rev")
    assert resolve_scan_order("bidirectional") == ("row", "row_rev")
    assert resolve_scan_order("unidirectional") == ("row",)
    assert resolve_scan_order(["col", "row"]) == ("col", "row")


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (4, 4), (5, 3), (6, 7)])
def test_cross_scan_merge_adjoint(hw):
    H, W = hw
    torch.manual_seed(0)
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    for order in SCAN_ORDERS:
        dirs = resolve_scan_order(order)
        xs = cross_scan(x, order)
        assert xs.shape == (2, len(dirs), 3, H * W) and xs.is_contiguous()
        expect = torch.stack([x.flatten(2)[..., scan_permutation(H, W, d)] for d in dirs], 1)
        assert torch.equal(xs, expect), order
        # a channels-last map is read in place, with the same result
        assert torch.equal(cross_scan(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), order), xs)
        y = torch.randn_like(xs)
        merged = cross_merge(y, H, W, order)
        assert merged.shape == (2, 3, H, W)
        torch.testing.assert_close((xs * y).sum(), (x * merged).sum(), rtol=1e-12, atol=1e-12)


def test_cross_scan_merge_gradients():
    x = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 4, 2, 15, dtype=torch.float64, requires_grad=True)
    for order in ("cross", "snake"):
        assert torch.autograd.gradcheck(lambda t, o=order: cross_scan(t, o), (x,))
        assert torch.autograd.gradcheck(lambda t, o=order: cross_merge(t, 3, 5, o), (y,))


def test_cross_merge_inverts_official_merge_order():
    # merging a scan of x gives K * x: every direction puts each value back where it came from
    x = torch.randn(2, 3, 5, 4)
    for order in SCAN_ORDERS:
        k = len(resolve_scan_order(order))
        torch.testing.assert_close(cross_merge(cross_scan(x, order), 5, 4, order), k * x)


def test_scan_order_bad_inputs():
    with pytest.raises(ValueError, match="scan_order: expected .*got 'diagonal'"):
        resolve_scan_order("diagonal")
    with pytest.raises(ValueError, match="scan_order"):
        resolve_scan_order(["row", "up"])
    with pytest.raises(ValueError, match=r"x: expected a \(batch, channels, height, width\) tensor, got \(3, 4\)"):
        cross_scan(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"y: expected shape \(batch, 4, channels, 6\)"):
        cross_merge(torch.zeros(1, 2, 3, 6), 2, 3)


# ---------------------------------------------------------------------------------------------
# SS2D


def official_ss2d(p: dict, x: torch.Tensor, gate: bool) -> torch.Tensor:
    """The official SS2D forward (v0 / v05_noz), from its parameters; x (B, H, W, C)."""
    x = F.linear(x, p["in_proj.weight"])
    if gate:
        x, z = x.chunk(2, dim=-1)
        z = F.silu(z)
    x = x.permute(0, 3, 1, 2)
    D = x.shape[1]
    if "conv2d.weight" in p:
        x = F.conv2d(x, p["conv2d.weight"], p.get("conv2d.bias"), padding=1, groups=D)
    x = F.silu(x)
    B, D, H, W = x.shape
    L = H * W
    K, _, R = p["dt_projs_weight"].shape
    N = p["A_logs"].shape[1]
    x_hwwh = torch.stack([x.reshape(B, D, L), x.transpose(2, 3).reshape(B, D, L)], dim=1)
    xs = torch.cat([x_hwwh, x_hwwh.flip(-1)], dim=1)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, p["x_proj_weight"])
    dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, p["dt_projs_weight"])
    out_y = selective_scan_reference(
        xs.reshape(B, -1, L), dts.reshape(B, -1, L), -torch.exp(p["A_logs"]), Bs, Cs, p["Ds"],
        delta_bias=p["dt_projs_bias"].reshape(-1), delta_softplus=True).view(B, K, D, L)
    inv_y = out_y[:, 2:4].flip(-1)
    wh_y = out_y[:, 1].view(B, D, W, H).transpose(2, 3).reshape(B, D, L)
    invwh_y = inv_y[:, 1].view(B, D, W, H).transpose(2, 3).reshape(B, D, L)
    y = out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y
    y = F.layer_norm(y.transpose(1, 2), (D,), p["out_norm.weight"], p["out_norm.bias"]).view(B, H, W, D)
    if gate:
        y = y * z
    return F.linear(y, p["out_proj.weight"])


@pytest.mark.parametrize("gate,conv,conv_bias,d_state", [(True, 3, True, 4), (False, 3, False, 1),
                                                          (False, 0, False, 2)])
def test_ss2d_matches_official_forward(gate, conv, conv_bias, d_state):
    torch.manual_seed(0)
    m = SS2D(12, d_state=d_state, ssm_ratio=2.0, gate=gate, d_conv=conv, conv_bias=conv_bias,
             backend="reference")
    randomize(m)
    assert ("conv2d.weight" in m.state_dict()) == (conv > 1)
    x = torch.randn(2, 5, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), official_ss2d(m.state_dict(), x, gate), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["cross", "snake", "bidirectional"])
def test_ss2d_one_scan_equals_per_direction_scans(order):
    """The single grouped scan over K*d_inner channels == K separate scans merged by hand."""
    torch.manual_seed(0)
    m = randomize(SS2D(8, d_state=3, scan_order=order, backend="reference"))
    dirs = resolve_scan_order(order)
    B, D, H, W = 2, m.d_inner, 3, 5
    x = torch.randn(B, D, H, W)
    R, N = m.dt_rank, m.d_state
    merged = torch.zeros(B, D, H * W)
    with torch.no_grad():
        for k, d in enumerate(dirs):
            perm = scan_permutation(H, W, d)
            seq = x.flatten(2)[..., perm]
            dt, Bk, Ck = torch.split(torch.einsum("cd,bdl->bcl", m.x_proj_weight[k], seq), [R, N, N], dim=1)
            rows = slice(k * D, (k + 1) * D)
            yk = selective_scan(seq, torch.einsum("dr,brl->bdl", m.dt_projs_weight[k], dt),
                                -torch.exp(m.A_logs[rows]), Bk, Ck, m.Ds[rows],
                                delta_bias=m.dt_projs_bias[k], delta_softplus=True, backend="reference")
            merged[..., perm] += yk
        torch.testing.assert_close(m.forward_core(x), merged.view(B, D, H, W), rtol=1e-5, atol=1e-5)
    assert m.x_proj_weight.shape == (len(dirs), R + 2 * N, D) and m.A_logs.shape == (len(dirs) * D, N)


def test_ss2d_init_and_bad_args():
    m = SS2D(32, d_state=4, ssm_ratio=1.0)
    assert m.dt_rank == 2
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    torch.testing.assert_close(m.A_logs[5], torch.log(torch.arange(1.0, 5.0)))
    assert torch.all(m.Ds == 1)
    with pytest.raises(ValueError, match="backend: expected one of .*got 'gpu'"):
        SS2D(8, backend="gpu")
    with pytest.raises(ValueError, match="ssm_ratio: expected a positive number, got 0"):
        SS2D(8, ssm_ratio=0)
    with pytest.raises(ValueError, match="d_state"):
        SS2D(8, d_state=0)
    with pytest.raises(TypeError):
        VSSBlock(8, not_an_argument=1)


# ---------------------------------------------------------------------------------------------
# the whole model against the official forward


def official_vssm(sd: dict, x: torch.Tensor, vanilla: bool) -> torch.Tensor:
    def ln(t, prefix):
        return F.layer_norm(t, sd[prefix + ".weight"].shape, sd[prefix + ".weight"], sd[prefix + ".bias"])

    if vanilla:
        x = ln(F.conv2d(x, sd["patch_embed.0.weight"], sd["patch_embed.0.bias"], stride=4).permute(0, 2, 3, 1),
               "patch_embed.2")
    else:
        x = F.conv2d(x, sd["patch_embed.0.weight"], sd["patch_embed.0.bias"], stride=2, padding=1)
        x = F.gelu(ln(x.permute(0, 2, 3, 1), "patch_embed.2").permute(0, 3, 1, 2))
        x = F.conv2d(x, sd["patch_embed.5.weight"], sd["patch_embed.5.bias"], stride=2, padding=1)
        x = ln(x.permute(0, 2, 3, 1), "patch_embed.7")
    for i in range(4):
        j = 0
        while f"layers.{i}.blocks.{j}.norm.weight" in sd:
            b = f"layers.{i}.blocks.{j}."
            p = {k[len(b) + 3:]: v for k, v in sd.items() if k.startswith(b + "op.")}
            x = x + official_ss2d(p, ln(x, b + "norm"), gate=vanilla)
            if b + "mlp.fc1.weight" in sd:
                h = F.gelu(F.linear(ln(x, b + "norm2"), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
                x = x + F.linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
            j += 1
        d = f"layers.{i}.downsample."
        if d + "reduction.weight" in sd:
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
            x = F.linear(ln(x, d + "norm"), sd[d + "reduction.weight"])
        elif d + "1.weight" in sd:
            x = F.conv2d(x.permute(0, 3, 1, 2), sd[d + "1.weight"], sd[d + "1.bias"], stride=2, padding=1)
            x = ln(x.permute(0, 2, 3, 1), d + "3")
    x = ln(x, "classifier.norm").mean((1, 2))
    return F.linear(x, sd["classifier.head.weight"], sd["classifier.head.bias"])


@pytest.mark.parametrize("name,hw", [("vmamba_vanilla_tiny", (32, 32)), ("vmamba_tiny_s1l8", (32, 32)),
                                     ("vmamba_tiny_s1l8", (64, 32))])
def test_model_matches_official_forward(name, hw):
    model = randomize(tiny(name, num_classes=10))
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_vssm(model.state_dict(), x, "vanilla" in name),
                                   rtol=1e-4, atol=1e-4)


OTHER_BACKENDS = [b for b in available_backends("cpu") if b != "reference"]


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("name", ["vmamba_vanilla_tiny", "vmamba_tiny_s1l8"])
def test_backends_give_reference_logits(backend, name):
    model = randomize(tiny(name))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ref = model(x)
        model.set_scan_backend(backend)
        try:
            out = model(x)
        except ModuleNotFoundError as e:  # listed but not landed yet
            pytest.skip(f"backend {backend!r} not importable: {e}")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# checkpoints in the official format


def _fake_yacs(monkeypatch):
    """Install a stand-in ``yacs.config.CfgNode`` (a dict subclass with attribute state, as yacs')."""
    mod, cfg_mod = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__["__immutable__"] = False

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    cfg_mod.CfgNode, mod.config = CfgNode, cfg_mod
    monkeypatch.setitem(sys.modules, "yacs", mod)
    monkeypatch.setitem(sys.modules, "yacs.config", cfg_mod)
    return CfgNode


def save_official(path, model_sd, ema_sd=None):
    with pytest.MonkeyPatch.context() as mp:
        CfgNode = _fake_yacs(mp)
        config = CfgNode({"MODEL": CfgNode({"TYPE": "vssm", "NAME": "vssm_tiny"}), "AMP_ENABLE": True})
        torch.save({"model": model_sd, "model_ema": ema_sd if ema_sd is not None else model_sd,
                    "optimizer": {}, "lr_scheduler": {}, "max_accuracy": 82.6, "scaler": {}, "epoch": 3,
                    "config": config}, path)
    assert "yacs" not in sys.modules  # loading must not need it


def early_names(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        k = k.replace(".norm.weight", ".ln_1.weight").replace(".norm.bias", ".ln_1.bias") if ".blocks." in k else k
        k = k.replace(".op.", ".self_attention.")
        k = k.replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")
        out[k] = v
    return out


def one_file_names(sd):
    out = {}
    for k, v in sd.items():
        if k.endswith("op.x_proj_weight"):
            k, v = k.replace("x_proj_weight", "x_proj.weight"), v.reshape(-1, v.shape[-1], 1)
        elif k.endswith("op.dt_projs_weight"):
            k, v = k.replace("dt_projs_weight", "dt_projs.weight"), v.reshape(-1, v.shape[-1], 1)
        elif k.endswith("op.dt_projs_bias"):
            k, v = k.replace("dt_projs_bias", "dt_projs.bias"), v.reshape(-1)
        k = k.replace("downsample.norm.", "downsample.1.").replace("downsample.reduction.", "downsample.2.")
        out["module." + k] = v
    return out


@pytest.mark.parametrize("name,rename", [
    ("vmamba_vanilla_tiny", None), ("vmamba_vanilla_tiny", early_names),
    ("vmamba_vanilla_tiny", one_file_names), ("vmamba_tiny_s1l8", None), ("vmamba_tiny_s1l8", one_file_names),
])
def test_official_checkpoint_round_trip(tmp_path, name, rename):
    src = randomize(tiny(name))
    sd = src.state_dict()
    path = tmp_path / "ckpt.pth"
    save_official(path, rename(sd) if rename else sd, ema_sd={k: v + 1 for k, v in sd.items()})
    x = torch.randn(1, 3, 32, 32)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY).eval()
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))


def test_checkpoint_choices_and_adaptation(tmp_path):
    src = randomize(tiny())
    sd = src.state_dict()
    ema = {k: v * 0.5 for k, v in sd.items()}
    path = tmp_path / "ckpt.pth"
    save_official(path, sd, ema)
    # the EMA weights on request
    m = timm.create_model("vmamba_tiny_s1l8", pretrained=True, **TINY,
                          pretrained_cfg_overlay=dict(file=str(path), custom_load="model_ema"))
    assert torch.equal(m.state_dict()["classifier.norm.weight"], ema["classifier.norm.weight"])
    # a new head keeps the backbone
    m = timm.create_model("vmamba_tiny_s1l8", pretrained=True, num_classes=7, **TINY,
                          pretrained_cfg_overlay=dict(file=str(path)))
    assert m.get_classifier().out_features == 7
    assert torch.equal(m.state_dict()["layers.2.blocks.0.op.A_logs"], sd["layers.2.blocks.0.op.A_logs"])
    # features_only after loading
    f = timm.create_model("vmamba_tiny_s1l8", pretrained=True, features_only=True, **TINY,
                          pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = f(x)
        _, want = src.forward_intermediates(x)
    assert len(feats) == 4 and all(torch.equal(a, b) for a, b in zip(feats, want))
    # a filter for a plain state dict (timm's state_dict overlay route)
    m = timm.create_model("vmamba_tiny_s1l8", pretrained=True, **TINY,
                          pretrained_cfg_overlay=dict(state_dict=early_names(sd)))
    assert torch.equal(m.state_dict()["classifier.head.weight"], sd["classifier.head.weight"])
    assert set(checkpoint_filter_fn({"model": one_file_names(sd)}, src)) == set(sd)


def test_bad_checkpoints(tmp_path):
    src = tiny()
    sd = src.state_dict()
    path = tmp_path / "missing.pth"
    partial = {k: v for k, v in sd.items() if "layers.3" not in k}
    torch.save({"model": partial}, path)
    with pytest.raises(ValueError, match=r"missing keys 18 \(layers\.3\.blocks\.0\.norm\.weight, .*, \.\.\.\)"):
        src.load_pretrained(str(path))
    path = tmp_path / "other_variant.pth"
    torch.save({"model": tiny("vmamba_tiny_s1l8", dims=16).state_dict()}, path)
    with pytest.raises(ValueError, match="shape mismatches"):
        src.load_pretrained(str(path))
    with pytest.raises(ValueError, match="checkpoint .* does not exist"):
        src.load_pretrained(str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match=r"holds no EMA weights \('model_ema'"):
        torch.save({"model": sd}, path)
        src.load_pretrained(str(path), key="model_ema")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_checkpoint_refuses_arbitrary_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        tiny().load_pretrained(str(path))


# ---------------------------------------------------------------------------------------------
# the timm contract


def test_timm_api():
    m = tiny(num_classes=10)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, 2, 2, 64) and m.output_fmt == "NHWC" and m.num_features == 64
        assert m.forward_head(f, pre_logits=True).shape == (2, m.head_hidden_size)
        assert m.forward_head(f).shape == (2, 10)
        m.reset_classifier(0)
        assert m(x).shape == (2, 64)
        m.reset_classifier(0, "")
        assert m(x).shape == (2, 2, 2, 64)
        m.reset_classifier(5, "avg")
        assert m(x).shape == (2, 5)
        assert tiny(num_classes=0, global_pool="")(x).dim() == 4
    with pytest.raises(TypeError):
        timm.create_model("vmamba_tiny_s1l8", not_a_kwarg=1)
    cfg = m.pretrained_cfg
    sd = m.state_dict()
    assert cfg["first_conv"] + ".weight" in sd and cfg["classifier"] + ".weight" in sd
    assert cfg["pool_size"] == (7, 7) and cfg["url"].startswith("https://github.com/MzeroMiko/VMamba/releases/download/")


def test_param_groups_and_weight_decay():
    from fnmatch import fnmatch

    from timm.models._manipulate import group_parameters

    m = tiny()
    names = [n for n, _ in m.named_parameters()]
    for pattern in m.no_weight_decay():
        assert any(fnmatch(n, pattern) for n in names), pattern
    for coarse in (False, True):
        groups = group_parameters(m, m.group_matcher(coarse=coarse))
        assert len(groups) > 1
        assert sorted(n for g in groups.values() for n in g) == sorted(names)


def test_backward_every_parameter_gets_grad_and_checkpointing():
    m = tiny("vmamba_vanilla_tiny", num_classes=42, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 32, 32)
    m(x).sum().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []
    m.eval()
    with torch.no_grad():
        ref = m(x)
        m.set_grad_checkpointing()
        torch.testing.assert_close(m(x), ref)
    m.train()
    m.zero_grad()
    m(x.requires_grad_()).sum().backward()  # checkpointed backward runs
    assert all(p.grad is not None for p in m.parameters())


def test_forward_intermediates_and_features_only():
    m = tiny()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        torch.testing.assert_close(final, m.forward_features(x))
        assert [tuple(t.shape) for t in inter] == [(1, 8, 16, 12), (1, 16, 8, 6), (1, 32, 4, 3), (1, 64, 2, 2)]
        only = m.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(only, inter[1:3])] == [True, True]
        nhwc = m.forward_intermediates(x, indices=1, output_fmt="NHWC", intermediates_only=True)
        assert torch.equal(nhwc[0].permute(0, 3, 1, 2), inter[3])
        m.set_grad_checkpointing()
        final_ckpt, _ = m.forward_intermediates(x)
        torch.testing.assert_close(final_ckpt, final)
    f = timm.create_model("vmamba_tiny_s1l8", features_only=True, out_indices=(1, 2), **TINY).eval()
    assert f.feature_info.reduction() == [8, 16] and f.feature_info.channels() == [16, 32]
    assert len(f.model.layers) == 3  # the stage after the last output is pruned
    with torch.no_grad():
        assert [tuple(t.shape) for t in f(x)] == [(1, 16, 8, 6), (1, 32, 4, 3)]
    # num_classes=0 with feature extraction: the head is reset after timm pruned the final norm
    f0 = timm.create_model("vmamba_tiny_s1l8", features_only=True, num_classes=0, **TINY)
    assert len(f0(x)) == 4


def _fast_backend():
    for b in OTHER_BACKENDS:
        try:
            selective_scan(*(torch.ones(1, 1, 2),) * 2, -torch.ones(1, 1), *(torch.ones(1, 1, 2),) * 2, backend=b)
            return b
        except ModuleNotFoundError:
            continue
    return None


def test_done_when_features_only_480x640():
    """The issue's acceptance: features_only on a CPU, a 480x640 image, four NCHW maps at strides 4-32."""
    backend = _fast_backend()
    if backend is None:
        pytest.skip("no fast scan backend importable yet; the reference loop is too slow for 480x640")
    f = timm.create_model("vmamba_tiny_s1l8", features_only=True, dims=8, depths=[1, 1, 1, 1],
                          scan_backend=backend).eval()
    with torch.no_grad():
        feats = f(torch.randn(1, 3, 480, 640))
    assert [tuple(t.shape) for t in feats] == [(1, 8, 120, 160), (1, 16, 60, 80), (1, 32, 30, 40), (1, 64, 15, 20)]


@pytest.mark.parametrize("name", ["vmamba_vanilla_tiny", "vmamba_tiny_s1l8"])
@pytest.mark.parametrize("hw", [(37, 29), (1, 1), (33, 64)])
def test_odd_sizes_pad_to_ceil(name, hw):
    m = tiny(name)
    H, W = hw
    with torch.no_grad():
        _, inter = m.forward_intermediates(torch.randn(1, 3, H, W))
    for i, t in enumerate(inter):
        s = 4 * 2 ** i
        assert t.shape[2:] == (math.ceil(H / s), math.ceil(W / s))


def test_dtypes_devices_and_autocast():
    m = tiny()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y.float()).all()
    mb = tiny().to(torch.bfloat16)
    with torch.no_grad():
        assert mb(x.bfloat16()).dtype == torch.bfloat16
    meta = timm.create_model("vmamba_tiny_s1l8", device="meta", dtype=torch.bfloat16, **TINY)
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in meta.parameters())
    meta.reset_classifier(3)
    assert meta.get_classifier().weight.device.type == "meta"


def test_ablation_switches():
    for kw, check in [
        (dict(scan_order="bidirectional"), lambda op: op.x_proj_weight.shape[0] == 2),
        (dict(scan_order=["row", "row", "row_rev", "row_rev"]), lambda op: op.k_group == 4),
        (dict(ssm_conv=0), lambda op: op.conv2d is None),
        (dict(ssm_d_state=4, ssm_ratio=1.5), lambda op: op.A_logs.shape == (4 * 12, 4)),
        (dict(mlp_ratio=0.0), lambda op: True),
    ]:
        m = tiny(**kw)
        assert check(m.layers[0].blocks[0].op), kw
        assert hasattr(m.layers[0].blocks[0], "mlp") == (kw.get("mlp_ratio", 4.0) > 0)
        with torch.no_grad():
            assert m(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_bad_inputs():
    m = tiny()
    with pytest.raises(ValueError, match=r"x: expected an image batch of shape \(batch, 3, height, width\), "
                                         r"got \(1, 1, 32, 32\)"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected .*got \(3, 32, 32\)"):
        m(torch.randn(3, 32, 32))
    for kw, msg in [
        (dict(patchembed_version="v9"), "patchembed_version: expected 'v1' or 'v2', got 'v9'"),
        (dict(downsample_version="v0"), "downsample_version: expected 'v1', 'v2' or 'v3', got 'v0'"),
        (dict(dims=[8, 16]), r"dims: expected an int or 4 positive ints \(one per stage\), got \[8, 16\]"),
        (dict(depths=[]), r"depths: expected a non-empty sequence of ints >= 0, got \[\]"),
        (dict(scan_order="spiral"), "scan_order: expected .*got 'spiral'"),
        (dict(scan_backend="cuda"), "backend: expected one of .*got 'cuda'"),
        (dict(global_pool="max"), "global_pool: expected 'avg' or '' .*got 'max'"),
        (dict(mlp_ratio=-1.0), "mlp_ratio: expected >= 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            VMamba(**{**TINY, **kw})
    with pytest.raises(ValueError, match="output_fmt"):
        m.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NLC")


@pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing")
def test_fx_feature_extraction():
    from timm.models._features_fx import create_feature_extractor

    m = tiny()
    x = torch.randn(1, 3, 32, 32)
    fe = create_feature_extractor(m, {"layers.1.blocks": "s1", "classifier": "out"})
    with torch.no_grad():
        out, (_, inter) = fe(x), m.forward_intermediates(x)
        torch.testing.assert_close(out["out"], m(x))
    torch.testing.assert_close(out["s1"].permute(0, 3, 1, 2), inter[1])


def test_torchvision_detection_forward():
    """A features_only VMamba as the body of torchvision's Faster R-CNN (FPN on the four NCHW maps)."""
    from collections import OrderedDict

    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = timm.create_model("vmamba_tiny_s1l8", features_only=True, **TINY)
            self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), 16)
            self.out_channels = 16

        def forward(self, x):
            return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))

    torch.manual_seed(0)
    detector = FasterRCNN(
        Backbone(), num_classes=3, min_size=64, max_size=96,
        rpn_anchor_generator=AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4),
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20).eval()
    with torch.no_grad():
        (det,) = detector([torch.rand(3, 70, 90)])
    assert set(det) == {"boxes", "labels", "scores"}


def test_compile_path_scan_and_merge_match_the_eager_ones():
    """The gather-based cross_scan / cross_merge that torch.compile and torch.export trace (instead of
    the in-place kernels) give the same values and gradients, on a non-square grid for every order."""
    from visionssm.layers.scan_orders import _cross_merge_functional, _cross_scan_functional

    def same(a, b, what):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=lambda m: f"{what}: {m}")

    H, W = 3, 5
    g = torch.Generator().manual_seed(0)
    for order in SCAN_ORDERS:
        dirs = resolve_scan_order(order)
        y = torch.randn(2, len(dirs), 4, H * W, dtype=torch.float64, generator=g, requires_grad=True)
        x = torch.randn(2, 4, H, W, dtype=torch.float64, generator=g, requires_grad=True)
        merged, scanned = _cross_merge_functional(y, H, W, dirs), _cross_scan_functional(x, dirs)
        same(merged, cross_merge(y, H, W, order), f"merge {order}")
        same(scanned, cross_scan(x, order), f"scan {order}")
        dx, dy = torch.randn_like(x), torch.randn_like(y)  # upstream gradients
        same(torch.autograd.grad(merged, y, dx)[0], torch.autograd.grad(cross_merge(y, H, W, order), y, dx)[0],
             f"merge gradient {order}")
        same(torch.autograd.grad(scanned, x, dy)[0], torch.autograd.grad(cross_scan(x, order), x, dy)[0],
             f"scan gradient {order}")
