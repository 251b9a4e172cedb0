"""Fused CPU selective scan: numba kernels that keep the state in a small local array.

One parallel job per (batch, group, block of ``lanes`` channels). The time loop is outermost, the
state loop next and the channel lanes innermost; the state (state, lanes) and the decays of one
step live in small local arrays, so the inner loops are contiguous and vectorise. u, delta, z and
y stay in their (batch, dim, length) layout: each step reads and writes one value per lane (1/N
of the work), and a job's lanes touch only ``lanes`` cache lines, so no transposed copies are
made. Nothing of size (batch, dim, length, state) is ever made: the forward writes y and, when
gradients are needed, the state every ``CHUNK`` steps; the backward recomputes one chunk of
states at a time from those checkpoints and walks it in reverse.

The work of this operator on a CPU is one exp per state update. numba has no vector exp here
(no SVML), so float32 uses ``_exp``: round-to-nearest range reduction, a degree-6 polynomial
for 2^f on [-1/2, 1/2] (relative error ~2e-7) and the 2^k factor built from its exponent bits
(an int32 reinterpreted as a float32), branch-free, so LLVM vectorises it inside the recurrence loop. float64 (used for
checking) takes ``math.exp``. The softplus of delta + delta_bias (log1p through an atanh series),
the D skip and the silu(z) gate are fused too, forward and backward.

The kernels use NumPy's error model: Python's (numba's default) puts a zero-divisor check with a
raise in every division, which keeps the softplus and gate loops from vectorising (7x slower
softplus); no divisor here can be zero.

``_dfwd`` / ``_dbwd`` are the directional scan (``visionssm.ops.directional_scan``): the same
loops, reading every step through the walk's index map and adding the outputs into the map's
layout, written with separate step-major tiles and explicit loops so that the lane loops vectorise.

The interface is described in ``visionssm.ops.selective_scan``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload

CHUNK = 64

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
# Taylor coefficients of 2^f = exp(f ln 2): (ln 2)^k / k!
_P = [_LN2**k / math.factorial(k) for k in range(7)]

_P0, _P1, _P2, _P3, _P4, _P5, _P6 = (np.float32(c) for c in _P)
_R3, _R5, _R7, _R9, _R11, _R13 = (np.float32(1 / k) for k in (3, 5, 7, 9, 11, 13))
_LO, _HI, _L2E, _HALF = np.float32(-87.0), np.float32(88.0), np.float32(_LOG2E), np.float32(0.5)


@intrinsic
def _int32_bits_as_float32(typingctx, i):
    """Reinterpret an int32's bits as a float32 (a no-op in registers, so loops stay vectorised)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


def _exp(x):
    """exp(x) for one float (numba only)."""


@overload(_exp, inline="always")
def _exp_impl(x):
    if x == numba.float32:
        def exp_f32(x):
            # 2^t = 2^k 2^f, k = round(t), |f| <= 1/2; x clamped to [-87, 88] so 2^k stays normal
            t = min(max(x, _LO), _HI) * _L2E
            k = np.floor(t + _HALF)
            f = t - k
            p = _P0 + f * (_P1 + f * (_P2 + f * (_P3 + f * (_P4 + f * (_P5 + f * _P6)))))
            return p * _int32_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))
        return exp_f32
    return lambda x: math.exp(x)


def _log1p01(e):
    """log(1 + e) for e in [0, 1] (numba only)."""


@overload(_log1p01, inline="always")
def _log1p01_impl(e):
    if e == numba.float32:
        def log1p_f32(e):
            # 2 atanh(s) with s = e / (2 + e) in [0, 1/3]: no cancellation for small e, error ~1e-8
            s = e / (np.float32(2.0) + e)
            s2 = s * s
            return np.float32(2.0) * s * (np.float32(1.0) + s2 * (_R3 + s2 * (_R5 + s2 * (
                _R7 + s2 * (_R9 + s2 * (_R11 + s2 * _R13))))))
        return log1p_f32
    return lambda e: math.log1p(e)


def _zero(a):
    """A zero of a's dtype (numba only)."""


@overload(_zero, inline="always")
def _zero_impl(a):
    zero = numba.np.numpy_support.as_dtype(a.dtype).type(0)
    return lambda a: zero


def _one(a):
    """A one of a's dtype (numba only)."""


