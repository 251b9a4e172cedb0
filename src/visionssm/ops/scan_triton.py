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

Two kernel pairs (``KERNEL``). The "tile" pair described above holds all states of a chunk at
once, in (BLOCK_D, state, CHUNK) tiles of 32-256 steps. The "loop" pair (``_loop_fwd_kernel``,
``_loop_bwd_kernel``) is organised like the official CUDA kernel instead: (BLOCK_D, CHUNK) tiles of
up to LOOP_CHUNK steps spread over the program's threads (each thread a run of consecutive steps,
then a scan across the threads), the states looped inside the program one B and C row at a time
(read once for the program's channels), and the states carried across chunks in a (BLOCK_D, state)
register tile. The arithmetic per state is the same, and so are the arguments, the grid, the
checkpoints (spaced by that pair's chunk) and the results. Which is faster on a GPU is for the GPU
benchmark to say (``visionssm bench scan-gpu`` times each pair); the first H200 measurement made
KERNEL "auto" pick "loop" for a single state and "tile" for more.

Directions (``directional_forward`` / ``directional_backward``, the interface of
``visionssm.ops.directional_scan``). The same two kernels with ``MAPPED`` set read every direction
of Vim's pair or VMamba's cross-scan through its index map instead of through flipped or
transposed copies: step t of direction k is position ``maps[k, t]`` (int32) of the map, so per chunk
the program loads the chunk's CHUNK positions and reads u, delta, B, C and dy at them (the backward
also reads delta at ``maps[k, t + 1]`` for the next step's decay). The plain scan is the case
MAPPED=False, NDIR=1, where the positions are t itself and the direction loop is one pass (its
results are bit-for-bit those of the kernels before directions existed).

Merging. A program owns one block of output channels (of y, and of a u shared by the directions)
of one group in one batch row, and loops over the NDIR directions itself, each with its own
channels ``k*d + ...`` and group ``k*G + g``: direction 0 stores y, each later one loads what is
there, adds and stores, with a barrier between directions (the same element is handled by another
thread of the program in the next direction's walk). No other program touches those elements, so
the sum needs no atomic add, no zero fill and no (batch, K*d, length) temporary, and it is
deterministic, in the order of the directions (the copy path's merge sums in that order too). Atomic
adds of y from K programs were the alternative: they make the forward's result depend on the
order in which programs finish once K >= 3 (float addition is not associative) and need y zeroed
first. The price of the loop is K times fewer programs, each K times longer; ``_block_sizes``
sees the per-direction group count and narrows the channel block where that leaves too few
programs per SM. A shared u's du is summed over the directions the same way; ddelta, a per-direction
u's du and the dA, dD, ddelta_bias partials belong to one direction's channels, and dB, dC to its
groups (added as in the plain scan).

What the gathers cost. A chunk's positions along a row-major walk (Vim's two directions, VMamba's
row and row_rev) are consecutive, ascending or descending, so the loads stay coalesced. Along a
column-major walk consecutive steps are W positions apart: each of a chunk's steps reads its own
32-byte sector of every row of u, delta, B, C and dy (and y's read-modify-write), 8x the sectors of
a contiguous fp32 chunk, and the other 7 positions of each sector are used only when a later chunk
(the next columns, H steps on) still finds them in L1/L2. Against that, the copy path moves each
(batch, d, length) tensor about three times per direction (gather, write, read) and y four times
per direction plus the sum; this path reads each once per direction and y 2K-1 times. The GPU
measurement (tools/gpu_check.sh) decides. A later tiling would make a column walk's chunk span
whole sectors: a chunk of 8 columns (8H steps for fp32) reads each sector of those H rows once; as
that is more steps than the register tiles hold at 16 states, the (H, 8) block would be loaded
row-major into shared memory (coalesced) and scanned from there in sub-chunks, the state carried
across them as across chunks now.

Dtypes (``READS_HALF``). The wrappers hand float16 and bfloat16 operands (u, delta, B, C, z, dout)
over as they are, so that they cross memory at half the bytes, with A, D and delta_bias in the
compute dtype (float32; float64 for float64 inputs). The kernels convert each tile to A's dtype as
they load it and keep the state and every sum in it; y, du, ddelta and dz are stored in their
inputs' dtypes, while sums of several contributions (y and a shared u's du over directions, dB and
dC over channel blocks), the last state, the checkpoints and the parameters' partials stay in the
compute dtype.

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
# float16 / bfloat16 operands are read as they are (see the module doc), not cast by the wrapper
READS_HALF = True
# The kernel pair the backend launches (see the module doc); the GPU benchmark times each of KERNELS.
# "auto": "loop" for a single state, "tile" otherwise, as measured on an H200 (docs/benchmarks.md):
# "loop" was 1.5x faster forward+backward at VMamba's d_state=1 and faster in every directional
# case there; "tile" 1.1-1.4x faster at Vim's 16 states. 2 to 8 states were not measured.
KERNELS = ("tile", "loop")
KERNEL = "auto"
# the "loop" pair's longest chunk (steps spread over the threads of a program)
LOOP_CHUNK = 512
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


def _kernel(state: int) -> str:
    """The kernel pair KERNEL names for this state size."""
    if KERNEL == "auto":
        return "loop" if state == 1 else "tile"
    if KERNEL not in KERNELS:
        raise ValueError(f"scan_triton.KERNEL: expected 'auto' or one of {KERNELS}, got {KERNEL!r}")
    return KERNEL


def _chunk(state: int, length: int) -> int:
    """Steps per chunk. "tile": 256 for one state down to 32 from 8 states up; "loop": the length
    rounded up to a power of two, 32 to LOOP_CHUNK."""
    if CHUNK:
        return CHUNK
    if _kernel(state) == "tile":
        return min(256, max(32, 256 // _next_pow2(state)))
    return min(LOOP_CHUNK, max(32, _next_pow2(length)))


def checkpoint_shape(batch, dim, length, state):
    return (batch, -(-length // _chunk(state, length)), dim, state)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _tiles(batch: int, groups: int, dim_per_group: int, state: int, length: int, device: torch.device
           ) -> tuple[int, int, int, int]:
    """(CHUNK, BLOCK_D, BLOCK_N, warps) of the KERNEL pair: channels so that a program's tile, (BLOCK_D,
    BLOCK_N, CHUNK) for "tile" and (BLOCK_D, CHUNK) for "loop", holds about TILE elements; fewer where
    that leaves fewer than about two programs per SM (VMamba's d_state=1 at small batch); never more
    than a group."""
    chunk, block_n = _chunk(state, length), _next_pow2(state)
    tile = _kernel(state) == "tile"
    per_channel = chunk * (block_n if tile else 1)
    if BLOCK_D is not None:
        block_d = _next_pow2(BLOCK_D)
    else:
        block_d = max(1, TILE // per_channel)
        while block_d > 1 and batch * groups * -(-dim_per_group // block_d) < 2 * _sm_count(device):
            block_d //= 2
    block_d = max(1, min(block_d, _next_pow2(dim_per_group)))
    return chunk, block_d, block_n, _num_warps(block_d * per_channel, 512 if tile else 256)


def _num_warps(elements: int, per_warp: int) -> int:
    """One warp per ``per_warp`` elements of a program's tile, 1 to 8."""
    return min(8, _next_pow2(max(elements // per_warp, 1)))


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
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, maps_ptr,
        y_ptr, last_ptr, ckpt_ptr,
        dim, dim_out, length, nchunks, dim_per_group, groups, state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        SAVE: tl.constexpr, MAPPED: tl.constexpr, NDIR: tl.constexpr, SHARED_U: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    ):
        # groups: per direction; dim: channels of delta (NDIR * dim_out); the plain scan is
        # MAPPED=False, NDIR=1, dim_out=dim, and then the direction loop is a single pass
        blk = tl.program_id(0)
        g = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        offs_d = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < dim_per_group
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < state
        offs_t = tl.arange(0, CHUNK)
        mask_dn = mask_d[:, None] & mask_n[None, :]
        ochan = g * dim_per_group + offs_d  # channel of y (and of a shared u)
        orow = (b * dim_out + ochan) * length
        for kdir in range(0, NDIR):
            gk = kdir * groups + g  # this direction's group of B, C
            chan = gk * dim_per_group + offs_d  # its channel of delta, A, D, bias, u
            dn_off = chan[:, None] * state + offs_n[None, :]

            A = tl.load(A_ptr + dn_off, mask=mask_dn, other=0.0)
            A2 = (A * _LOG2E)[:, :, None]
            if HAS_D:
                Dv = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + chan, mask=mask_d, other=0.0)
            row = (b * dim + chan) * length  # start of each channel's row in delta (and u, z, y: plain)
            urow = orow if SHARED_U else row
            bc_row = ((b * NDIR * groups + gk) * state + offs_n) * length  # each state's row in B, C

            h = tl.zeros([BLOCK_D, BLOCK_N], dtype=A.dtype)
            for k in range(0, nchunks):
                t = k * CHUNK + offs_t
                mask_t = t < length
                m_dt = mask_d[:, None] & mask_t[None, :]
                m_nt = mask_n[:, None] & mask_t[None, :]
                if MAPPED:  # step t of the walk is at position maps[kdir, t] of the map: a gather
                    pos = tl.load(maps_ptr + kdir * length + t, mask=mask_t, other=0)
                else:
                    pos = t
                if SAVE:
                    tl.store(ckpt_ptr + (b * nchunks + k) * dim * state + dn_off, h, mask=mask_dn)
                u = tl.load(u_ptr + urow[:, None] + pos[None, :], mask=m_dt, other=0.0).to(A.dtype)
                dt = tl.load(delta_ptr + row[:, None] + pos[None, :], mask=m_dt, other=0.0).to(A.dtype)
                if HAS_BIAS:
                    dt += bias[:, None]
                if SOFTPLUS:
                    dt = _softplus(dt)
                dt = tl.where(m_dt, dt, 0.0)  # padding: decay 1, input 0
                Bt = tl.load(B_ptr + bc_row[:, None] + pos[None, :], mask=m_nt, other=0.0).to(A.dtype)
                Ct = tl.load(C_ptr + bc_row[:, None] + pos[None, :], mask=m_nt, other=0.0).to(A.dtype)

                a = tl.exp2(dt[:, None, :] * A2)
                x = (dt * u)[:, None, :] * Bt[None, :, :]
                a_cum, x_cum = tl.associative_scan((a, x), axis=2, combine_fn=_affine_combine)
                hs = a_cum * h[:, :, None] + x_cum
                y = tl.sum(hs * Ct[None, :, :], axis=1)
                if HAS_D:
                    y += Dv[:, None] * u
                ptr_y = orow[:, None] + pos[None, :]
                if HAS_Z:  # the plain scan's gate (the directional op gates the sum outside)
                    zt = tl.load(z_ptr + ptr_y, mask=m_dt, other=0.0).to(A.dtype)
                    y = y * zt * tl.sigmoid(zt)
                if NDIR > 1:  # the directions before this one (same program, same rows) wrote their sum
                    y = tl.load(y_ptr + ptr_y, mask=m_dt & (kdir > 0), other=0.0).to(A.dtype) + y
                tl.store(y_ptr + ptr_y, y.to(y_ptr.dtype.element_ty), mask=m_dt)
                h = tl.sum(tl.where(offs_t[None, None, :] == CHUNK - 1, hs, 0.0), axis=2)
            tl.store(last_ptr + b * dim * state + dn_off, h, mask=mask_dn)
            if NDIR > 1:  # the next direction reads y where other threads of the program wrote it
                tl.debug_barrier()

    def _scan_bwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, maps_ptr, ckpt_ptr, dout_ptr, dlast_ptr,
        du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        dim, dim_out, length, nchunks, dim_per_group, groups, state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
        MAPPED: tl.constexpr, NDIR: tl.constexpr, SHARED_U: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    ):
        blk = tl.program_id(0)
        g = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        offs_d = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < dim_per_group
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < state
        offs_t = tl.arange(0, CHUNK)
        mask_dn = mask_d[:, None] & mask_n[None, :]
        ochan = g * dim_per_group + offs_d  # channel of dout (and of a shared u, du)
        orow = (b * dim_out + ochan) * length
        for kdir in range(0, NDIR):
            gk = kdir * groups + g
            chan = gk * dim_per_group + offs_d
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
            urow = orow if SHARED_U else row
            bc_row = ((b * NDIR * groups + gk) * state + offs_n) * length

            if HAS_DLAST:  # r: what the steps after this chunk pass back into its last step
                r = tl.load(dlast_ptr + b * dim * state + dn_off, mask=mask_dn, other=0.0)
            else:
                r = tl.zeros([BLOCK_D, BLOCK_N], dtype=A.dtype)
            dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=A.dtype)
            dD_acc = tl.zeros([BLOCK_D], dtype=A.dtype)
            dbias_acc = tl.zeros([BLOCK_D], dtype=A.dtype)
            for kk in range(0, nchunks):
                k = nchunks - 1 - kk
                t = k * CHUNK + offs_t
                mask_t = t < length
                m_dt = mask_d[:, None] & mask_t[None, :]
                m_nt = mask_n[:, None] & mask_t[None, :]
                # the decay of the next step (1 past the chunk's end: r already holds it)
                mask_next = (offs_t < CHUNK - 1) & (t + 1 < length)
                m_next = mask_d[:, None] & mask_next[None, :]
                if MAPPED:  # positions of the walk's steps t and t + 1 in the map: gathers
                    pos = tl.load(maps_ptr + kdir * length + t, mask=mask_t, other=0)
                    pos_next = tl.load(maps_ptr + kdir * length + t + 1, mask=mask_next, other=0)
                else:
                    pos = t
                    pos_next = t + 1
                ptr_dt = row[:, None] + pos[None, :]
                ptr_u = urow[:, None] + pos[None, :]
                ptr_o = orow[:, None] + pos[None, :]

                u = tl.load(u_ptr + ptr_u, mask=m_dt, other=0.0).to(A.dtype)
                xd = tl.load(delta_ptr + ptr_dt, mask=m_dt, other=0.0).to(A.dtype)
                if HAS_BIAS:
                    xd += bias[:, None]
                if SOFTPLUS:
                    dt = tl.where(m_dt, _softplus(xd), 0.0)
                else:
                    dt = xd
                xn = tl.load(delta_ptr + row[:, None] + pos_next[None, :], mask=m_next, other=0.0).to(A.dtype)
                if HAS_BIAS:
                    xn += bias[:, None]
                if SOFTPLUS:
                    xn = _softplus(xn)
                dt_next = tl.where(m_next, xn, 0.0)
                Bt = tl.load(B_ptr + bc_row[:, None] + pos[None, :], mask=m_nt, other=0.0).to(A.dtype)
                Ct = tl.load(C_ptr + bc_row[:, None] + pos[None, :], mask=m_nt, other=0.0).to(A.dtype)
                dout = tl.load(dout_ptr + ptr_o, mask=m_dt, other=0.0).to(A.dtype)

                # recompute this chunk's states from the one saved at its start
                h0 = tl.load(ckpt_ptr + (b * nchunks + k) * dim * state + dn_off, mask=mask_dn, other=0.0)
                a = tl.exp2(dt[:, None, :] * A2)
                dtu = dt * u
                x = dtu[:, None, :] * Bt[None, :, :]
                a_cum, x_cum = tl.associative_scan((a, x), axis=2, combine_fn=_affine_combine)
                hs = a_cum * h0[:, :, None] + x_cum

                if HAS_Z:
                    zt = tl.load(z_ptr + ptr_o, mask=m_dt, other=0.0).to(A.dtype)
                    sz = tl.sigmoid(zt)
                    yp = tl.sum(hs * Ct[None, :, :], axis=1)
                    if HAS_D:
                        yp += Dv[:, None] * u
                    dz = dout * yp * sz * (1.0 + zt * (1.0 - sz))
                    tl.store(dz_ptr + ptr_o, dz.to(dz_ptr.dtype.element_ty), mask=m_dt)
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
                if SHARED_U and NDIR > 1:  # a shared u's gradient: the sum over the directions so far
                    du = tl.load(du_ptr + ptr_u, mask=m_dt & (kdir > 0), other=0.0).to(A.dtype) + du
                tl.store(du_ptr + ptr_u, du.to(du_ptr.dtype.element_ty), mask=m_dt)
                if SOFTPLUS:
                    ddt = ddt * tl.sigmoid(xd)
                ddt = tl.where(m_dt, ddt, 0.0)
                tl.store(ddelta_ptr + ptr_dt, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dt)
                if HAS_BIAS:
                    dbias_acc += tl.sum(ddt, axis=1)
                dA_acc += tl.sum(q * dt[:, None, :], axis=2)

                dB = tl.sum(dh * dtu[:, None, :], axis=0)
                dC = tl.sum(hs * dy[:, None, :], axis=0)
                ptr_nt = bc_row[:, None] + pos[None, :]
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
            if SHARED_U and NDIR > 1:  # the next direction adds to du where other threads wrote it
                tl.debug_barrier()

    # The "loop" pair: (BLOCK_D, CHUNK) tiles of one state at a time, the states looped inside the
    # program. Per chunk and state n the program scans the chunk along its CHUNK steps (spread over
    # the program's threads, a run of consecutive steps each: in-thread, then across threads), adds
    # C_n h_n into y (or, backward, the state's share of every gradient) and carries h_n (dh_n) to
    # the next chunk in a (BLOCK_D, BLOCK_N) register tile; B and C are read one state row at a time,
    # once for the program's channels. Same arguments, grid, checkpoints and results as the "tile" pair.

    def _loop_fwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, maps_ptr,
        y_ptr, last_ptr, ckpt_ptr,
        dim, dim_out, length, nchunks, dim_per_group, groups, state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        SAVE: tl.constexpr, MAPPED: tl.constexpr, NDIR: tl.constexpr, SHARED_U: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    ):
        blk = tl.program_id(0)
        g = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        offs_d = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < dim_per_group
        offs_n = tl.arange(0, BLOCK_N)
        mask_dn = mask_d[:, None] & (offs_n < state)[None, :]
        offs_t = tl.arange(0, CHUNK)
        ochan = g * dim_per_group + offs_d
        orow = (b * dim_out + ochan) * length
        for kdir in range(0, NDIR):
            gk = kdir * groups + g
            chan = gk * dim_per_group + offs_d
            dn_off = chan[:, None] * state + offs_n[None, :]
            A_dn = tl.load(A_ptr + dn_off, mask=mask_dn, other=0.0)
            if HAS_D:
                Dv = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + chan, mask=mask_d, other=0.0)
            row = (b * dim + chan) * length
            urow = orow if SHARED_U else row
            bc_row0 = (b * NDIR * groups + gk) * state * length  # state 0's row in B, C

            h = tl.zeros([BLOCK_D, BLOCK_N], dtype=A_dn.dtype)  # the states carried across chunks
            for k in range(0, nchunks):
                t = k * CHUNK + offs_t
                mask_t = t < length
                m_dt = mask_d[:, None] & mask_t[None, :]
                if MAPPED:
                    pos = tl.load(maps_ptr + kdir * length + t, mask=mask_t, other=0)
                else:
                    pos = t
                if SAVE:
                    tl.store(ckpt_ptr + (b * nchunks + k) * dim * state + dn_off, h, mask=mask_dn)
                u = tl.load(u_ptr + urow[:, None] + pos[None, :], mask=m_dt, other=0.0).to(A_dn.dtype)
                dt = tl.load(delta_ptr + row[:, None] + pos[None, :], mask=m_dt, other=0.0).to(A_dn.dtype)
                if HAS_BIAS:
                    dt += bias[:, None]
                if SOFTPLUS:
                    dt = _softplus(dt)
                dt = tl.where(m_dt, dt, 0.0)  # padding: decay 1, input 0
                dtu = dt * u
                if HAS_D:
                    y = Dv[:, None] * u
                else:
                    y = tl.zeros([BLOCK_D, CHUNK], dtype=A_dn.dtype)
                for n in range(0, state):
                    is_n = offs_n[None, :] == n
                    A2 = tl.sum(tl.where(is_n, A_dn, 0.0), axis=1) * _LOG2E
                    Bn = tl.load(B_ptr + bc_row0 + n * length + pos, mask=mask_t, other=0.0).to(A_dn.dtype)
                    Cn = tl.load(C_ptr + bc_row0 + n * length + pos, mask=mask_t, other=0.0).to(A_dn.dtype)
                    a = tl.exp2(dt * A2[:, None])
                    a_cum, x_cum = tl.associative_scan((a, dtu * Bn[None, :]), axis=1, combine_fn=_affine_combine)
                    hs = a_cum * tl.sum(tl.where(is_n, h, 0.0), axis=1)[:, None] + x_cum
                    y += hs * Cn[None, :]
                    h_end = tl.sum(tl.where(offs_t[None, :] == CHUNK - 1, hs, 0.0), axis=1)
                    h = tl.where(is_n, h_end[:, None], h)
                ptr_y = orow[:, None] + pos[None, :]
                if HAS_Z:
                    zt = tl.load(z_ptr + ptr_y, mask=m_dt, other=0.0).to(A_dn.dtype)
                    y = y * zt * tl.sigmoid(zt)
                if NDIR > 1:
                    y = tl.load(y_ptr + ptr_y, mask=m_dt & (kdir > 0), other=0.0).to(A_dn.dtype) + y
                tl.store(y_ptr + ptr_y, y.to(y_ptr.dtype.element_ty), mask=m_dt)
            tl.store(last_ptr + b * dim * state + dn_off, h, mask=mask_dn)
            if NDIR > 1:
                tl.debug_barrier()

    def _loop_bwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, maps_ptr, ckpt_ptr, dout_ptr, dlast_ptr,
        du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        dim, dim_out, length, nchunks, dim_per_group, groups, state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
        MAPPED: tl.constexpr, NDIR: tl.constexpr, SHARED_U: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    ):
        blk = tl.program_id(0)
        g = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        offs_d = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < dim_per_group
        offs_n = tl.arange(0, BLOCK_N)
        mask_dn = mask_d[:, None] & (offs_n < state)[None, :]
        offs_t = tl.arange(0, CHUNK)
        ochan = g * dim_per_group + offs_d
        orow = (b * dim_out + ochan) * length
        for kdir in range(0, NDIR):
            gk = kdir * groups + g
            chan = gk * dim_per_group + offs_d
            dn_off = chan[:, None] * state + offs_n[None, :]
            A_dn = tl.load(A_ptr + dn_off, mask=mask_dn, other=0.0)
            if HAS_D:
                Dv = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + chan, mask=mask_d, other=0.0)
            row = (b * dim + chan) * length
            urow = orow if SHARED_U else row
            bc_row0 = (b * NDIR * groups + gk) * state * length

            if HAS_DLAST:  # r: what the steps after this chunk pass back into its last step, per state
                r = tl.load(dlast_ptr + b * dim * state + dn_off, mask=mask_dn, other=0.0)
            else:
                r = tl.zeros([BLOCK_D, BLOCK_N], dtype=A_dn.dtype)
            dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=A_dn.dtype)
            dD_acc = tl.zeros([BLOCK_D], dtype=A_dn.dtype)
            dbias_acc = tl.zeros([BLOCK_D], dtype=A_dn.dtype)
            for kk in range(0, nchunks):
                k = nchunks - 1 - kk
                t = k * CHUNK + offs_t
                mask_t = t < length
                m_dt = mask_d[:, None] & mask_t[None, :]
                mask_next = (offs_t < CHUNK - 1) & (t + 1 < length)
                m_next = mask_d[:, None] & mask_next[None, :]
                if MAPPED:
                    pos = tl.load(maps_ptr + kdir * length + t, mask=mask_t, other=0)
                    pos_next = tl.load(maps_ptr + kdir * length + t + 1, mask=mask_next, other=0)
                else:
                    pos = t
                    pos_next = t + 1
                ptr_dt = row[:, None] + pos[None, :]
                ptr_u = urow[:, None] + pos[None, :]
                ptr_o = orow[:, None] + pos[None, :]

                u = tl.load(u_ptr + ptr_u, mask=m_dt, other=0.0).to(A_dn.dtype)
                xd = tl.load(delta_ptr + ptr_dt, mask=m_dt, other=0.0).to(A_dn.dtype)
                if HAS_BIAS:
                    xd += bias[:, None]
                if SOFTPLUS:
                    dt = tl.where(m_dt, _softplus(xd), 0.0)
                else:
                    dt = xd
                xn = tl.load(delta_ptr + row[:, None] + pos_next[None, :], mask=m_next, other=0.0).to(A_dn.dtype)
                if HAS_BIAS:
                    xn += bias[:, None]
                if SOFTPLUS:
                    xn = _softplus(xn)
                dt_next = tl.where(m_next, xn, 0.0)
                dt0 = tl.sum(tl.where(offs_t[None, :] == 0, dt, 0.0), axis=1)
                dtu = dt * u
                dout = tl.load(dout_ptr + ptr_o, mask=m_dt, other=0.0).to(A_dn.dtype)
                if HAS_Z:
                    zt = tl.load(z_ptr + ptr_o, mask=m_dt, other=0.0).to(A_dn.dtype)
                    sz = tl.sigmoid(zt)
                    dy = dout * zt * sz
                else:
                    dy = dout
                h0 = tl.load(ckpt_ptr + (b * nchunks + k) * dim * state + dn_off, mask=mask_dn, other=0.0)
                if HAS_D:
                    yp = Dv[:, None] * u  # y before the gate, for dz
                else:
                    yp = tl.zeros([BLOCK_D, CHUNK], dtype=A_dn.dtype)
                ddt = tl.zeros([BLOCK_D, CHUNK], dtype=A_dn.dtype)
                du = tl.zeros([BLOCK_D, CHUNK], dtype=A_dn.dtype)
                for n in range(0, state):
                    is_n = offs_n[None, :] == n
                    An = tl.sum(tl.where(is_n, A_dn, 0.0), axis=1)
                    A2 = (An * _LOG2E)[:, None]
                    Bn = tl.load(B_ptr + bc_row0 + n * length + pos, mask=mask_t, other=0.0).to(A_dn.dtype)
                    Cn = tl.load(C_ptr + bc_row0 + n * length + pos, mask=mask_t, other=0.0).to(A_dn.dtype)
                    # this state's walk through the chunk, recomputed from the checkpoint
                    x = dtu * Bn[None, :]
                    a_cum, x_cum = tl.associative_scan((tl.exp2(dt * A2), x), axis=1, combine_fn=_affine_combine)
                    hs = a_cum * tl.sum(tl.where(is_n, h0, 0.0), axis=1)[:, None] + x_cum
                    if HAS_Z:
                        yp += hs * Cn[None, :]
                    # dh_t = C_t dy_t + a_{t+1} dh_{t+1}, plus the carry from later chunks
                    p_cum, g_cum = tl.associative_scan((tl.exp2(dt_next * A2), Cn[None, :] * dy), axis=1,
                                                       combine_fn=_affine_combine, reverse=True)
                    dh = p_cum * tl.sum(tl.where(is_n, r, 0.0), axis=1)[:, None] + g_cum
                    q = dh * (hs - x)  # = dh a h_{t-1}: the gradient w.r.t. dt * A
                    dhB = dh * Bn[None, :]
                    ddt += dhB * u + q * An[:, None]
                    du += dhB * dt
                    dA_acc = tl.where(is_n, dA_acc + tl.sum(q * dt, axis=1)[:, None], dA_acc)
                    dBn = tl.sum(dh * dtu, axis=0)  # summed over the program's channels
                    dCn = tl.sum(hs * dy, axis=0)
                    ptr_n = bc_row0 + n * length + pos
                    if ATOMIC_BC:
                        tl.atomic_add(dB_ptr + ptr_n, dBn, mask=mask_t, sem="relaxed")
                        tl.atomic_add(dC_ptr + ptr_n, dCn, mask=mask_t, sem="relaxed")
                    else:
                        tl.store(dB_ptr + ptr_n, dBn, mask=mask_t)
                        tl.store(dC_ptr + ptr_n, dCn, mask=mask_t)
                    dh0 = tl.sum(tl.where(offs_t[None, :] == 0, dh, 0.0), axis=1)
                    r = tl.where(is_n, (tl.exp2(dt0 * An * _LOG2E) * dh0)[:, None], r)
                if HAS_Z:
                    dz = dout * yp * sz * (1.0 + zt * (1.0 - sz))
                    tl.store(dz_ptr + ptr_o, dz.to(dz_ptr.dtype.element_ty), mask=m_dt)
                if HAS_D:
                    du += Dv[:, None] * dy
                    dD_acc += tl.sum(dy * u, axis=1)
                if SHARED_U and NDIR > 1:
                    du = tl.load(du_ptr + ptr_u, mask=m_dt & (kdir > 0), other=0.0).to(A_dn.dtype) + du
                tl.store(du_ptr + ptr_u, du.to(du_ptr.dtype.element_ty), mask=m_dt)
                if SOFTPLUS:
                    ddt = ddt * tl.sigmoid(xd)
                ddt = tl.where(m_dt, ddt, 0.0)
                tl.store(ddelta_ptr + ptr_dt, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dt)
                if HAS_BIAS:
                    dbias_acc += tl.sum(ddt, axis=1)

            tl.store(dA_ptr + b * dim * state + dn_off, dA_acc, mask=mask_dn)
            if HAS_D:
                tl.store(dD_ptr + b * dim + chan, dD_acc, mask=mask_d)
            if HAS_BIAS:
                tl.store(dbias_ptr + b * dim + chan, dbias_acc, mask=mask_d)
            if SHARED_U and NDIR > 1:
                tl.debug_barrier()

    _KERNEL_SOURCES = {f.__name__: f for f in (_affine_combine, _softplus, _scan_fwd_kernel, _scan_bwd_kernel,
                                               _loop_fwd_kernel, _loop_bwd_kernel)}

_built_for: bool | None = None  # the TRITON_INTERPRET setting the kernels were decorated under


def _kernels(state: int):
    """The (forward, backward) kernels for this state size, decorated for the current TRITON_INTERPRET
    setting."""
    global _built_for
    mode = _interpreting()
    if _built_for is not mode:
        # kernels find their helpers through the module's globals, so all are replaced together
        g = globals()
        for name, fn in _KERNEL_SOURCES.items():
            g[name] = triton.jit(fn)
        _built_for = mode
    g = globals()
    prefix = "_scan" if _kernel(state) == "tile" else "_loop"
    return g[f"{prefix}_fwd_kernel"], g[f"{prefix}_bwd_kernel"]


def _check_runnable(u: torch.Tensor, op: str = "selective_scan"):
    reason = unavailable_reason(u.device)
    if reason is not None:
        raise RuntimeError(f"{op}: {reason}")


def _c(t):
    return None if t is None else t.contiguous()


def _on(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _layout(u, delta, B, A, maps):
    """(batch, dim, dim_out, length, groups per direction, state, directions) of either scan: the
    plain one (maps None) or the directional one (delta has directions * dim_out channels)."""
    batch, dim, length = delta.shape
    ndir = 1 if maps is None else maps.shape[0]
    return batch, dim, dim // ndir, length, B.shape[1] // ndir, A.shape[1], ndir


def _flags(u, dim, maps):
    return dict(MAPPED=maps is not None, NDIR=1 if maps is None else maps.shape[0], SHARED_U=u.shape[1] != dim)


def _maps(index_maps):
    return index_maps.to(torch.int32).contiguous()  # positions < 2**31; half the bytes of int64


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints, maps, op):
    _check_runnable(u, op)
    u, delta, A, B, C, D, z, delta_bias = (_c(t) for t in (u, delta, A, B, C, D, z, delta_bias))
    batch, dim, dim_out, length, groups, state, _ = _layout(u, delta, B, A, maps)
    dg = dim_out // groups
    chunk, block_d, block_n, warps = _tiles(batch, groups, dg, state, length, u.device)
    nchunks = -(-length // chunk)
    # y in u's dtype; a sum over directions, the state and its checkpoints in the compute dtype (A's)
    y = u.new_empty(batch, dim_out, length, dtype=u.dtype if maps is None else A.dtype)
    last = A.new_zeros(batch, dim, state)
    ckpt = A.new_empty(checkpoint_shape(batch, dim, length, state) if save_checkpoints else (0,))
    if y.numel() == 0:
        return y, last, ckpt.zero_()
    fwd, _ = _kernels(state)
    grid = (-(-dg // block_d), groups, batch)
    with _on(u.device):
        fwd[grid](
            u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, maps if maps is not None else u,
            y, last, ckpt if save_checkpoints else u,
            dim, dim_out, length, nchunks, dg, groups, state,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), SAVE=bool(save_checkpoints), **_flags(u, dim, maps),
            BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps,
        )
    return y, last, ckpt


def _backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout, dlast, maps, op):
    _check_runnable(u, op)
    u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dlast = (
        _c(t) for t in (u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dlast))
    batch, dim, dim_out, length, groups, state, _ = _layout(u, delta, B, A, maps)
    dg = dim_out // groups
    chunk, block_d, block_n, warps = _tiles(batch, groups, dg, state, length, u.device)
    nchunks = -(-length // chunk)
    nblk = -(-dg // block_d)
    # every element of these is written by one program (dB, dC are summed into, a shared u's du is
    # summed over the directions by the one program that owns its rows)
    # in their inputs' dtypes, but sums (a shared u's du over the directions; dB, dC over channel
    # blocks) and the parameters' partials in the compute dtype (A's)
    du = torch.empty_like(u, dtype=A.dtype if _flags(u, dim, maps)["SHARED_U"] else u.dtype)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dB, dC = torch.zeros_like(B, dtype=A.dtype), torch.zeros_like(C, dtype=A.dtype)
    dA_part = A.new_zeros(batch, dim, state)
    dD_part = A.new_zeros(batch, dim) if D is not None else None
    dbias_part = A.new_zeros(batch, dim) if delta_bias is not None else None
    if u.numel():
        if tuple(ckpt.shape) != checkpoint_shape(batch, dim, length, state):
            raise RuntimeError(f"{op}: checkpoints of shape {tuple(ckpt.shape)} do not match the "
                               f"triton backend's {checkpoint_shape(batch, dim, length, state)}")
        _, bwd = _kernels(state)
        with _on(u.device):
            bwd[(nblk, groups, batch)](
                u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
                delta_bias if delta_bias is not None else u, maps if maps is not None else u,
                ckpt, dout, dlast if dlast is not None else u,
                du, ddelta, dz if dz is not None else u, dA_part, dB, dC,
                dD_part if D is not None else u, dbias_part if delta_bias is not None else u,
                dim, dim_out, length, nchunks, dg, groups, state,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None, ATOMIC_BC=nblk > 1,
                **_flags(u, dim, maps),
                BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps,
            )
    return (du, ddelta, dA_part.sum(0), dB, dC, dD_part.sum(0) if D is not None else None, dz,
            dbias_part.sum(0) if delta_bias is not None else None)


# ---------------------------------------------------------------------------------------------
# the backend interface (see visionssm.ops.selective_scan and visionssm.ops.directional_scan)


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints):
    """(y, last_state, checkpoints); see visionssm.ops.selective_scan for the interface."""
    return _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints, None, "selective_scan")


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout, dlast):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for an absent D, z or delta_bias."""
    return _backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout, dlast, None, "selective_scan")


def directional_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, index_maps, save_checkpoints):
    """(y, last_state, checkpoints), y the ungated sum over the directions on the map; see
    visionssm.ops.directional_scan for the interface."""
    return _forward(u, delta, A, B, C, D, None, delta_bias, delta_softplus, save_checkpoints, _maps(index_maps),
                    "directional_scan")


def directional_backward(u, delta, A, B, C, D, delta_bias, delta_softplus, index_maps, ckpt, dy, dlast):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias), None for an absent D or delta_bias."""
    du, ddelta, dA, dB, dC, dD, _, ddelta_bias = _backward(u, delta, A, B, C, D, None, delta_bias, delta_softplus,
                                                           ckpt, dy, dlast, _maps(index_maps), "directional_scan")
    return du, ddelta, dA, dB, dC, dD, ddelta_bias


__all__ = ["CHUNK", "backward", "checkpoint_shape", "directional_backward", "directional_forward", "forward",
           "unavailable_reason"]
