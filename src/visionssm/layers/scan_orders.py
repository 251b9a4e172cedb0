"""2-D scan orders: a feature map (B, C, H, W) as K sequences (B, K, C, H*W), and back.

A *direction* is one way to walk the H x W grid; a *scan order* is a tuple of directions, one
per sequence. SS2D, Vim-style and ablation models differ only in the order they pass here:

=================  ====================================================  ==
order              directions                                            K
=================  ====================================================  ==
``"cross"``        row, col, row_rev, col_rev (VMamba, official order)   4
``"bidirectional"``  row, row_rev (Vim)                                  2
``"unidirectional"`` row                                                 1
``"snake"``        snake_row, snake_col, snake_row_rev, snake_col_rev    4
=================  ====================================================  ==

Any single direction name is an order of one, and any tuple of direction names is an order (the
official ``v052d`` ablation, for example, is ``("row", "row", "row_rev", "row_rev")``).

Directions, for a grid with rows ``r`` and columns ``c``:

* ``row``: row-major, (0,0), (0,1), ... (0,W-1), (1,0), ... — ``x.flatten(2)``.
* ``col``: column-major, (0,0), (1,0), ... (H-1,0), (0,1), ... — the transposed map flattened.
* ``snake_row`` / ``snake_col``: boustrophedon ("zigzag"): like ``row`` / ``col``, but every
  second line runs backwards, so consecutive tokens are always spatial neighbours.
* ``*_rev``: the same walk backwards (the last token first).

``cross_merge`` is the adjoint of ``cross_scan``: it sums, for every pixel, the K outputs that
were computed at that pixel's position in each sequence, i.e.
``<cross_scan(x), y> == <x, cross_merge(y)>``. That makes each one the other's backward.

Memory: ``cross_scan`` allocates exactly its (B, K, C, L) output and writes each direction into
it straight from views of the input (copy, transpose, ``flip`` with ``out=``); ``cross_merge``
allocates exactly its (B, C, H, W) output and accumulates into it in place (``add_`` on views,
``index_add_`` with a cached permutation for the reversed and snake directions). Neither makes a
temporary copy of the map.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

__all__ = ["DIRECTIONS", "SCAN_ORDERS", "cross_merge", "cross_scan", "resolve_scan_order",
           "scan_index_maps", "scan_permutation"]


class Direction(NamedTuple):
    transpose: bool  # walk the transposed (W, H) grid, i.e. column-major
    reverse: bool  # walk the sequence backwards
    snake: bool  # every second line runs backwards


DIRECTIONS: dict[str, Direction] = {
    "row": Direction(False, False, False),
    "col": Direction(True, False, False),
    "row_rev": Direction(False, True, False),
    "col_rev": Direction(True, True, False),
    "snake_row": Direction(False, False, True),
    "snake_col": Direction(True, False, True),
    "snake_row_rev": Direction(False, True, True),
    "snake_col_rev": Direction(True, True, True),
}

SCAN_ORDERS: dict[str, tuple[str, ...]] = {
    "cross": ("row", "col", "row_rev", "col_rev"),
    "bidirectional": ("row", "row_rev"),
    "unidirectional": ("row",),
    "snake": ("snake_row", "snake_col", "snake_row_rev", "snake_col_rev"),
    **{name: (name,) for name in DIRECTIONS},
}


def resolve_scan_order(order: str | Sequence[str]) -> tuple[str, ...]:
    """The tuple of direction names of ``order`` (a name from SCAN_ORDERS or a sequence of directions)."""
    if isinstance(order, str):
        if order not in SCAN_ORDERS:
            raise ValueError(f"scan_order: expected one of {sorted(SCAN_ORDERS)} or a sequence of "
                             f"directions from {list(DIRECTIONS)}, got {order!r}")
        return SCAN_ORDERS[order]
    dirs = tuple(order)
    bad = [d for d in dirs if d not in DIRECTIONS]
    if not dirs or bad:
        raise ValueError(f"scan_order: expected a non-empty sequence of directions from {list(DIRECTIONS)}, "
                         f"got {order!r}")
    return dirs


@functools.lru_cache(maxsize=256)
def _permutation_cpu(H: int, W: int, name: str) -> torch.Tensor:
    # a normal, real tensor even when first asked for under inference_mode or a FakeTensorMode
    # (FLOP counting): it is cached and reused
    with torch.inference_mode(False), unset_fake_temporarily():
        return _build_permutation(H, W, DIRECTIONS[name])


def _build_permutation(H: int, W: int, d: Direction) -> torch.Tensor:
    grid = torch.arange(H * W).view(H, W)
    if d.transpose:
        grid = grid.t()
    if d.snake:
        grid = grid.clone()
        grid[1::2] = grid[1::2].flip(-1)
    seq = grid.reshape(-1)
    return seq.flip(0) if d.reverse else seq


@functools.lru_cache(maxsize=256)
def _permutation_on(H: int, W: int, name: str, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), unset_fake_temporarily():
        return _permutation_cpu(H, W, name).to(device)


def _perm(H: int, W: int, name: str, device: torch.device) -> torch.Tensor:
    # cached per (H, W, direction, device): the model calls this once per block and step
    if device.type == "cpu":
        return _permutation_cpu(H, W, name)
    return _permutation_on(H, W, name, device)


def scan_permutation(H: int, W: int, direction: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """perm (H*W,) int64: step t of ``direction`` visits pixel ``perm[t]`` of the row-major grid."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {list(DIRECTIONS)}, got {direction!r}")
    return _perm(int(H), int(W), direction, torch.device(device))


