"""The selective scan as a plain loop over time: the executable specification.

Every other backend is tested against this function. It is written for clarity, with one
exception for speed: the per-step tensors come from a single ``unbind`` and the outputs are
joined by one ``stack``, so autograd's backward stays O(L) (indexing ``x[:, :, t]`` in the loop
makes every step's backward allocate a zero tensor of the whole buffer: O(L^2)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (batch, dim, state, length): grouped (batch, G, N, L) repeats each group dim/G times."""
    if M.dim() == 3:
        return M.unsqueeze(1).expand(-1, dim, -1, -1)
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;  y_t = C_t . h_t + D u_t;  y *= silu(z).

    Computes in float32 (float64 when u is float64) and returns y in u's dtype.
    """
    dtype_in = u.dtype
    wide = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(wide) for t in (u, delta, A, B, C))
    dim = u.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.to(wide)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = expand_groups(B, dim)  # (b, d, n, l)
    Cx = expand_groups(C, dim)
    h = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for dt_t, u_t, B_t, C_t in zip(delta.unbind(2), u.unbind(2), Bx.unbind(3), Cx.unbind(3)):
        h = torch.exp(dt_t[:, :, None] * A) * h + (dt_t * u_t)[:, :, None] * B_t
        ys.append((h * C_t).sum(-1))
    # a length-0 sequence: an empty y, still attached to u so that a backward runs
    y = torch.stack(ys, dim=2) if ys else u * 0
    if D is not None:
        y = y + D.to(wide)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(wide))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y