@overload(_one, inline="always")
def _one_impl(a):
    one = numba.np.numpy_support.as_dtype(a.dtype).type(1)
    return lambda a: one


@njit(inline="always")
def _load_tile(src, bi, c0, t0, tile):
    """tile[j, w] = src[bi, c0 + w, t0 + j]: each channel's run of time steps is read contiguously."""
    for w in range(tile.shape[1]):
        for j in range(tile.shape[0]):
            tile[j, w] = src[bi, c0 + w, t0 + j]


@njit(inline="always")
def _store_tile(tile, dst, bi, c0, t0):
    for w in range(tile.shape[1]):
        for j in range(tile.shape[0]):
            dst[bi, c0 + w, t0 + j] = tile[j, w]


@njit(inline="always")
def _dt_lanes(x, bias, has_bias, softplus, dt, sig):
    """dt = softplus(x + bias) over the lanes, and sig = its derivative sigmoid(x + bias).

    softplus(v) = max(v, 0) + log1p(exp(-|v|)): no overflow, no cancellation.
    """
    for w in range(dt.shape[0]):
        v = x[w] + bias[w] if has_bias else x[w]
        if softplus:
            e = _exp(-abs(v))
            dt[w] = max(v, 0) + _log1p01(e)
            sig[w] = (1 if v >= 0 else e) / (1 + e)
        else:
            dt[w] = v


