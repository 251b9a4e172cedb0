"""The Mamba mixer (Gu & Dao, arXiv:2312.00752) and Vision Mamba's bidirectional "bimamba v2" variant.

Parameter names and shapes follow ``mamba_ssm.modules.mamba_simple.Mamba`` as vendored by the
official Vim repository, so official state dicts load without renaming:

    in_proj -> x, z;  x -> causal depthwise conv1d (k=4) -> SiLU -> x_proj -> (dt, B, C)
    dt -> dt_proj (its bias enters the scan as delta_bias, softplus inside the scan)
    y = selective_scan(x, dt, A=-exp(A_log), B, C, D) * SiLU(z);  out_proj(y)

With ``bidirectional=True`` (Vim's ``bimamba_type="v2"``) a second set of ``conv1d_b``,
``x_proj_b``, ``dt_proj_b``, ``A_b_log`` and ``D_b`` runs the same recipe on the reversed
sequence; ``in_proj`` (so x and z) and ``out_proj`` are shared, and the two directions are averaged
before ``out_proj`` (``if_divide_out=True`` in every released model).

The official code only has this variant in its fused CUDA path; this module is the plain-PyTorch
specification of it. Both directions run in the tokens' own order (the backward branch's causal
conv on the reversed sequence is an anti-causal conv on this one) and go through one
:func:`~visionssm.ops.directional_scan`, which walks the backward direction in reverse through an
index map and sums the two outputs in place: no flipped copy, no separate merge. Under
torch.export the flipped-copy form (one depthwise conv and one ``selective_scan`` over both
directions stacked along channels, B and C as two groups) is used instead: the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionssm.layers.scan_orders import scan_index_maps
from visionssm.ops import directional_scan, selective_scan
from visionssm.ops.selective_scan import BACKENDS

__all__ = ["Mamba", "RMSNorm", "bidirectional_conv_silu"]


def bidirectional_conv_silu(x: torch.Tensor, forward_conv: nn.Conv1d, backward_conv: nn.Conv1d) -> torch.Tensor:
    """SiLU of Vim's two depthwise convs of x (batch, d, length), stacked along channels: (batch, 2d, length).

    The forward branch's conv is causal (tap j reads x[t - j]); the backward branch's, a causal
    conv on the reversed sequence, is anti-causal here (tap j reads x[t + j]). On a CPU each is k
    multiply-adds of shifted views written straight into its half of the result: no padded copy, no
    concatenation, and about 3x faster than oneDNN's depthwise conv1d at Vim's sizes. Elsewhere (a
    GPU) those 2k passes cost more than two depthwise convolutions (:func:`_conv_silu_by_convs`):
    on an H200 they were 18% of Vim-T's device time, as much as all its matmuls.
    """
    if x.device.type != "cpu":
        return _conv_silu_by_convs(x, forward_conv, backward_conv)
    batch, d, length = x.shape
    out = x.new_empty(batch, 2 * d, length)
    for half, conv in enumerate((forward_conv, backward_conv)):
        o, k = out[:, half * d:(half + 1) * d], conv.weight.shape[-1]
        if conv.bias is None:
            o.zero_()
        else:
            o.copy_(conv.bias[:, None].expand(d, length))
        for j in range(min(k, length)):  # tap j: weight k-1-j
            w = conv.weight[:, 0, k - 1 - j, None]
            if half == 0:
                o[..., j:].addcmul_(x[..., :length - j], w)
            else:
                o[..., :length - j].addcmul_(x[..., j:], w)
    return F.silu(out, inplace=not (torch.is_grad_enabled() and out.requires_grad))


def _conv_silu_by_convs(x: torch.Tensor, forward_conv: nn.Conv1d, backward_conv: nn.Conv1d) -> torch.Tensor:
    """:func:`bidirectional_conv_silu` as two depthwise ``conv1d`` calls: the causal one keeps the
    first ``length`` outputs of a conv padded by k - 1 on both sides, the anti-causal one (the
    reversed kernel) the last ``length``."""
    length, k = x.shape[-1], forward_conv.weight.shape[-1]
    fwd = F.conv1d(x, forward_conv.weight, forward_conv.bias, padding=k - 1, groups=x.shape[1])[..., :length]
    bwd = F.conv1d(x, backward_conv.weight.flip(-1), backward_conv.bias, padding=k - 1, groups=x.shape[1])
    return F.silu(torch.cat([fwd, bwd[..., k - 1:]], dim=1))


class RMSNorm(nn.Module):
    """RMSNorm as in ``mamba_ssm`` (weight only, no bias), computed in float32.

    The official kernel upcasts to float32, normalises, scales and casts back; the output here
    takes the weight's dtype, which is what the official (unfused) block feeds the mixer.
    """

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Mamba(nn.Module):
    """Mamba mixer on (batch, length, dim) tokens; optionally Vim's bidirectional v2 form.

    Args:
        dim: token width (the model's embed_dim).
        d_state: SSM state size N.
        d_conv: kernel size of the causal depthwise conv.
        expand: d_inner = expand * dim.
        dt_rank: rank of the dt projection; "auto" is ceil(dim / 16) as in mamba_ssm.
        dt_min, dt_max, dt_init_floor, dt_scale: the dt initialisation of mamba_ssm.
        conv_bias, bias: biases of the conv and of in_proj/out_proj (official: True, False).
        bidirectional: add the backward branch (Vim "bimamba v2").
        divide_out: average rather than sum the two directions (Vim's ``if_divide_out``).
        backend: selective-scan backend, see ``visionssm.selective_scan``.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            dt_rank: int | str = "auto",
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            dt_scale: float = 1.0,
            conv_bias: bool = True,
            bias: bool = False,
            bidirectional: bool = False,
            divide_out: bool = True,
            backend: str = "auto",
            device=None,
            dtype=None,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("d_state", d_state), ("d_conv", d_conv)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * dim)
        if self.d_inner < 1:
            raise ValueError(f"expand: expected expand * dim >= 1, got expand={expand} with dim={dim}")
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else dt_rank
        if not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise ValueError(f"dt_rank: expected 'auto' or a positive int, got {dt_rank!r}")
        self.bidirectional = bidirectional
        self.divide_out = divide_out
        self.backend = backend  # validated by the setter below
        self._dt_init = (dt_min, dt_max, dt_init_floor, dt_scale)

        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias, **dd)
        self.conv1d, self.x_proj, self.dt_proj = self._direction(conv_bias, dd)
        # A_log and D stay float32 whatever the model dtype, as in mamba_ssm: exp(A_log) is
        # sensitive to rounding and they are tiny.
        f32 = dict(device=device, dtype=torch.float32)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, **f32))
        self.D = nn.Parameter(torch.empty(self.d_inner, **f32))
        if bidirectional:
            self.A_b_log = nn.Parameter(torch.empty(self.d_inner, d_state, **f32))
            self.conv1d_b, self.x_proj_b, self.dt_proj_b = self._direction(conv_bias, dd)
            self.D_b = nn.Parameter(torch.empty(self.d_inner, **f32))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias, **dd)
        self.reset_parameters()

    def _direction(self, conv_bias, dd):
        conv = nn.Conv1d(self.d_inner, self.d_inner, self.d_conv, groups=self.d_inner,
                         padding=self.d_conv - 1, bias=conv_bias, **dd)
        x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False, **dd)
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **dd)
        return conv, x_proj, dt_proj

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
        self._backend = name

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The SSM part of mamba_ssm's initialisation (the linear layers keep PyTorch's defaults).

        dt_proj.weight ~ U(-s, s), s = dt_scale / sqrt(dt_rank); dt_proj.bias = softplus^-1(dt) with
        dt log-uniform in [dt_min, dt_max] (floored), so the initial step sizes span two decades;
        A_log = log(1..N) per channel (S4D-real); D = 1. The bias is marked ``_no_reinit`` and
        A_log/D ``_no_weight_decay`` for code written against mamba_ssm's conventions.
        """
        dt_min, dt_max, floor, dt_scale = self._dt_init
        A_log = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device))
        for suffix in ("", "_b") if self.bidirectional else ("",):
            dt_proj = getattr(self, "dt_proj" + suffix)
            std = self.dt_rank ** -0.5 * dt_scale
            nn.init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner, device=dt_proj.bias.device, dtype=torch.float32)
                           * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
            dt_proj.bias._no_reinit = True
            A = getattr(self, "A_log" if not suffix else "A_b_log")
            A.copy_(A_log.expand_as(A))
            D = getattr(self, "D" + suffix)
            D.fill_(1.0)
            A._no_weight_decay = True
            D._no_weight_decay = True

    def _stacked(self):
        """The per-direction parameters concatenated along channels (direction-major)."""
        if not self.bidirectional:
            return (self.conv1d.weight, self.conv1d.bias, self.x_proj.weight[None], self.dt_proj.weight[None],
                    self.dt_proj.bias, self.A_log, self.D)
        cat_bias = None if self.conv1d.bias is None else torch.cat([self.conv1d.bias, self.conv1d_b.bias])
        return (torch.cat([self.conv1d.weight, self.conv1d_b.weight]), cat_bias,
                torch.stack([self.x_proj.weight, self.x_proj_b.weight]),
                torch.stack([self.dt_proj.weight, self.dt_proj_b.weight]),
                torch.cat([self.dt_proj.bias, self.dt_proj_b.bias]),
                torch.cat([self.A_log, self.A_b_log]), torch.cat([self.D, self.D_b]))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, length, dim) -> (batch, length, dim)."""
        h = hidden_states.transpose(1, 2)
        if self.bidirectional and not torch.compiler.is_exporting():
            y = self._bidirectional(h)
        else:
            y = self._stacked_scan(self._in_proj(h, 0), self._in_proj(h, 1))
        return self.out_proj(y.transpose(1, 2))

    def _in_proj(self, h: torch.Tensor, half: int) -> torch.Tensor:
        """x (half 0) or z (half 1) of in_proj, straight into the channel-first layout (batch, d_inner,
        length) the conv and the scan want; each half is made when it is needed, so that x is gone
        before z exists."""
        rows = slice(half * self.d_inner, (half + 1) * self.d_inner)
        out = torch.matmul(self.in_proj.weight[rows], h)
        return out if self.in_proj.bias is None else out + self.in_proj.bias[rows, None]

    def _project(self, x, xproj_w, dtproj_w, k):
        """delta, B, C of x (batch, k*d_inner, length), direction-major."""
        batch, _, length = x.shape
        x_dbl = torch.matmul(xproj_w, x.view(batch, k, self.d_inner, length))  # (batch, k, r + 2n, length)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        return torch.matmul(dtproj_w, dt).reshape(batch, k * self.d_inner, length), B, C

    def _bidirectional(self, h):
        """Both directions in the tokens' own order; only the scan walks the backward one in reverse.

        The backward branch is the forward recipe on the reversed sequence. Its causal conv there
        is an anti-causal conv here (the kernel reversed, looking ahead), and everything after it
        acts per token, so no flipped copy is made: :func:`directional_scan` reads the backward
        direction through a reversed index map and adds its outputs in place, and silu(z), which
        the official code applies to each direction at the same token, gates the sum. Averaging the
        two (``divide_out``) halves C and D instead of the output, which is exact in binary floating
        point and makes no (batch, d_inner, length) copy.
        """
        length = h.shape[-1]
        x = bidirectional_conv_silu(self._in_proj(h, 0), self.conv1d, self.conv1d_b)
        delta, B, C = self._project(x, torch.stack([self.x_proj.weight, self.x_proj_b.weight]),
                                    torch.stack([self.dt_proj.weight, self.dt_proj_b.weight]), 2)
        A = -torch.exp(torch.cat([self.A_log, self.A_b_log]).float())
        D = torch.cat([self.D, self.D_b]).float()
        if self.divide_out:
            C, D = C * 0.5, D * 0.5
        return directional_scan(x, delta, A, B, C, scan_index_maps(1, length, "bidirectional", x.device), D,
                                z=self._in_proj(h, 1),
                                delta_bias=torch.cat([self.dt_proj.bias, self.dt_proj_b.bias]).float(),
                                delta_softplus=True, backend=self.backend)

    def _stacked_scan(self, x, z):
        """One direction; or both, the backward one as a flipped copy stacked along channels (the
        path torch.export takes: its graph has the plain ``selective_scan`` node)."""
        length = x.shape[-1]
        k = 2 if self.bidirectional else 1
        conv_w, conv_b, xproj_w, dtproj_w, dt_bias, A_log, D = self._stacked()
        if self.bidirectional:
            # the backward branch is the same recipe on the reversed sequence, so its causal conv
            # looks "ahead" in the original order
            x = torch.cat([x, x.flip(-1)], dim=1)
        # causal: pad d_conv-1 on both sides, keep the first `length` outputs
        x = F.silu(F.conv1d(x, conv_w, conv_b, padding=self.d_conv - 1, groups=k * self.d_inner)[..., :length])
        delta, B, C = self._project(x, xproj_w, dtproj_w, k)
        if k == 1:
            B, C = B[:, 0], C[:, 0]
        A = -torch.exp(A_log.float())
        if not self.bidirectional:
            return selective_scan(x, delta, A, B, C, D.float(), z=z, delta_bias=dt_bias.float(),
                                  delta_softplus=True, backend=self.backend)
        # the official code gates each direction with z at the same spatial position
        # (z flipped with its branch, flipped back with the output); silu(z) factors out of the sum
        y = selective_scan(x, delta, A, B, C, D.float(), z=None, delta_bias=dt_bias.float(),
                           delta_softplus=True, backend=self.backend)
        y_f, y_b = y.chunk(2, dim=1)
        y = y_f + y_b.flip(-1)
        if self.divide_out:
            y = y / 2
        return y * F.silu(z)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"bidirectional={self.bidirectional}, backend={self.backend!r}")