@functools.lru_cache(maxsize=256)
def _index_maps_on(H: int, W: int, dirs: tuple[str, ...], device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), unset_fake_temporarily():
        return torch.stack([_permutation_cpu(H, W, name) for name in dirs]).to(device)


def scan_index_maps(H: int, W: int, order: str | Sequence[str] = "cross",
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(K, H*W) int64: row k is :func:`scan_permutation` of direction ``order[k]``, the walks as
    ``visionssm.ops.directional_scan`` reads them (cached per grid, order and device)."""
    dirs = resolve_scan_order(order)
    if torch.compiler.is_compiling():  # built in the graph (symbolic sizes; no cache to trace through)
        return torch.stack([_build_permutation(H, W, DIRECTIONS[n]) for n in dirs]).to(device)
    return _index_maps_on(int(H), int(W), dirs, torch.device(device))


# ---------------------------------------------------------------------------------------------
# the two kernels, without autograd


def _write_direction(dst: torch.Tensor, src: torch.Tensor, d: Direction) -> None:
    """dst, src: (B, C, H', W') views (src already transposed for column-major); dst <- walk(src)."""
    flip = torch.ops.aten.flip.out
    if not d.snake:
        if d.reverse:
            flip(src, [-2, -1], out=dst)
        else:
            dst.copy_(src)
        return
    if not d.reverse:
        dst[:, :, 0::2].copy_(src[:, :, 0::2])
        flip(src[:, :, 1::2], [-1], out=dst[:, :, 1::2])
        return
    # reversed snake = the snake grid S flipped in both axes. Row i of the result is row
    # H'-1-i of S reversed; it is a forward row of src when H'-1-i is odd, a backward one when even.
    p = (src.shape[2] - 1) % 2
    flip(src[:, :, 0::2], [-2, -1], out=dst[:, :, p::2])
    flip(src[:, :, 1::2], [-2], out=dst[:, :, 1 - p::2])


def _scan_into(x: torch.Tensor, out: torch.Tensor, dirs: tuple[str, ...]) -> torch.Tensor:
    B, C, H, W = x.shape
    for k, name in enumerate(dirs):
        d = DIRECTIONS[name]
        src = x.transpose(2, 3) if d.transpose else x
        _write_direction(out[:, k].view(B, C, *src.shape[2:]), src, d)
    return out


def _merge_into(y: torch.Tensor, out: torch.Tensor, dirs: tuple[str, ...]) -> torch.Tensor:
    """out (B, C, H, W) contiguous <- sum over k of the inverse walk of y[:, k]."""
    B, C, H, W = out.shape
    flat = out.view(B, C, H * W)
    first = True
    for k, name in enumerate(dirs):
        d = DIRECTIONS[name]
        yk = y[:, k]
        if d.reverse or d.snake:
            if first:
                out.zero_()
            flat.index_add_(2, _perm(H, W, name, out.device), yk)
        else:
            dst = out.transpose(2, 3) if d.transpose else out
            src = yk.view(B, C, *dst.shape[2:])
            dst.copy_(src) if first else dst.add_(src)
        first = False
    return out


def _check_map(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a (batch, channels, height, width) tensor, got {got}")


# ---------------------------------------------------------------------------------------------
# autograd: each one's backward is the other one


class _CrossScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dirs: tuple[str, ...]) -> torch.Tensor:
        B, C, H, W = x.shape
        ctx.dirs, ctx.hw = dirs, (H, W)
        return _scan_into(x, x.new_empty(B, len(dirs), C, H * W), dirs)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        B, K, C, _ = dy.shape
        H, W = ctx.hw
        return _merge_into(dy, dy.new_empty(B, C, H, W), ctx.dirs), None


class _CrossMerge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, H: int, W: int, dirs: tuple[str, ...]) -> torch.Tensor:
        B, K, C, _ = y.shape
        ctx.dirs = dirs
        return _merge_into(y, y.new_empty(B, C, H, W), dirs)

    @staticmethod
    def backward(ctx, dx: torch.Tensor):
        B, C, H, W = dx.shape
        return _scan_into(dx, dx.new_empty(B, len(ctx.dirs), C, H * W), ctx.dirs), None, None, None


def _cross_scan_functional(x: torch.Tensor, dirs: tuple[str, ...]) -> torch.Tensor:
    # for torch.compile / export: one gather, differentiable by autograd itself (no lru_cache,
    # which dynamo would trace through)
    B, C, H, W = x.shape
    idx = torch.cat([_build_permutation(H, W, DIRECTIONS[n]) for n in dirs]).to(x.device)
    xs = x.reshape(B, C, H * W).index_select(2, idx).view(B, C, len(dirs), H * W)
    return xs.transpose(1, 2).contiguous()


def _cross_merge_functional(y: torch.Tensor, H: int, W: int, dirs: tuple[str, ...]) -> torch.Tensor:
    # out[p] = sum_k y[k, inverse_perm_k[p]]: a gather and a sum, not an index_add, whose duplicate
    # indices export as ONNX ScatterND(add), which onnxruntime's CPU kernel sums with a race
    B, K, C, L = y.shape
    inv = []
    for k, name in enumerate(dirs):
        perm = _build_permutation(H, W, DIRECTIONS[name])
        inv.append(torch.empty_like(perm).scatter_(0, perm, torch.arange(L)) + k * L)
    idx = torch.cat(inv).to(y.device)
    return y.transpose(1, 2).reshape(B, C, K * L).index_select(2, idx).view(B, C, K, L).sum(2).view(B, C, H, W)


def cross_scan(x: torch.Tensor, order: str | Sequence[str] = "cross") -> torch.Tensor:
    """(B, C, H, W) -> (B, K, C, H*W): sequence k walks the map in direction ``order[k]``.

    ``x`` may have any strides (a permuted channels-last map is read in place). Differentiable;
    the backward is :func:`cross_merge`.
    """
    _check_map(x, "x")
    dirs = resolve_scan_order(order)
    if torch.compiler.is_compiling():
        return _cross_scan_functional(x, dirs)
    return _CrossScan.apply(x, dirs)


def cross_merge(y: torch.Tensor, H: int, W: int, order: str | Sequence[str] = "cross") -> torch.Tensor:
    """(B, K, C, H*W) -> (B, C, H, W): the sum over k of sequence k put back on the grid.

    The adjoint of :func:`cross_scan` (and its backward). Returns a contiguous tensor.
    """
    dirs = resolve_scan_order(order)
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != len(dirs) or y.shape[3] != H * W:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y: expected shape (batch, {len(dirs)}, channels, {H * W}) for order {dirs} "
                         f"and H={H}, W={W}, got {got}")
    if torch.compiler.is_compiling():
        return _cross_merge_functional(y, H, W, dirs)
    return _CrossMerge.apply(y, int(H), int(W), dirs)
