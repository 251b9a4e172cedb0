"""Pure-PyTorch selective scan for any device: a time-major loop over blocks of time steps.

Per block of ``CHUNK`` steps the decays exp(dt A) and inputs dt B u are made in one vectorised
pass in a (time, batch, groups, dim/groups, state) layout, then the recurrence is one in-place
``addcmul_`` per step on contiguous slices. This is exact (the reference's order of operations),
needs no overflow guard (unlike chunked cumsum forms, whose exp(-A cumsum dt) overflows float32
once |A| * sum(dt) > 88), and holds only one block of states at a time. The backward recomputes
each block's states from the state saved at the block start, walks the block in reverse for dh,
and forms every gradient with vectorised reductions over the block.

The interface (float32 or float64 tensors, B and C grouped (batch, groups, state, length)) is
described in ``visionssm.ops.selective_scan``.
"""

from __future__ import annotations

import torch

CHUNK = 128


def delta_to_dt(delta, delta_bias, delta_softplus):
    """dt = softplus(delta + delta_bias) (each part optional); also returns the pre-softplus value."""
    x = delta if delta_bias is None else delta + delta_bias[:, None]
    return (torch.nn.functional.softplus(x) if delta_softplus else x), x


def dt_grad_to_delta(ddt, x, delta_bias, delta_softplus):
    """Chain d loss / d dt through the softplus: (ddelta, ddelta_bias or None)."""
    ddelta = ddt * torch.sigmoid(x) if delta_softplus else ddt
    return ddelta, (ddelta.sum((0, 2)) if delta_bias is not None else None)


def checkpoint_shape(batch, dim, length, state):
    return (batch, -(-length // CHUNK), dim, state)


def _blocks(length: int):
    for k, start in enumerate(range(0, length, CHUNK)):
        yield k, start, min(start + CHUNK, length)


def _time_major(x: torch.Tensor, groups: int, start: int, end: int) -> torch.Tensor:
    """(batch, dim, length) -> (T, batch, groups, dim/groups) for steps [start, end)."""
    b, d, _ = x.shape
    return x[:, :, start:end].reshape(b, groups, d // groups, end - start).permute(3, 0, 1, 2)


def _block_states(h0, u_t, dt_t, A, B_t):
    """States of one block: decays a (T,b,g,dg,n) and states H (T,b,g,dg,n), from state h0."""
    a = torch.exp(dt_t.unsqueeze(-1) * A)
    H = (dt_t * u_t).unsqueeze(-1) * B_t.unsqueeze(3)  # dt B u, overwritten step by step with h
    h = h0
    for a_t, H_t in zip(a.unbind(0), H.unbind(0)):
        h = H_t.addcmul_(a_t, h)
    return a, H


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints):
    dt, _ = delta_to_dt(delta, delta_bias, delta_softplus)
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    Ag = A.view(g, d // g, n)
    h = u.new_zeros(b, g, d // g, n)
    y = torch.empty_like(u)
    ckpt = u.new_empty(checkpoint_shape(b, d, length, n)) if save_checkpoints else u.new_empty(0)
    for k, s, e in _blocks(length):
        if save_checkpoints:
            ckpt[:, k] = h.reshape(b, d, n)
        Bt = B[..., s:e].permute(3, 0, 1, 2)  # (T, b, g, n)
        Ct = C[..., s:e].permute(3, 0, 1, 2)
        _, H = _block_states(h, _time_major(u, g, s, e), _time_major(dt, g, s, e), Ag, Bt)
        h = H[-1]
        y_blk = torch.matmul(H, Ct.unsqueeze(-1)).squeeze(-1)  # (T, b, g, dg)
        y[:, :, s:e] = y_blk.permute(1, 2, 3, 0).reshape(b, d, e - s)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return y, h.reshape(b, d, n).clone(), ckpt


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout, dlast):
    dt, x = delta_to_dt(delta, delta_bias, delta_softplus)
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    dg = d // g
    Ag = A.view(g, dg, n)
    if z is not None:
        sz = torch.sigmoid(z)
        dy = dout * z * sz  # d out / d y' = silu(z)
        dz = torch.empty_like(z)
    else:
        dy, dz = dout, None
    du, ddt = torch.empty_like(u), torch.empty_like(dt)
    dB, dC = torch.empty_like(B), torch.empty_like(C)
    dA = torch.zeros_like(Ag)
    # a_{t+1} dh_{t+1}: what the step after a block adds to the block's last dh
    carry = dlast.view(b, g, dg, n) if dlast is not None else u.new_zeros(b, g, dg, n)
    for k, s, e in reversed(list(_blocks(length))):
        h0 = ckpt[:, k].view(b, g, dg, n)
        u_t, dt_t, dy_t = (_time_major(x, g, s, e) for x in (u, dt, dy))
        Bt = B[..., s:e].permute(3, 0, 1, 2).unsqueeze(3)  # (T, b, g, 1, n)
        Ct = C[..., s:e].permute(3, 0, 1, 2).unsqueeze(3)
        a, H = _block_states(h0, u_t, dt_t, Ag, Bt.squeeze(3))
        if z is not None:  # dz needs y' = C.h + D u of this block
            yp = (H * Ct).sum(-1).permute(1, 2, 3, 0).reshape(b, d, e - s)
            if D is not None:
                yp = yp + D[:, None] * u[:, :, s:e]
            zs, ss = z[:, :, s:e], sz[:, :, s:e]
            dz[:, :, s:e] = dout[:, :, s:e] * yp * ss * (1 + zs * (1 - ss))
        dH = dy_t.unsqueeze(-1) * Ct  # C dy', turned into dh in place by the reverse walk
        dH[-1] += carry
        for t in range(e - s - 1, 0, -1):
            dH[t - 1].addcmul_(a[t], dH[t])
        carry = a[0] * dH[0]
        Hprev = torch.cat([h0.unsqueeze(0), H[:-1]])
        q = dH * Hprev * a  # d loss / d (dt A) per state
        dHB = (dH * Bt).sum(-1)  # (T, b, g, dg)
        ddt_t = dHB * u_t + (q * Ag).sum(-1)
        du_t = dHB * dt_t
        dA += (q * dt_t.unsqueeze(-1)).sum((0, 1))
        dB[..., s:e] = (dH * (dt_t * u_t).unsqueeze(-1)).sum(3).permute(1, 2, 3, 0)
        dC[..., s:e] = (H * dy_t.unsqueeze(-1)).sum(3).permute(1, 2, 3, 0)
        du[:, :, s:e] = du_t.permute(1, 2, 3, 0).reshape(b, d, e - s)
        ddt[:, :, s:e] = ddt_t.permute(1, 2, 3, 0).reshape(b, d, e - s)
    dD = None
    if D is not None:
        du += D[:, None] * dy
        dD = (dy * u).sum((0, 2))
    ddelta, ddelta_bias = dt_grad_to_delta(ddt, x, delta_bias, delta_softplus)
    return du, ddelta, dA.view(d, n), dB, dC, dD, dz, ddelta_bias
