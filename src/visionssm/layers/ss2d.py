"""SS2D, VMamba's 2-D selective-scan mixer, and the VSS block around it.

Layout: both modules take and return channels-last maps (B, H, W, C), as the official v0 code
does; the depthwise conv and the scan read a permuted view of them.

Parameter names and shapes are the official ones, so an official state dict loads unchanged:
``in_proj``, ``conv2d``, ``x_proj_weight`` (K, R+2N, d_inner), ``dt_projs_weight`` (K, d_inner, R),
``dt_projs_bias`` (K, d_inner), ``A_logs`` (K*d_inner, N), ``Ds`` (K*d_inner), ``out_norm``,
``out_proj``. Direction k owns rows ``[k*d_inner, (k+1)*d_inner)`` of ``A_logs`` and ``Ds``.

One forward of SS2D (official ``forwardv0`` / ``forwardv2``):

1. ``in_proj`` -> x (and the gate z, unless ``gate=False``: the official ``_noz`` variants);
2. depthwise conv (optional) and SiLU on x;
3. K walks of the map, one per direction of the scan order (``cross_scan``);
4. per direction, x_proj gives dt (R), B (N), C (N); dt_proj lifts dt to d_inner channels;
5. **one** selective scan over all K*d_inner channels, B and C grouped per direction;
6. the K outputs summed back on the map (``cross_merge``), ``out_norm``, times SiLU(z) when
   gated, ``out_proj``.

Steps 3-6 run as one :func:`~visionssm.ops.directional_scan`, which reads the walks through index
maps instead of copying them (:meth:`SS2D.forward_core`); :meth:`SS2D.forward_core_copies` is the
same computation with the copies, as written above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from visionssm.layers.scan_orders import cross_merge, cross_scan, resolve_scan_order, scan_index_maps
from visionssm.ops import directional_scan, selective_scan
from visionssm.ops.selective_scan import BACKENDS

__all__ = ["SS2D", "VSSBlock", "Mlp", "DropPath"]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return backend


class SS2D(nn.Module):
    """The 2-D selective scan (VMamba).

    Args:
        d_model: channels in and out.
        d_state: SSM state size N (16 in the vanilla models, 1 in the later ones).
        ssm_ratio: d_inner = int(ssm_ratio * d_model).
        dt_rank: rank R of the dt projection; "auto" is ceil(d_model / 16), as official.
        d_conv: depthwise conv kernel size; below 2 means no conv (the official switch).
        conv_bias: bias in the depthwise conv (True in v0, False in the later models).
        gate: multiply by SiLU(z) from a second half of in_proj (v0); False is ``_noz``.
        scan_order: a name from ``SCAN_ORDERS`` or a sequence of directions; K = its length.
        backend: selective-scan backend ("auto", "reference", "cpu", "torch", "triton").
        dropout: dropout after out_proj.
        dt_min, dt_max, dt_init_floor, dt_scale: Mamba's dt initialisation.
    """

    def __init__(
            self,
            d_model: int,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: int | str = "auto",
            d_conv: int = 3,
            conv_bias: bool = True,
            gate: bool = True,
            scan_order: str | Sequence[str] = "cross",
            backend: str = "auto",
            dropout: float = 0.0,
            bias: bool = False,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            dt_scale: float = 1.0,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if int(d_model) < 1:
            raise ValueError(f"d_model: expected a positive int, got {d_model!r}")
        if int(d_state) < 1:
            raise ValueError(f"d_state: expected a positive int, got {d_state!r}")
        if not ssm_ratio > 0:
            raise ValueError(f"ssm_ratio: expected a positive number, got {ssm_ratio!r}")
        if not (dt_rank == "auto" or (isinstance(dt_rank, int) and dt_rank >= 1)):
            raise ValueError(f"dt_rank: expected 'auto' or a positive int, got {dt_rank!r}")
        self.directions = resolve_scan_order(scan_order)
        self.backend = check_backend(backend)
        self.d_model = int(d_model)
        self.d_state = int(d_state)
        self.d_inner = int(ssm_ratio * d_model)
        if self.d_inner < 1:
            raise ValueError(f"ssm_ratio: d_inner = int(ssm_ratio * d_model) must be >= 1, got "
                             f"ssm_ratio={ssm_ratio}, d_model={d_model}")
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.k_group = len(self.directions)
        self.gate = bool(gate)
        self.dt_init_args = (dt_min, dt_max, dt_init_floor, dt_scale)
        K, D, N, R = self.k_group, self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(self.d_model, D * 2 if self.gate else D, bias=bias, **dd)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(D, D, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=D,
                                bias=conv_bias, **dd) if d_conv > 1 else None

        # the K directions' x_proj / dt_proj stored stacked, as the official parameters are
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, D, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, D, R, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, D, **dd))
        self.A_logs = nn.Parameter(torch.empty(K * D, N, **dd))
        self.Ds = nn.Parameter(torch.empty(K * D, **dd))
        # read by optimizers that honour Mamba's convention (and by no_weight_decay)
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

        self.out_norm = nn.LayerNorm(D, **dd)
        self.out_proj = nn.Linear(D, self.d_model, bias=bias, **dd)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation (the official ``ssm_init="v0"``) of the stacked SSM parameters."""
        dt_min, dt_max, dt_init_floor, dt_scale = self.dt_init_args
        K, D, N, R = self.k_group, self.d_inner, self.d_state, self.dt_rank
        # x_proj: what nn.Linear(d_inner, R + 2N) draws by default, per direction
        bound = 1.0 / math.sqrt(D)
        self.x_proj_weight.uniform_(-bound, bound)
        # dt_proj weight keeps the variance of dt; its bias makes softplus(bias) log-uniform in
        # [dt_min, dt_max]
        std = R ** -0.5 * dt_scale
        self.dt_projs_weight.uniform_(-std, std)
        dev = self.dt_projs_bias.device
        dt = torch.exp(torch.rand(K, D, device=dev) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        # S4D-real: A = -(1, 2, ..., N) for every channel
        self.A_logs.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32, device=dev)).expand(K * D, N))
        self.Ds.fill_(1.0)

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 3-5 plus the merge: (B, d_inner, H, W), any strides -> (B, d_inner, H, W).

        The K walks are index maps that :func:`directional_scan` reads through: x_proj and dt_proj
        act per pixel, so dt, B and C are made in the map's own layout, and the scan reads every
        input and sums its outputs there; no walk is copied and there is no separate merge.
        """
        if torch.compiler.is_exporting():
            return self.forward_core_copies(x)
        B, D, H, W = x.shape
        K, N, R, L = self.k_group, self.d_state, self.dt_rank, H * W
        u = x.reshape(B, D, L)
        x_dbl = torch.matmul(self.x_proj_weight, u.unsqueeze(1))  # (K, R+2N, D) @ (B, 1, D, L) -> (B, K, R+2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (K, D, R) @ (B, K, R, L) -> (B, K, D, L)
        y = directional_scan(
            u, dts.reshape(B, K * D, L), -torch.exp(self.A_logs.float()), Bs, Cs,
            scan_index_maps(H, W, self.directions, x.device), self.Ds.float(),
            delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True, backend=self.backend,
        )
        return y.view(B, D, H, W)

    def forward_core_copies(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_core` with the walks materialised: ``cross_scan``, one selective scan over
        the K*d_inner channels, ``cross_merge``. The same numbers; torch.export (and so the ONNX
        export) takes this path, whose graph has the plain ``selective_scan`` node."""
        B, D, H, W = x.shape
        K, N, R, L = self.k_group, self.d_state, self.dt_rank, H * W
        xs = cross_scan(x, self.directions)  # (B, K, D, L)
        x_dbl = torch.matmul(self.x_proj_weight, xs)  # (K, R+2N, D) @ (B, K, D, L) -> (B, K, R+2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (K, D, R) @ (B, K, R, L) -> (B, K, D, L)
        y = selective_scan(
            xs.reshape(B, K * D, L), dts.reshape(B, K * D, L),
            -torch.exp(self.A_logs.float()), Bs.contiguous(), Cs.contiguous(), self.Ds.float(),
            delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True, backend=self.backend,
        )
        return cross_merge(y.view(B, K, D, L), H, W, self.directions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, d_model) -> (B, H, W, d_model)."""
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=-1)
        x = x.permute(0, 3, 1, 2)
        if self.conv2d is not None:
            x = self.conv2d(x)
        x = self.act(x)
        y = self.out_norm(self.forward_core(x).permute(0, 2, 3, 1))
        if self.gate:
            y = y * self.act(z)
        return self.dropout(self.out_proj(y))

    def extra_repr(self) -> str:
        return (f"d_state={self.d_state}, d_inner={self.d_inner}, dt_rank={self.dt_rank}, "
                f"directions={self.directions}, gate={self.gate}, backend={self.backend!r}")


class DropPath(nn.Module):
    """Stochastic depth per sample (kept here so ``layers`` needs nothing but torch)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """fc1 -> act -> drop -> fc2 -> drop, on the last dim (official ``Mlp``, same keys)."""

    def __init__(self, dim: int, hidden: int, act_layer=nn.GELU, drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class VSSBlock(nn.Module):
    """Pre-norm VSS block: x + DropPath(SS2D(LN(x))), then x + DropPath(MLP(LN(x))) if mlp_ratio > 0.

    Channels-last in and out. ``ssm_kwargs`` go to :class:`SS2D`.
    """

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.0,
            mlp_ratio: float = 4.0,
            mlp_drop: float = 0.0,
            norm_eps: float = 1e-5,
            device=None,
            dtype=None,
            **ssm_kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio: expected >= 0 (0 means no MLP), got {mlp_ratio!r}")
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.op = SS2D(dim, **ssm_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp_ratio = mlp_ratio
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=mlp_drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp_ratio > 0:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