@njit(parallel=True, cache=True, error_model="numpy")
def _fwd(u, delta, bias, z, Dv, At, Bm, Cm, y, last, ckpt, save, has_bias, softplus, has_z, has_D, lanes):
    nb, d, length = u.shape
    ng, n = Bm.shape[1], Bm.shape[3]
    dg = d // ng
    nblk = (dg + lanes - 1) // lanes
    for job in prange(nb * ng * nblk):
        bi, r = job // (ng * nblk), job % (ng * nblk)
        gi = r // nblk
        c0 = gi * dg + (r % nblk) * lanes
        w_ = min(lanes, gi * dg + dg - c0)
        h = np.zeros((n, w_), u.dtype)
        tiles = np.empty((4, CHUNK, w_), u.dtype)  # u, delta, z, y of one chunk, time-major
        lane = np.empty((4, w_), u.dtype)  # per-lane values of one step
        dtt, dtu, acc, sg = lane[0], lane[1], lane[2], lane[3]
        Ab = At[:, c0:c0 + w_].copy()
        Dl = Dv[c0:c0 + w_].copy() if has_D else np.zeros(w_, u.dtype)
        bl = bias[c0:c0 + w_].copy() if has_bias else np.zeros(w_, u.dtype)
        for t0 in range(0, length, CHUNK):
            t1 = min(t0 + CHUNK, length)
            if save:
                ckpt[bi, t0 // CHUNK, :, c0:c0 + w_] = h
            U, X, Z, Y = tiles[0, :t1 - t0], tiles[1, :t1 - t0], tiles[2, :t1 - t0], tiles[3, :t1 - t0]
            _load_tile(u, bi, c0, t0, U)
            _load_tile(delta, bi, c0, t0, X)
            if has_z:
                _load_tile(z, bi, c0, t0, Z)
            for j in range(t1 - t0):
                t = t0 + j
                ut = U[j]
                _dt_lanes(X[j], bl, has_bias, softplus, dtt, sg)
                for w in range(w_):
                    dtu[w] = dtt[w] * ut[w]
                    acc[w] = Dl[w] * ut[w]
                for s in range(n):
                    bv = Bm[bi, gi, t, s]
                    cv = Cm[bi, gi, t, s]
                    for w in range(w_):
                        hv = _exp(dtt[w] * Ab[s, w]) * h[s, w] + dtu[w] * bv
                        h[s, w] = hv
                        acc[w] += hv * cv
                if has_z:
                    zt = Z[j]
                    for w in range(w_):
                        acc[w] *= zt[w] / (1 + _exp(-zt[w]))
                Y[j] = acc
            _store_tile(Y, y, bi, c0, t0)
        for s in range(n):
            for w in range(w_):
                last[bi, c0 + w, s] = h[s, w]


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
def _bwd(u, delta, bias, z, Dv, At, Bm, Cm, ckpt, dout, dlast, du, ddelta, dz, dD_part, dbias_part, dA_part,
         dB_part, dC_part, has_bias, softplus, has_z, has_D, lanes):
    nb, d, length = u.shape
    ng, n = Bm.shape[1], Bm.shape[3]
    dg = d // ng
    nblk = (dg + lanes - 1) // lanes
    nck = (length + CHUNK - 1) // CHUNK
    for job in prange(nb * ng * nblk):
        bi, r = job // (ng * nblk), job % (ng * nblk)
        gi, blk = r // nblk, r % nblk
        c0 = gi * dg + blk * lanes
        w_ = min(lanes, gi * dg + dg - c0)
        Ab = At[:, c0:c0 + w_].copy()
        Dl = Dv[c0:c0 + w_].copy() if has_D else np.zeros(w_, u.dtype)
        bl = bias[c0:c0 + w_].copy() if has_bias else np.zeros(w_, u.dtype)
        dh = np.empty((n, w_), u.dtype)
        for s in range(n):
            for w in range(w_):
                dh[s, w] = dlast[bi, c0 + w, s]
        dA = np.zeros((n, w_), u.dtype)
        dDl = np.zeros(w_, u.dtype)
        dbl = np.zeros(w_, u.dtype)
        Hs = np.empty((CHUNK + 1, n, w_), u.dtype)  # h_{s-1} .. h_{e-1} of the chunk
        Es = np.empty((CHUNK, n, w_), u.dtype)  # its decays
        # time-major tiles of one chunk: inputs u, delta, z, dout; recomputed dt, softplus', y' = C.h + D u;
        # outputs du, ddelta, dz
        tiles = np.empty((10, CHUNK, w_), u.dtype)
        lane = np.empty((5, w_), u.dtype)  # per-lane values of one step
        dtu, gy, sg, acc_t, acc_u = lane[0], lane[1], lane[2], lane[3], lane[4]
        for k in range(nck - 1, -1, -1):
            t0 = k * CHUNK
            t1 = min(t0 + CHUNK, length)
            m = t1 - t0
            U, X, Z, G, DT, SP, Ys = (tiles[0, :m], tiles[1, :m], tiles[2, :m], tiles[3, :m], tiles[4, :m],
                                      tiles[5, :m], tiles[6, :m])
            dU, dX, dZ = tiles[7, :m], tiles[8, :m], tiles[9, :m]
            _load_tile(u, bi, c0, t0, U)
            _load_tile(delta, bi, c0, t0, X)
            _load_tile(dout, bi, c0, t0, G)
            if has_z:
                _load_tile(z, bi, c0, t0, Z)
            Hs[0] = ckpt[bi, k, :, c0:c0 + w_]
            for j in range(m):  # recompute the chunk's states
                t = t0 + j
                ut, dtt = U[j], DT[j]
                _dt_lanes(X[j], bl, has_bias, softplus, dtt, SP[j])
                for w in range(w_):
                    dtu[w] = dtt[w] * ut[w]
                for s in range(n):
                    bv = Bm[bi, gi, t, s]
                    for w in range(w_):
                        e = _exp(dtt[w] * Ab[s, w])
                        Es[j, s, w] = e
                        Hs[j + 1, s, w] = e * Hs[j, s, w] + dtu[w] * bv
                if has_z:
                    for w in range(w_):
                        acc_t[w] = Dl[w] * ut[w]
                    for s in range(n):
                        cv = Cm[bi, gi, t, s]
                        for w in range(w_):
                            acc_t[w] += Hs[j + 1, s, w] * cv
                    Ys[j] = acc_t
            for j in range(m - 1, -1, -1):  # reverse walk: dh_t = C_t dy_t + a_{t+1} dh_{t+1}
                t = t0 + j
                ut, dtt = U[j], DT[j]
                for w in range(w_):
                    gy[w] = G[j, w]
                if has_z:  # out = y' silu(z): dy' = dout silu(z), dz = dout y' silu'(z)
                    zt = Z[j]
                    for w in range(w_):
                        sg[w] = 1 / (1 + _exp(-zt[w]))
                    for w in range(w_):
                        dZ[j, w] = gy[w] * Ys[j, w] * sg[w] * (1 + zt[w] * (1 - sg[w]))
                        gy[w] *= zt[w] * sg[w]
                ea = Es[j]
                for w in range(w_):
                    dtu[w] = dtt[w] * ut[w]
                    acc_t[w] = 0.0
                    acc_u[w] = 0.0
                for s in range(n):
                    bv = Bm[bi, gi, t, s]
                    cv = Cm[bi, gi, t, s]
                    sb = _zero(u)
                    sc = _zero(u)
                    for w in range(w_):
                        dhv = dh[s, w] + gy[w] * cv
                        q = dhv * Hs[j, s, w] * ea[s, w]  # d loss / d (dt A)
                        acc_t[w] += q * Ab[s, w]
                        acc_u[w] += dhv * bv  # sum_s dh B: d loss / d (dt u)
                        dA[s, w] += q * dtt[w]
                        sb += dhv * dtu[w]
                        sc += gy[w] * Hs[j + 1, s, w]
                        dh[s, w] = dhv * ea[s, w]
                    dB_part[blk, bi, gi, t, s] = sb
                    dC_part[blk, bi, gi, t, s] = sc
                for w in range(w_):
                    g = acc_t[w] + acc_u[w] * ut[w]  # d loss / d dt
                    g = g * SP[j, w] if softplus else g  # through the softplus
                    dX[j, w] = g
                    dbl[w] += g
                    dU[j, w] = acc_u[w] * dtt[w] + Dl[w] * gy[w]
                    dDl[w] += gy[w] * ut[w]
            _store_tile(dU, du, bi, c0, t0)
            _store_tile(dX, ddelta, bi, c0, t0)
            if has_z:
                _store_tile(dZ, dz, bi, c0, t0)
        dA_part[bi, :, c0:c0 + w_] = dA
        dD_part[bi, c0:c0 + w_] = dDl
        dbias_part[bi, c0:c0 + w_] = dbl


# ---------------------------------------------------------------------------------------------
# the directional scan (see visionssm.ops.directional_scan): the same loops, one more level of
# indirection. A job owns a block of the output's channels and walks every direction in turn,
# reading u, delta, dy, B and C at the walk's positions and adding its outputs (y; du when u is
# shared) into the map's layout, so no walk is ever copied and no job writes another's channels.


@njit(inline="always")
def _gather(src, bi, c0, P, tile, m, w_):
    """tile[j, w] = src[bi, c0 + w, P[j]] for j < m: a chunk of a walk, each channel read along the walk."""
    for w in range(w_):
        for j in range(m):
            tile[j, w] = src[bi, c0 + w, P[j]]


@njit(inline="always")
def _scatter(tile, dst, bi, c0, P, m, w_, add):
    """dst[bi, c0 + w, P[j]] = (or +=) tile[j, w] for j < m."""
    for w in range(w_):
        if add:
            for j in range(m):
                dst[bi, c0 + w, P[j]] += tile[j, w]
        else:
            for j in range(m):
                dst[bi, c0 + w, P[j]] = tile[j, w]


@njit(parallel=True, cache=True, error_model="numpy")
def _dfwd(u, delta, bias, Dv, At, Bm, Cm, perm, y, last, ckpt, save, has_bias, softplus, has_D, lanes):
    nb, kd, length = delta.shape
    nk = perm.shape[0]
    d = kd // nk
    shared = u.shape[1] != kd
    ng, n = Bm.shape[1] // nk, Bm.shape[3]  # groups per direction
    dg = d // ng
    nblk = (dg + lanes - 1) // lanes
    zero = _zero(u)
    for job in prange(nb * ng * nblk):
        bi, r = job // (ng * nblk), job % (ng * nblk)
        gi = r // nblk
        c0 = gi * dg + (r % nblk) * lanes  # the job's first output channel
        w_ = min(lanes, gi * dg + dg - c0)
        h = np.empty((n, w_), u.dtype)
        # u, delta, y of one chunk of a walk, step-major; separate arrays (not views of one buffer)
        # and explicit loops keep the lane loops free of aliasing doubts, so they vectorise
        U = np.empty((CHUNK, w_), u.dtype)
        X = np.empty((CHUNK, w_), u.dtype)
        Y = np.empty((CHUNK, w_), u.dtype)
        dtt = np.empty(w_, u.dtype)
        dtu = np.empty(w_, u.dtype)
        for k in range(nk):
            ch = k * d + c0  # the direction's channels
            gk = k * ng + gi
            h[:] = 0
            Ab = At[:, ch:ch + w_].copy()
            Dl = Dv[ch:ch + w_].copy() if has_D else np.zeros(w_, u.dtype)
            bl = bias[ch:ch + w_].copy() if has_bias else np.zeros(w_, u.dtype)
            for t0 in range(0, length, CHUNK):
                t1 = min(t0 + CHUNK, length)
                m = t1 - t0
                if save:
                    for s in range(n):
                        for w in range(w_):
                            ckpt[bi, t0 // CHUNK, s, ch + w] = h[s, w]
                P = perm[k, t0:t1]
                _gather(u, bi, c0 if shared else ch, P, U, m, w_)
                _gather(delta, bi, ch, P, X, m, w_)
                for j in range(m):
                    p = P[j]
                    for w in range(w_):
                        v = X[j, w] + bl[w]
                        if softplus:  # max(v, 0) + log1p(exp(-|v|)): no overflow, no cancellation
                            v = max(v, zero) + _log1p01(_exp(-abs(v)))
                        dtt[w] = v
                        dtu[w] = v * U[j, w]
                        Y[j, w] = Dl[w] * U[j, w]
                    for s in range(n):
                        bv = Bm[bi, gk, p, s]
                        cv = Cm[bi, gk, p, s]
                        for w in range(w_):
                            hv = _exp(dtt[w] * Ab[s, w]) * h[s, w] + dtu[w] * bv
                            h[s, w] = hv
                            Y[j, w] += hv * cv
                _scatter(Y, y, bi, c0, P, m, w_, k > 0)
            for s in range(n):
                for w in range(w_):
                    last[bi, ch + w, s] = h[s, w]


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
def _dbwd(u, delta, bias, Dv, At, Bm, Cm, perm, ckpt, dy, dlast, du, ddelta, dD_part, dbias_part, dA_part,
          dB_part, dC_part, has_bias, softplus, has_D, lanes):
    nb, kd, length = delta.shape
    nk = perm.shape[0]
    d = kd // nk
    shared = u.shape[1] != kd
    ng, n = Bm.shape[1] // nk, Bm.shape[3]
    dg = d // ng
    nblk = (dg + lanes - 1) // lanes
    nck = (length + CHUNK - 1) // CHUNK
    zero, one = _zero(u), _one(u)
    for job in prange(nb * ng * nblk):
        bi, r = job // (ng * nblk), job % (ng * nblk)
        gi, blk = r // nblk, r % nblk
        c0 = gi * dg + blk * lanes
        w_ = min(lanes, gi * dg + dg - c0)
        dh = np.empty((n, w_), u.dtype)
        dA = np.empty((n, w_), u.dtype)
        Hs = np.empty((CHUNK + 1, n, w_), u.dtype)  # h_{s-1} .. h_{e-1} of the chunk
        Es = np.empty((CHUNK, n, w_), u.dtype)  # its decays
        # step-major tiles of one chunk of a walk: inputs u, delta, dy; recomputed dt, softplus';
        # outputs du, ddelta
        U = np.empty((CHUNK, w_), u.dtype)
        X = np.empty((CHUNK, w_), u.dtype)
        G = np.empty((CHUNK, w_), u.dtype)
        DT = np.empty((CHUNK, w_), u.dtype)
        SP = np.empty((CHUNK, w_), u.dtype)
        dU = np.empty((CHUNK, w_), u.dtype)
        dX = np.empty((CHUNK, w_), u.dtype)
        dtu = np.empty(w_, u.dtype)
        acc_t = np.empty(w_, u.dtype)
        acc_u = np.empty(w_, u.dtype)
        dDl = np.empty(w_, u.dtype)
        dbl = np.empty(w_, u.dtype)
        for k in range(nk):
            ch = k * d + c0
            uc = c0 if shared else ch
            gk = k * ng + gi
            Ab = At[:, ch:ch + w_].copy()
            Dl = Dv[ch:ch + w_].copy() if has_D else np.zeros(w_, u.dtype)
            bl = bias[ch:ch + w_].copy() if has_bias else np.zeros(w_, u.dtype)
            for s in range(n):
                for w in range(w_):
                    dh[s, w] = dlast[bi, ch + w, s]
            dA[:] = 0
            dDl[:] = 0
            dbl[:] = 0
            for kc in range(nck - 1, -1, -1):
                t0 = kc * CHUNK
                t1 = min(t0 + CHUNK, length)
                m = t1 - t0
                P = perm[k, t0:t1]
                _gather(u, bi, uc, P, U, m, w_)
                _gather(delta, bi, ch, P, X, m, w_)
                _gather(dy, bi, c0, P, G, m, w_)
                for s in range(n):
                    for w in range(w_):
                        Hs[0, s, w] = ckpt[bi, kc, s, ch + w]
                for j in range(m):  # recompute the chunk's states
                    p = P[j]
                    for w in range(w_):
                        v = X[j, w] + bl[w]
                        if softplus:
                            e = _exp(-abs(v))
                            SP[j, w] = (one if v >= 0 else e) / (one + e)  # softplus' = sigmoid
                            v = max(v, zero) + _log1p01(e)
                        DT[j, w] = v
                        dtu[w] = v * U[j, w]
                    for s in range(n):
                        bv = Bm[bi, gk, p, s]
                        for w in range(w_):
                            e = _exp(DT[j, w] * Ab[s, w])
                            Es[j, s, w] = e
                            Hs[j + 1, s, w] = e * Hs[j, s, w] + dtu[w] * bv
                for j in range(m - 1, -1, -1):  # reverse walk: dh_t = C_t dy_t + a_{t+1} dh_{t+1}
                    p = P[j]
                    for w in range(w_):
                        dtu[w] = DT[j, w] * U[j, w]
                        acc_t[w] = zero
                        acc_u[w] = zero
                    for s in range(n):
                        bv = Bm[bi, gk, p, s]
                        cv = Cm[bi, gk, p, s]
                        sb = zero
                        sc = zero
                        for w in range(w_):
                            dhv = dh[s, w] + G[j, w] * cv
                            q = dhv * Hs[j, s, w] * Es[j, s, w]  # d loss / d (dt A)
                            acc_t[w] += q * Ab[s, w]
                            acc_u[w] += dhv * bv  # sum_s dh B: d loss / d (dt u)
                            dA[s, w] += q * DT[j, w]
                            sb += dhv * dtu[w]
                            sc += G[j, w] * Hs[j + 1, s, w]
                            dh[s, w] = dhv * Es[j, s, w]
                        dB_part[blk, bi, gk, p, s] = sb
                        dC_part[blk, bi, gk, p, s] = sc
                    for w in range(w_):
                        g = acc_t[w] + acc_u[w] * U[j, w]  # d loss / d dt
                        if softplus:  # through the softplus
                            g *= SP[j, w]
                        dX[j, w] = g
                        dbl[w] += g
                        dU[j, w] = acc_u[w] * DT[j, w] + Dl[w] * G[j, w]
                        dDl[w] += G[j, w] * U[j, w]
                _scatter(dU, du, bi, uc, P, m, w_, shared and k > 0)
                _scatter(dX, ddelta, bi, ch, P, m, w_, False)
            for s in range(n):
                for w in range(w_):
                    dA_part[bi, s, ch + w] = dA[s, w]
            for w in range(w_):
                dD_part[bi, ch + w] = dDl[w]
                dbias_part[bi, ch + w] = dbl[w]


def _lanes(batch, dim_per_group, groups):
    """Channels per job: 64 lanes vectorise best, but keep at least two jobs per thread."""
    lanes = 64
    while lanes > 16 and batch * groups * -(-dim_per_group // lanes) < 2 * numba.get_num_threads():
        lanes //= 2
    return lanes


def checkpoint_shape(batch, dim, length, state):
    return (batch, -(-length // CHUNK), state, dim)


def _np(t: torch.Tensor | None, like: torch.Tensor) -> np.ndarray:
    """A contiguous numpy view; a one-element stand-in for an absent optional input."""
    if t is None:
        t = like.new_zeros((1,) * like.dim())
    return t.detach().contiguous().numpy()


def _bc(M: torch.Tensor) -> np.ndarray:
    """B or C (batch, groups, state, length) -> (batch, groups, length, state): a step's states contiguous."""
    return M.detach().transpose(2, 3).contiguous().numpy()


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints):
    b, d, length = u.shape
    n = A.shape[1]
    y = torch.empty_like(u)
    last = u.new_empty(b, d, n)
    ckpt = u.new_empty(checkpoint_shape(b, d, length, n) if save_checkpoints else (1, 1, 1, 1))
    _fwd(_np(u, u), _np(delta, u), _np(delta_bias, A[:, 0]), _np(z, u), _np(D, A[:, 0]), _np(A.t(), A), _bc(B),
         _bc(C), y.numpy(), last.numpy(), ckpt.numpy(), save_checkpoints, delta_bias is not None,
         delta_softplus, z is not None, D is not None, _lanes(b, d // B.shape[1], B.shape[1]))
    return y, last, ckpt if save_checkpoints else u.new_empty(0)


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout, dlast):
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    lanes = _lanes(b, d // g, g)
    nblk = -(-(d // g) // lanes)
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    dz = torch.empty_like(u) if z is not None else u.new_empty(1, 1, 1)
    dD_part, dbias_part, dA_part = u.new_empty(b, d), u.new_empty(b, d), u.new_empty(b, n, d)
    dB_part, dC_part = (u.new_empty(nblk, b, g, length, n) for _ in range(2))
    dlast = dlast if dlast is not None else u.new_zeros(b, d, n)
    _bwd(_np(u, u), _np(delta, u), _np(delta_bias, A[:, 0]), _np(z, u), _np(D, A[:, 0]), _np(A.t(), A), _bc(B),
         _bc(C), ckpt.numpy(), _np(dout, u), _np(dlast, u), du.numpy(), ddelta.numpy(), dz.numpy(),
         dD_part.numpy(), dbias_part.numpy(), dA_part.numpy(), dB_part.numpy(), dC_part.numpy(),
         delta_bias is not None, delta_softplus, z is not None, D is not None, lanes)
    return (du, ddelta, dA_part.sum(0).t().contiguous(), dB_part.sum(0).transpose(2, 3).contiguous(),
            dC_part.sum(0).transpose(2, 3).contiguous(), dD_part.sum(0) if D is not None else None,
            dz if z is not None else None, dbias_part.sum(0) if delta_bias is not None else None)


def directional_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, index_maps, save_checkpoints):
    b, kd, length = delta.shape
    nk, n = index_maps.shape[0], A.shape[1]
    d, g = kd // nk, B.shape[1] // nk
    y = u.new_empty(b, d, length)
    last = u.new_empty(b, kd, n)
    ckpt = u.new_empty(checkpoint_shape(b, kd, length, n) if save_checkpoints else (1, 1, 1, 1))
    _dfwd(_np(u, u), _np(delta, u), _np(delta_bias, A[:, 0]), _np(D, A[:, 0]), _np(A.t(), A), _bc(B), _bc(C),
          index_maps.contiguous().numpy(), y.numpy(), last.numpy(), ckpt.numpy(), save_checkpoints,
          delta_bias is not None, delta_softplus, D is not None, _lanes(b, d // g, g))
    return y, last, ckpt if save_checkpoints else u.new_empty(0)


def directional_backward(u, delta, A, B, C, D, delta_bias, delta_softplus, index_maps, ckpt, dy, dlast):
    b, kd, length = delta.shape
    nk, n, kg = index_maps.shape[0], A.shape[1], B.shape[1]
    d, g = kd // nk, kg // nk
    lanes = _lanes(b, d // g, g)
    nblk = -(-(d // g) // lanes)
    du, ddelta = u.new_empty(u.shape), u.new_empty(delta.shape)  # contiguous, whatever u's strides
    dD_part, dbias_part, dA_part = u.new_empty(b, kd), u.new_empty(b, kd), u.new_empty(b, n, kd)
    dB_part, dC_part = (u.new_empty(nblk, b, kg, length, n) for _ in range(2))
    dlast = dlast if dlast is not None else u.new_zeros(b, kd, n)
    _dbwd(_np(u, u), _np(delta, u), _np(delta_bias, A[:, 0]), _np(D, A[:, 0]), _np(A.t(), A), _bc(B), _bc(C),
          index_maps.contiguous().numpy(), ckpt.numpy(), _np(dy, u), _np(dlast, u), du.numpy(), ddelta.numpy(),
          dD_part.numpy(), dbias_part.numpy(), dA_part.numpy(), dB_part.numpy(), dC_part.numpy(),
          delta_bias is not None, delta_softplus, D is not None, lanes)
    return (du, ddelta, dA_part.sum(0).t().contiguous(), dB_part.sum(0).transpose(2, 3).contiguous(),
            dC_part.sum(0).transpose(2, 3).contiguous(), dD_part.sum(0) if D is not None else None,
            dbias_part.sum(0) if delta_bias is not None else None)
