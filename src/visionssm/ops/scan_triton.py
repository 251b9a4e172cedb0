"""GPU selective scan: fused Triton kernels that keep the state on chip and recompute it backward.

The design follows mamba_ssm's CUDA kernel (the state kept on chip, a parallel scan within a chunk
of steps, the states recomputed in the backward) in Triton terms.

Forward. One program per (channel block of ``BLOCK_D`` channels, group, batch); the channel
block never straddles a group, so the program reads one (state, length) slab of B and C. The
program walks the length in chunks of ``CHUNK`` steps (32 to 256, by the state size). Per chunk it
loads (BLOCK_D, CHUNK) tiles of u, delta and z and (state, CHUNK) tiles of B and C, each contiguous along the length
(coalesced), adds delta_bias and takes the softplus, forms the decays exp2(dt * A * log2(e)) and
the inputs dt * B * u as (BLOCK_D, state, CHUNK) tiles in registers, and runs
``tl.associative_scan`` along the chunk with the affine operator (a1, x1) o (a2, x2) =
(a1 a2, a2 x1 + x2). The state carried in from the previous chunk enters as
h_t = A_cum_t * h_in + H_t. Then y = C . h + D u, times silu(z), is written, and the state at
the chunk's end is carried on (padded steps have dt = 0, so decay 1 and input 0: the last lane
of the tile is the state after the last real step). Only y, the last state and, when gradients
are needed, the state at each chunk start (``checkpoints``, (batch, chunks, dim, state)) reach
global memory.

Backward. Same grid; the chunks are walked in reverse. For each chunk the forward scan is
recomputed from its checkpoint, then dh comes from a reverse ``tl.associative_scan`` of
(a_{t+1}, C_t dy_t) — the decay of the *next* step, made from delta loaded one step ahead — with
the carry r = a_start * dh_start handed to the previous chunk. With q = dh * (h - dt B u)
(= dh * a * h_{t-1}) every gradient is a reduction of tiles that are already in registers:
ddt = u sum_n dh B + sum_n A q, du = dt sum_n dh B + D dy, dA = sum dt q, dB = sum_d dh dt u,
dC = sum_d h dy, then ddelta = ddt * sigmoid(delta + bias) for the softplus. dB and dC are
summed over the program's channels in registers and added into the (batch, groups, state,
length) result with one relaxed atomic add per element per channel block (a plain store when
one block covers the group), so no (batch, dim, length, state) temporary exists; dA, dD and
ddelta_bias go to small per-batch partial buffers that are summed afterwards.

All arithmetic is in the dtype of the tensors handed in (float32, or float64 for float64
inputs); the wrapper in ``visionssm.ops.selective_scan`` casts half and bfloat16 to float32.

``triton.jit`` decides between compiling and interpreting when it is applied, so the kernels
are decorated at their first launch, and again if ``TRITON_INTERPRET`` has changed since.
Triton's own helpers (``tl.sum``, ``tl.sigmoid``) are decorated once, when triton is imported, so
the interpreter works only where the variable was set before that: on CPU tensors the backend
reports itself unavailable otherwise (tests run it in a child process). Without Triton the
module imports and reports why it cannot run.
"""

import contextlib
import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as e:  # the package works without Triton; this backend says why it can't
    triton = tl = None
    _IMPORT_ERROR = f"triton is not importable ({e})"
else:
    _IMPORT_ERROR = None

