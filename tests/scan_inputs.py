"""Selective-scan inputs and a run-and-differentiate helper shared by the scan tests."""

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


def one_group(inp, name):
    """A copy of ``inp`` with B or C (``name``, 3-D) as the equal 1-group grouped (batch, 1, state, length)."""
    return {**inp, name: inp[name].unsqueeze(1)}


def run_scan(backend, inp, options, grad=True, use_last=True):
    """Output, last state and the gradients of a loss on y and (when use_last, so that the gradient
    into the last state is exercised) on the last state."""
    from visionssm import selective_scan

    inp = {k: v.clone().requires_grad_(grad) for k, v in inp.items()}
    kw = {k: inp[k] for k in ("D", "z", "delta_bias") if options.get(k, True)}
    y, last = selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kw,
                             delta_softplus=options.get("softplus", True), return_last_state=True,
                             backend=backend)
    if not grad:
        return y, last, {}
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
    loss = (y * w).sum() + ((last.to(y.dtype) ** 2).sum() * 0.1 if use_last else 0)
    loss.backward()
    return y, last, {k: v.grad for k, v in inp.items() if v.grad is not None}
