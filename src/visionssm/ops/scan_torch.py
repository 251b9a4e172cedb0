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


def _time_major(x: torch.Tensor, groups: int) -> torch.Tensor:
    """A block (batch, dim, T) -> (T, batch, groups, dim/groups)."""
    b, d, t = x.shape
    return x.reshape(b, groups, d // groups, t).permute(3, 0, 1, 2)


def _block_states(h0, u_t, dt_t, A, B_t):
    """States of one block: decays a (T,b,g,dg,n) and states H (T,b,g,dg,n), from state h0."""
    a = torch.exp(dt_t.unsqueeze(-1) * A)
    H = (dt_t * u_t).unsqueeze(-1) * B_t.unsqueeze(3)  # dt B u, overwritten step by step with h
    h = h0
    for a_t, H_t in zip(a.unbind(0), H.unbind(0)):
        h = H_t.addcmul_(a_t, h)
    return a, H


class _InOrder:
    """The plain scan: step t is at position t, so a block of steps is a slice."""

    @staticmethod
    def take(x: torch.Tensor, s: int, e: int) -> torch.Tensor:
        return x[..., s:e]

    @staticmethod
    def put(dst: torch.Tensor, blk: torch.Tensor, s: int, e: int) -> None:
        dst[..., s:e] = blk


class _Directions:
    """The directional scan: step t of direction k is at position ``maps[k, t]``.

    Channels ``[k*d, (k+1)*d)`` (groups ``[k*G, (k+1)*G)``) belong to direction k. A block of steps
    is gathered from the tensors in their own layout and written back through the same maps, so
    only block-sized tensors are ever made in scan order.
    """

    def __init__(self, maps: torch.Tensor, d: int):
        self.maps, self.K, self.d = maps, maps.shape[0], d

    def take(self, x: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """Steps [s, e) of every direction: (b, K*d, T) from x (b, K*d or d, L) (d: shared by the
        directions), (b, K*G, n, T) from x (b, K*G, n, L)."""
        idx = self.maps[:, s:e]
        K, T = idx.shape
        b, c = x.shape[:2]
        if x.dim() == 3 and c != K * self.d:  # shared by the directions
            return x.index_select(2, idx.reshape(-1)).view(b, c, K, T).transpose(1, 2).reshape(b, K * c, T)
        parts = x.view(b, K, c // K, *x.shape[2:])
        index = idx.view(1, K, *(1,) * (parts.dim() - 3), T).expand(*parts.shape[:-1], T)
        return torch.gather(parts, -1, index).view(b, c, *x.shape[2:-1], T)

    def put(self, dst: torch.Tensor, blk: torch.Tensor, s: int, e: int) -> None:
        """Write direction k's part of ``blk`` (b, K*d, T) or (b, K*G, n, T) at its positions of dst;
        a dst of d channels (shared by the directions) gets the sum of the K parts added in."""
        idx = self.maps[:, s:e]
        K, T = idx.shape
        b, c = dst.shape[:2]
        if dst.dim() == 3 and c != K * self.d:
            for k in range(K):
                dst.index_add_(2, idx[k], blk[:, k * c:(k + 1) * c])
            return
        parts = dst.view(b, K, c // K, *dst.shape[2:])
        index = idx.view(1, K, *(1,) * (parts.dim() - 3), T).expand(*parts.shape[:-1], T)
        parts.scatter_(-1, index, blk.reshape(*parts.shape[:-1], T))


def _scan_blocks(u, dt, A, B, C, steps, y, ckpt):
    """The forward recurrence block by block; y_blk = C . h goes to y through ``steps.put``.
    Returns the last state (b, g, dim/g, n)."""
    b, d, length = dt.shape
    g, n = B.shape[1], A.shape[1]
    Ag = A.view(g, d // g, n)
    h = dt.new_zeros(b, g, d // g, n)
    for k, s, e in _blocks(length):
        if ckpt is not None:
            ckpt[:, k] = h.reshape(b, d, n)
        Bt = steps.take(B, s, e).permute(3, 0, 1, 2)  # (T, b, g, n)
        Ct = steps.take(C, s, e).permute(3, 0, 1, 2)
        u_t, dt_t = (_time_major(steps.take(x, s, e), g) for x in (u, dt))
        _, H = _block_states(h, u_t, dt_t, Ag, Bt)
        h = H[-1]
        y_blk = torch.matmul(H, Ct.unsqueeze(-1)).squeeze(-1)  # (T, b, g, dg)
        steps.put(y, y_blk.permute(1, 2, 3, 0).reshape(b, d, e - s), s, e)
    return h


def _reverse_blocks(u, dt, A, B, C, steps, ckpt, dy, dlast, du, ddt, dB, dC, dA):
    """The backward walk, from the last block: du, ddt (d loss / d dt), dB, dC through ``steps.put``
    (du and ddt without the D skip and the softplus), dA accumulated. dy is d loss / d (C . h + D u).
    Yields (s, e, H, Ct) of each block, for a caller that needs the block's outputs."""
    b, d, length = dt.shape
    g, n = B.shape[1], A.shape[1]
    dg = d // g
    Ag = A.view(g, dg, n)
    # a_{t+1} dh_{t+1}: what the step after a block adds to the block's last dh
    carry = dlast.view(b, g, dg, n) if dlast is not None else dt.new_zeros(b, g, dg, n)
    for k, s, e in reversed(list(_blocks(length))):
        h0 = ckpt[:, k].view(b, g, dg, n)
        u_t, dt_t, dy_t = (_time_major(steps.take(x, s, e), g) for x in (u, dt, dy))
        Bt = steps.take(B, s, e).permute(3, 0, 1, 2).unsqueeze(3)  # (T, b, g, 1, n)
        Ct = steps.take(C, s, e).permute(3, 0, 1, 2).unsqueeze(3)
        a, H = _block_states(h0, u_t, dt_t, Ag, Bt.squeeze(3))
        yield s, e, H, Ct
        dH = dy_t.unsqueeze(-1) * Ct  # C dy, turned into dh in place by the reverse walk
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
        steps.put(dB, (dH * (dt_t * u_t).unsqueeze(-1)).sum(3).permute(1, 2, 3, 0), s, e)
        steps.put(dC, (H * dy_t.unsqueeze(-1)).sum(3).permute(1, 2, 3, 0), s, e)
        steps.put(du, du_t.permute(1, 2, 3, 0).reshape(b, d, e - s), s, e)
        steps.put(ddt, ddt_t.permute(1, 2, 3, 0).reshape(b, d, e - s), s, e)


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints):
    dt, _ = delta_to_dt(delta, delta_bias, delta_softplus)
    b, d, length = u.shape
    n = A.shape[1]
    y = torch.empty_like(u)
    ckpt = u.new_empty(checkpoint_shape(b, d, length, n)) if save_checkpoints else None
    h = _scan_blocks(u, dt, A, B, C, _InOrder, y, ckpt)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return y, h.reshape(b, d, n).clone(), ckpt if save_checkpoints else u.new_empty(0)


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout, dlast):
    dt, x = delta_to_dt(delta, delta_bias, delta_softplus)
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    if z is not None:
        sz = torch.sigmoid(z)
        dy = dout * z * sz  # d out / d y' = silu(z)
        dz = torch.empty_like(z)
    else:
        dy, dz = dout, None
    du, ddt = torch.empty_like(u), torch.empty_like(dt)
    dB, dC = torch.empty_like(B), torch.empty_like(C)
    dA = u.new_zeros(g, d // g, n)
    for s, e, H, Ct in _reverse_blocks(u, dt, A, B, C, _InOrder, ckpt, dy, dlast, du, ddt, dB, dC, dA):
        if z is not None:  # dz needs y' = C.h + D u of this block
            yp = (H * Ct).sum(-1).permute(1, 2, 3, 0).reshape(b, d, e - s)
            if D is not None:
                yp = yp + D[:, None] * u[:, :, s:e]
            zs, ss = z[:, :, s:e], sz[:, :, s:e]
            dz[:, :, s:e] = dout[:, :, s:e] * yp * ss * (1 + zs * (1 - ss))
    dD = None
    if D is not None:
        du += D[:, None] * dy
        dD = (dy * u).sum((0, 2))
    ddelta, ddelta_bias = dt_grad_to_delta(ddt, x, delta_bias, delta_softplus)
    return du, ddelta, dA.view(d, n), dB, dC, dD, dz, ddelta_bias


# ---------------------------------------------------------------------------------------------
# the directional scan (see visionssm.ops.directional_scan): the same blocks, gathered through
# the index maps and written back through them


def directional_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, index_maps, save_checkpoints):
    dt, _ = delta_to_dt(delta, delta_bias, delta_softplus)
    b, kd, length = delta.shape
    K, n = index_maps.shape[0], A.shape[1]
    d = kd // K
    y = u.new_zeros(b, d, length)
    ckpt = u.new_empty(checkpoint_shape(b, kd, length, n)) if save_checkpoints else None
    h = _scan_blocks(u, dt, A, B, C, _Directions(index_maps, d), y, ckpt)
    if D is not None:  # sum_k D_k u_k, in the map's layout
        Dk = D.view(K, d)
        y += Dk.sum(0)[:, None] * u if u.shape[1] == d else (Dk[:, :, None] * u.view(b, K, d, length)).sum(1)
    return y, h.reshape(b, kd, n).clone(), ckpt if save_checkpoints else u.new_empty(0)


def directional_backward(u, delta, A, B, C, D, delta_bias, delta_softplus, index_maps, ckpt, dy, dlast):
    dt, x = delta_to_dt(delta, delta_bias, delta_softplus)
    b, kd, length = delta.shape
    K, n, g = index_maps.shape[0], A.shape[1], B.shape[1]
    d = kd // K
    shared = u.shape[1] == d and K > 1
    du = torch.zeros_like(u) if shared else torch.empty_like(u)
    ddt = torch.empty_like(dt)
    dB, dC = torch.empty_like(B), torch.empty_like(C)
    dA = u.new_zeros(g, kd // g, n)
    for _ in _reverse_blocks(u, dt, A, B, C, _Directions(index_maps, d), ckpt, dy, dlast, du, ddt, dB, dC, dA):
        pass
    dD = None
    if D is not None:
        Dk = D.view(K, d)
        if shared:
            du += Dk.sum(0)[:, None] * dy
            dD = (dy * u).sum((0, 2)).repeat(K)
        else:
            du.view(b, K, d, length).add_(Dk[:, :, None] * dy[:, None])
            dD = (dy[:, None] * u.view(b, K, d, length)).sum((0, 3)).reshape(kd)
    ddelta, ddelta_bias = dt_grad_to_delta(ddt, x, delta_bias, delta_softplus)
    return du, ddelta, dA.view(kd, n), dB, dC, dD, ddelta_bias