# Tile sizes. A launch-configuration sweep on an H200 (tools/gpu_tune.py, docs/benchmarks.md) found
# (BLOCK_D, state, CHUNK) tiles of about TILE elements on 2 warps fastest both for 16 states (32
# steps x 2 channels: 2.2x the forward and 1.7x the forward+backward of 64 x 4 on 8 warps) and for 1
# state (256 steps x 4 channels: 1.9x the forward). CHUNK is also the spacing of the saved states.
TILE = 1024
# Steps per chunk and channels per program; None picks them from the state size (_chunk,
# _block_sizes). Tests set both smaller.
CHUNK = None
BLOCK_D = None


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _interpreting() -> bool:
    if triton is not None and hasattr(triton, "knobs"):
        return bool(triton.knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _triton_helpers_interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(getattr(tl.standard, "sigmoid", None), InterpretedFunction)


def unavailable_reason(device: torch.device) -> str | None:
    """None if the Triton kernels can run on tensors of ``device``, else why not."""
    device = torch.device(device)
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if not _interpreting():
            return "the 'triton' backend runs on CUDA tensors (on CPU tensors only under TRITON_INTERPRET=1)"
        if not _triton_helpers_interpreted():
            return ("TRITON_INTERPRET=1 was set after triton was imported, so triton's own functions are "
                    "compiled for a GPU; set it before Python starts")
        return None
    return f"the 'triton' backend runs on CUDA tensors, got {device.type} tensors"


def _chunk(state: int) -> int:
    """Steps per chunk: 256 for one state down to 32 from 8 states up."""
    return CHUNK or min(256, max(32, 256 // _next_pow2(state)))


def checkpoint_shape(batch, dim, length, state):
    return (batch, -(-length // _chunk(state)), dim, state)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _block_sizes(batch: int, groups: int, dim_per_group: int, state: int, device: torch.device
                 ) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_N): channels so that a (BLOCK_D, BLOCK_N, CHUNK) tile holds about TILE
    elements; fewer where that leaves fewer than about two programs per SM (VMamba's d_state=1 at
    small batch); never more than a group."""
    block_n = _next_pow2(state)
    if BLOCK_D is not None:
        block_d = _next_pow2(BLOCK_D)
    else:
        block_d = max(1, TILE // (block_n * _chunk(state)))
        while block_d > 1 and batch * groups * -(-dim_per_group // block_d) < 2 * _sm_count(device):
            block_d //= 2
    return max(1, min(block_d, _next_pow2(dim_per_group))), block_n


def _num_warps(block_d: int, block_n: int, chunk: int) -> int:
    """One warp per 512 elements of the 3-D tiles (2 at TILE), 1 to 8."""
    return min(8, _next_pow2(max(block_d * block_n * chunk // 512, 1)))


# ---------------------------------------------------------------------------------------------
# kernels (plain functions here; _kernels() applies triton.jit)

if tl is not None:
    _LOG2E = tl.constexpr(1.4426950408889634)

    def _affine_combine(a1, x1, a2, x2):
        # (a1, x1) then (a2, x2): h -> a2 (a1 h + x1) + x2
        return a1 * a2, a2 * x1 + x2

    def _softplus(x):
        # max(x, 0) + log1p(exp(-|x|)); log1p(e) = log(w) e / (w - 1), w = 1 + e, is exact to a few
        # ulp where log(1 + e) alone loses all digits of a small e (dt ~ 1e-3 at Mamba's init)
        e = tl.exp(-tl.abs(x))
        w = 1.0 + e
        return tl.maximum(x, 0.0) + tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))

    def _scan_fwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
        y_ptr, last_ptr, ckpt_ptr,
        dim, length, nchunks, dim_per_group, groups, state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        SAVE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    ):
        blk = tl.program_id(0)
        g = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        offs_d = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < dim_per_group
        chan = g * dim_per_group + offs_d
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < state
        offs_t = tl.arange(0, CHUNK)
        mask_dn = mask_d[:, None] & mask_n[None, :]
        dn_off = chan[:, None] * state + offs_n[None, :]

        A = tl.load(A_ptr + dn_off, mask=mask_dn, other=0.0)
        A2 = (A * _LOG2E)[:, :, None]
        if HAS_D:
            Dv = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chan, mask=mask_d, other=0.0)
        row = (b * dim + chan) * length  # start of each channel's row in u, delta, z, y
        bc_row = ((b * groups + g) * state + offs_n) * length  # start of each state's row in B, C

        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=u_ptr.dtype.element_ty)
        for k in range(0, nchunks):
            t = k * CHUNK + offs_t
            mask_t = t < length
            m_dt = mask_d[:, None] & mask_t[None, :]
            m_nt = mask_n[:, None] & mask_t[None, :]
            if SAVE:
                tl.store(ckpt_ptr + (b * nchunks + k) * dim * state + dn_off, h, mask=mask_dn)
            u = tl.load(u_ptr + row[:, None] + t[None, :], mask=m_dt, other=0.0)
            dt = tl.load(delta_ptr + row[:, None] + t[None, :], mask=m_dt, other=0.0)
            if HAS_BIAS:
                dt += bias[:, None]
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m_dt, dt, 0.0)  # padding: decay 1, input 0
            Bt = tl.load(B_ptr + bc_row[:, None] + t[None, :], mask=m_nt, other=0.0)
            Ct = tl.load(C_ptr + bc_row[:, None] + t[None, :], mask=m_nt, other=0.0)

            a = tl.exp2(dt[:, None, :] * A2)
            x = (dt * u)[:, None, :] * Bt[None, :, :]
            a_cum, x_cum = tl.associative_scan((a, x), axis=2, combine_fn=_affine_combine)
            hs = a_cum * h[:, :, None] + x_cum
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                zt = tl.load(z_ptr + row[:, None] + t[None, :], mask=m_dt, other=0.0)
                y = y * zt * tl.sigmoid(zt)
            tl.store(y_ptr + row[:, None] + t[None, :], y, mask=m_dt)
            h = tl.sum(tl.where(offs_t[None, None, :] == CHUNK - 1, hs, 0.0), axis=2)
        tl.store(last_ptr + b * dim * state + dn_off, h, mask=mask_dn)

    def _scan_bwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr, dlast_ptr,
        du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        dim, length, nchunks, dim_per_group, groups, state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    ):
        blk = tl.program_id(0)
        g = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        offs_d = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < dim_per_group
        chan = g * dim_per_group + offs_d
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < state
        offs_t = tl.arange(0, CHUNK)
        mask_dn = mask_d[:, None] & mask_n[None, :]
        dn_off = chan[:, None] * state + offs_n[None, :]

        A = tl.load(A_ptr + dn_off, mask=mask_dn, other=0.0)
        A3 = A[:, :, None]
        A2_2d = A * _LOG2E
        A2 = A2_2d[:, :, None]
        if HAS_D:
            Dv = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chan, mask=mask_d, other=0.0)
        row = (b * dim + chan) * length
        bc_row = ((b * groups + g) * state + offs_n) * length

        if HAS_DLAST:  # r: what the steps after this chunk pass back into its last step
            r = tl.load(dlast_ptr + b * dim * state + dn_off, mask=mask_dn, other=0.0)
        else:
            r = tl.zeros([BLOCK_D, BLOCK_N], dtype=u_ptr.dtype.element_ty)
        dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=u_ptr.dtype.element_ty)
        dD_acc = tl.zeros([BLOCK_D], dtype=u_ptr.dtype.element_ty)
        dbias_acc = tl.zeros([BLOCK_D], dtype=u_ptr.dtype.element_ty)
        for kk in range(0, nchunks):
            k = nchunks - 1 - kk
            t = k * CHUNK + offs_t
            mask_t = t < length
            m_dt = mask_d[:, None] & mask_t[None, :]
            m_nt = mask_n[:, None] & mask_t[None, :]
            ptr_dt = row[:, None] + t[None, :]

            u = tl.load(u_ptr + ptr_dt, mask=m_dt, other=0.0)
            xd = tl.load(delta_ptr + ptr_dt, mask=m_dt, other=0.0)
            if HAS_BIAS:
                xd += bias[:, None]
            if SOFTPLUS:
                dt = tl.where(m_dt, _softplus(xd), 0.0)
            else:
                dt = xd
            # the decay of the next step (1 past the chunk's end: r already holds it)
            m_next = mask_d[:, None] & ((offs_t < CHUNK - 1) & (t + 1 < length))[None, :]
            xn = tl.load(delta_ptr + ptr_dt + 1, mask=m_next, other=0.0)
            if HAS_BIAS:
                xn += bias[:, None]
            if SOFTPLUS:
                xn = _softplus(xn)
            dt_next = tl.where(m_next, xn, 0.0)
            Bt = tl.load(B_ptr + bc_row[:, None] + t[None, :], mask=m_nt, other=0.0)
            Ct = tl.load(C_ptr + bc_row[:, None] + t[None, :], mask=m_nt, other=0.0)
            dout = tl.load(dout_ptr + ptr_dt, mask=m_dt, other=0.0)

            # recompute this chunk's states from the one saved at its start
            h0 = tl.load(ckpt_ptr + (b * nchunks + k) * dim * state + dn_off, mask=mask_dn, other=0.0)
            a = tl.exp2(dt[:, None, :] * A2)
            dtu = dt * u
            x = dtu[:, None, :] * Bt[None, :, :]
            a_cum, x_cum = tl.associative_scan((a, x), axis=2, combine_fn=_affine_combine)
            hs = a_cum * h0[:, :, None] + x_cum

            if HAS_Z:
                zt = tl.load(z_ptr + ptr_dt, mask=m_dt, other=0.0)
                sz = tl.sigmoid(zt)
                yp = tl.sum(hs * Ct[None, :, :], axis=1)
                if HAS_D:
                    yp += Dv[:, None] * u
                tl.store(dz_ptr + ptr_dt, dout * yp * sz * (1.0 + zt * (1.0 - sz)), mask=m_dt)
                dy = dout * zt * sz
            else:
                dy = dout

            # dh_t = C_t dy_t + a_{t+1} dh_{t+1}, a reverse scan, plus the carry from later chunks
            a_next = tl.exp2(dt_next[:, None, :] * A2)
            p_cum, g_cum = tl.associative_scan((a_next, Ct[None, :, :] * dy[:, None, :]), axis=2,
                                               combine_fn=_affine_combine, reverse=True)
            dh = p_cum * r[:, :, None] + g_cum
            q = dh * (hs - x)  # = dh a h_{t-1}: the gradient w.r.t. dt * A

            dhB = tl.sum(dh * Bt[None, :, :], axis=1)
            ddt = dhB * u + tl.sum(q * A3, axis=1)
            du = dhB * dt
            if HAS_D:
                du += Dv[:, None] * dy
                dD_acc += tl.sum(dy * u, axis=1)
            tl.store(du_ptr + ptr_dt, du, mask=m_dt)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(xd)
            ddt = tl.where(m_dt, ddt, 0.0)
            tl.store(ddelta_ptr + ptr_dt, ddt, mask=m_dt)
            if HAS_BIAS:
                dbias_acc += tl.sum(ddt, axis=1)
            dA_acc += tl.sum(q * dt[:, None, :], axis=2)

            dB = tl.sum(dh * dtu[:, None, :], axis=0)
            dC = tl.sum(hs * dy[:, None, :], axis=0)
            ptr_nt = bc_row[:, None] + t[None, :]
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + ptr_nt, dB, mask=m_nt, sem="relaxed")
                tl.atomic_add(dC_ptr + ptr_nt, dC, mask=m_nt, sem="relaxed")
            else:
                tl.store(dB_ptr + ptr_nt, dB, mask=m_nt)
                tl.store(dC_ptr + ptr_nt, dC, mask=m_nt)
            # a_start dh_start, with a_start remade from dt so that the (BLOCK_D, N, CHUNK) decays
            # need not stay live through the reverse scan
            dt0 = tl.sum(tl.where(offs_t[None, :] == 0, dt, 0.0), axis=1)
            dh0 = tl.sum(tl.where(offs_t[None, None, :] == 0, dh, 0.0), axis=2)
            r = tl.exp2(dt0[:, None] * A2_2d) * dh0

        tl.store(dA_ptr + b * dim * state + dn_off, dA_acc, mask=mask_dn)
        if HAS_D:
            tl.store(dD_ptr + b * dim + chan, dD_acc, mask=mask_d)
        if HAS_BIAS:
            tl.store(dbias_ptr + b * dim + chan, dbias_acc, mask=mask_d)

    _KERNEL_SOURCES = {f.__name__: f for f in (_affine_combine, _softplus, _scan_fwd_kernel, _scan_bwd_kernel)}

_built_for: bool | None = None  # the TRITON_INTERPRET setting the kernels were decorated under


def _kernels():
    """The (forward, backward) kernels, decorated for the current TRITON_INTERPRET setting."""
    global _built_for
    mode = _interpreting()
    if _built_for is not mode:
        # kernels find their helpers through the module's globals, so all are replaced together
        g = globals()
        for name, fn in _KERNEL_SOURCES.items():
            g[name] = triton.jit(fn)
        _built_for = mode
    g = globals()
    return g["_scan_fwd_kernel"], g["_scan_bwd_kernel"]


def _check_runnable(u: torch.Tensor):
    reason = unavailable_reason(u.device)
    if reason is not None:
        raise RuntimeError(f"selective_scan: {reason}")


def _c(t):
    return None if t is None else t.contiguous()


def _on(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# the backend interface (see visionssm.ops.selective_scan)


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints):
    """(y, last_state, checkpoints); see visionssm.ops.selective_scan for the interface."""
    _check_runnable(u)
    u, delta, A, B, C, D, z, delta_bias = (_c(t) for t in (u, delta, A, B, C, D, z, delta_bias))
    batch, dim, length = u.shape
    groups, state = B.shape[1], A.shape[1]
    dg = dim // groups
    chunk = _chunk(state)
    nchunks = -(-length // chunk)
    y = torch.empty_like(u)
    last = u.new_zeros(batch, dim, state)
    ckpt = u.new_empty(checkpoint_shape(batch, dim, length, state)) if save_checkpoints else u.new_empty(0)
    if y.numel() == 0:
        return y, last, ckpt.zero_()
    block_d, block_n = _block_sizes(batch, groups, dg, state, u.device)
    fwd, _ = _kernels()
    grid = (-(-dg // block_d), groups, batch)
    with _on(u.device):
        fwd[grid](
            u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, y, last, ckpt if save_checkpoints else u,
            dim, length, nchunks, dg, groups, state,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), SAVE=bool(save_checkpoints),
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=_num_warps(block_d, block_n, chunk),
        )
    return y, last, ckpt


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout, dlast):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for an absent D, z or delta_bias."""
    _check_runnable(u)
    u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dlast = (
        _c(t) for t in (u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dlast))
    batch, dim, length = u.shape
    groups, state = B.shape[1], A.shape[1]
    dg = dim // groups
    chunk = _chunk(state)
    nchunks = -(-length // chunk)
    block_d, block_n = _block_sizes(batch, groups, dg, state, u.device)
    nblk = -(-dg // block_d)
    # every element of these is written by exactly one program (dB, dC are summed into)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dB, dC = torch.zeros_like(B), torch.zeros_like(C)
    dA_part = u.new_zeros(batch, dim, state)
    dD_part = u.new_zeros(batch, dim) if D is not None else None
    dbias_part = u.new_zeros(batch, dim) if delta_bias is not None else None
    if u.numel():
        if tuple(ckpt.shape) != checkpoint_shape(batch, dim, length, state):
            raise RuntimeError(f"selective_scan: checkpoints of shape {tuple(ckpt.shape)} do not match the "
                               f"triton backend's {checkpoint_shape(batch, dim, length, state)}")
        _, bwd = _kernels()
        with _on(u.device):
            bwd[(nblk, groups, batch)](
                u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
                delta_bias if delta_bias is not None else u, ckpt, dout, dlast if dlast is not None else u,
                du, ddelta, dz if dz is not None else u, dA_part, dB, dC,
                dD_part if D is not None else u, dbias_part if delta_bias is not None else u,
                dim, length, nchunks, dg, groups, state,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None, ATOMIC_BC=nblk > 1,
                BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=_num_warps(block_d, block_n, chunk),
            )
    return (du, ddelta, dA_part.sum(0), dB, dC, dD_part.sum(0) if D is not None else None, dz,
            dbias_part.sum(0) if delta_bias is not None else None)


# The directional scan (visionssm.ops.directional_scan) has no kernel of its own here yet: this
# module defines no ``directional_forward`` / ``directional_backward``, so on this backend the op
# gathers each direction's walk into a copy (index_select), runs the kernels above on the K*d
# channels and gathers the outputs back (the copy-based path, inside the one custom op). A
# direction-aware kernel would load every tile through the walk's positions (``tl.load`` of the
# index map's chunk, then pointer offsets from it), loop over the directions inside the program
# and add each direction's y (and a shared u's du) into the map with a barrier between
# directions; it is not written because no GPU was at hand to compile and time it.

__all__ = ["CHUNK", "backward", "checkpoint_shape", "forward", "unavailable_reason"]
