"""Selective-scan inputs shared by the scan tests."""

import math

import torch


def make_inputs(batch=2, dim=6, length=9, state=4, groups=None, dtype=torch.float32, seed=0,
                dt_bias_shift=0.0):
    """Inputs distributed as at Mamba's initialisation (dt log-uniform in [1e-3, 0.1], A = -(1..N))."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    dt_init = torch.exp(torch.empty(dim).uniform_(math.log(1e-3), math.log(0.1), generator=g))
    return dict(
        u=torch.randn(batch, dim, length, generator=g, dtype=dtype),
        delta=(0.5 * torch.randn(batch, dim, length, generator=g)).to(dtype),
        A=-torch.arange(1, state + 1, dtype=dtype).repeat(dim, 1) * torch.rand(dim, 1, generator=g).to(dtype),
        B=torch.randn(*bc_shape, generator=g, dtype=dtype),
        C=torch.randn(*bc_shape, generator=g, dtype=dtype),
        D=torch.randn(dim, generator=g, dtype=dtype),
        z=torch.randn(batch, dim, length, generator=g, dtype=dtype),
        delta_bias=(dt_init + torch.log(-torch.expm1(-dt_init)) + dt_bias_shift).to(dtype),
    )
