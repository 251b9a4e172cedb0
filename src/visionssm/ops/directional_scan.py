"""The selective scan along several directions of one map, read and written through index maps.

Vim's bidirectional mixer and VMamba's cross-scan run the same scan along K walks of one
sequence or map. Instead of materialising each walk as a flipped or transposed copy, scanning
the copies and merging the outputs back, :func:`directional_scan` takes every tensor in the
map's own layout plus the walks as index maps, and its backends read the inputs and accumulate
the output through them:

* ``index_maps`` (K, L), integer: step t of direction k is at position ``index_maps[k, t]`` of the
  map (a row-major pixel, a token); each row is a permutation of ``0 .. L-1``. The walks
  themselves are defined in ``visionssm.layers.scan_orders`` (``scan_index_maps``).
* Direction k owns channels ``[k*d, (k+1)*d)`` of delta, A, D and delta_bias and groups
  ``[k*G, (k+1)*G)`` of B and C.
* y (batch, d, L) = silu(z) * sum_k put_k(scan_k), where scan_k is the selective scan of
  direction k's inputs taken along its walk and put_k puts step t back at position
  ``index_maps[k, t]``. That is exactly ``cross_merge(selective_scan(cross_scan(...)))``.

Every backend but "reference" runs it as the custom op ``visionssm::directional_scan`` with a
hand-written backward op, like ``visionssm::selective_scan`` (one node for torch.compile and
torch.export, FLOPs counted by FlopCounterMode, an ONNX translation in ``scan_onnx``). A backend
module may provide ``directional_forward(u, delta, A, B, C, D, delta_bias, delta_softplus,
index_maps, save_checkpoints)`` -> ``(y, last_state, checkpoints)`` and ``directional_backward(u,
delta, A, B, C, D, delta_bias, delta_softplus, index_maps, checkpoints, dy, dlast)`` -> ``(du,
ddelta, dA, dB, dC, dD, ddelta_bias)``, with y and dy the ungated sum (batch, d, L) and B, C
grouped (batch, K*G, state, L); one that does not runs its plain scan on gathered copies
(``_composed_forward`` / ``_composed_backward``). The silu(z) gate is applied here, on the
summed output, for every backend.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.utils.flop_counter import register_flop_formula

from visionssm.ops.scan_reference import selective_scan_reference
from visionssm.ops.selective_scan import (
    _backend_module,
    _cast,
    _need_tensor,
    _operands,
    _resolve_cached,
    _ungrouped,
    _wide,
    autocast_off,
    check_inputs,
    scan_macs,
)

_INDEX_DTYPES = (torch.int64, torch.int32)


# ---------------------------------------------------------------------------------------------
# input checks


def check_directional_inputs(u, delta, A, B, C, index_maps, D, z, delta_bias):
    """Shapes as in the module doc; each row of index_maps a permutation of 0 .. L-1."""
    _need_tensor("u", u, (3,))
    _need_tensor("delta", delta, (3,))
    if not isinstance(index_maps, torch.Tensor):
        raise ValueError(f"index_maps: expected a torch.Tensor, got {type(index_maps).__name__}")
    if index_maps.dtype not in _INDEX_DTYPES or index_maps.dim() != 2 or index_maps.shape[0] < 1:
        raise ValueError(f"index_maps: expected a (directions, length) tensor of {_INDEX_DTYPES}, got "
                         f"{index_maps.dtype} of shape {tuple(index_maps.shape)}")
    K, L = index_maps.shape
    batch, kd, length = delta.shape
    if L != length:
        raise ValueError(f"index_maps: expected shape ({K}, {length}) (delta's length), got {tuple(index_maps.shape)}")
    if kd % K:
        raise ValueError(f"delta: expected shape (batch, directions * d, length) with {K} directions "
                         f"(index_maps), got {tuple(delta.shape)}")
    d = kd // K
    if u.shape not in ((batch, d, length), (batch, kd, length)):
        raise ValueError(f"u: expected shape {(batch, d, length)} (shared by the {K} directions) or "
                         f"{(batch, kd, length)} (one part per direction), got {tuple(u.shape)}")
    check_inputs(delta, delta, A, B, C, D, None, delta_bias, u_name="delta")
    groups = 1 if B.dim() == 3 else B.shape[1]
    if groups % K:
        raise ValueError(f"B: expected (batch, directions * groups, state, length) with {K} directions, "
                         f"got {tuple(B.shape)}")
    _need_tensor("z", z, (3,), optional=True)
    if z is not None and z.shape != (batch, d, length):
        raise ValueError(f"z: expected shape {(batch, d, length)} (the merged output's), got {tuple(z.shape)}")
    devices = {name: t.device for name, t in (("u", u), ("delta", delta), ("z", z), ("index_maps", index_maps))
               if t is not None}
    if len(set(devices.values()) | {A.device}) > 1:
        raise ValueError(f"all tensors must be on one device, got {', '.join(f'{k}: {v}' for k, v in devices.items())}"
                         f", A: {A.device}")
    if (not torch.compiler.is_compiling() and index_maps.device.type != "meta"
            and not isinstance(index_maps, FakeTensor) and not _checked_before(index_maps)):
        # a walk must visit every position once (L writes that cover L positions); a position out
        # of range would also be read out of bounds by the fused kernels. Real maps are checked
        # for real under a FakeTensorMode too (FLOP counting), where their values are known. The
        # check reads the maps on the CPU (a GPU sync), so a maps tensor is checked once while it
        # is unchanged: the layers pass the cached maps of scan_index_maps on every call.
        with unset_fake_temporarily():
            seen = torch.zeros(K, L, dtype=torch.bool)
            try:
                seen.scatter_(1, index_maps.long().cpu(), True)
            except (RuntimeError, IndexError) as e:
                raise ValueError(f"index_maps: expected positions in [0, {L}), got {e}") from None
            if not seen.all():
                raise ValueError("index_maps: expected each row to be a permutation of 0 .. length-1 (every "
                                 "position visited once), got a row that repeats a position")
            _remember_checked(index_maps)


# id -> (a weak reference to a maps tensor that passed the check, its version counter then)
_checked: dict[int, tuple[weakref.ref, int]] = {}


def _remember_checked(maps: torch.Tensor) -> None:
    key = id(maps)
    _checked[key] = (weakref.ref(maps, lambda _: _checked.pop(key, None)), maps._version)


def _checked_before(maps: torch.Tensor) -> bool:
    entry = _checked.get(id(maps))
    return entry is not None and entry[0]() is maps and entry[1] == maps._version


# ---------------------------------------------------------------------------------------------
# the walks as copies: the reference, and the fallback of a backend without a directional kernel


def _take(x: torch.Tensor, maps: torch.Tensor, d: int) -> torch.Tensor:
    """x (b, K*d or d, L) or (b, K*G, n, L) in scan order: direction k's part gathered along its walk."""
    K = maps.shape[0]
    if x.dim() == 3 and x.shape[1] != K * d:  # shared by the directions
        return torch.cat([x.index_select(2, m) for m in maps], dim=1)
    return torch.cat([part.index_select(-1, m) for part, m in zip(x.chunk(K, dim=1), maps)], dim=1)


def _put(ys: torch.Tensor, maps: torch.Tensor, d: int, channels: int) -> torch.Tensor:
    """The scan-order output ys (b, K*d, L) back on the map: (b, channels, L), summed over the
    directions when channels == d, one part per direction when channels == K*d."""
    K, L = maps.shape
    inverse = torch.empty_like(maps).scatter_(1, maps, torch.arange(L, device=maps.device).expand(K, L))
    parts = [y.index_select(2, inv) for y, inv in zip(ys.chunk(K, dim=1), inverse)]
    return torch.cat(parts, dim=1) if channels == K * d and K > 1 else sum(parts[1:], parts[0])


def directional_scan_reference(u, delta, A, B, C, index_maps, D=None, z=None, delta_bias=None,
                               delta_softplus=False, return_last_state=False):
    """The specification: gather every direction's walk, run :func:`selective_scan_reference`,
    put the outputs back and sum them, gate with silu(z)."""
    maps = index_maps.long()
    d = delta.shape[1] // maps.shape[0]
    B, C = (M if M.dim() == 4 else M.unsqueeze(1) for M in (B, C))
    ys, last = selective_scan_reference(_take(u, maps, d), _take(delta, maps, d), A, _take(B, maps, d),
                                        _take(C, maps, d), D, None, delta_bias, delta_softplus, True)
    y = _put(ys, maps, d, d)
    if z is not None:
        y = (y * F.silu(z.to(y.dtype))).to(u.dtype)
    return (y, last) if return_last_state else y


def _composed_forward(mod, u, delta, A, B, C, D, delta_bias, delta_softplus, maps, save_checkpoints):
    d = delta.shape[1] // maps.shape[0]
    ys, last, ckpt = mod.forward(_take(u, maps, d), _take(delta, maps, d), A, _take(B, maps, d), _take(C, maps, d),
                                 D, None, delta_bias, delta_softplus, save_checkpoints)
    return _put(ys, maps, d, d), last, ckpt


def _composed_backward(mod, u, delta, A, B, C, D, delta_bias, delta_softplus, maps, ckpt, dy, dlast):
    d = delta.shape[1] // maps.shape[0]
    du, ddelta, dA, dB, dC, dD, _, ddelta_bias = mod.backward(
        _take(u, maps, d), _take(delta, maps, d), A, _take(B, maps, d), _take(C, maps, d), D, None, delta_bias,
        delta_softplus, ckpt, _take(dy, maps, d), dlast)
    return (_put(du, maps, d, u.shape[1]), _put(ddelta, maps, d, delta.shape[1]), dA,
            _put_groups(dB, maps), _put_groups(dC, maps), dD, ddelta_bias)


def _put_groups(dM: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    b, g, n, L = dM.shape
    return _put(dM.reshape(b, g * n, L), maps, g * n // maps.shape[0], g * n).view(b, g, n, L)


# ---------------------------------------------------------------------------------------------
# the custom op


def _run_forward(backend, u, delta, A, B, C, D, delta_bias, delta_softplus, maps, save):
    mod = _backend_module(backend)
    if hasattr(mod, "directional_forward"):
        return mod.directional_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, maps, save)
    return _composed_forward(mod, u, delta, A, B, C, D, delta_bias, delta_softplus, maps, save)


def _run_backward(backend, u, delta, A, B, C, D, delta_bias, delta_softplus, maps, ckpt, dy, dlast):
    mod = _backend_module(backend)
    if hasattr(mod, "directional_backward"):
        return mod.directional_backward(u, delta, A, B, C, D, delta_bias, delta_softplus, maps, ckpt, dy, dlast)
    return _composed_backward(mod, u, delta, A, B, C, D, delta_bias, delta_softplus, maps, ckpt, dy, dlast)


@torch.library.custom_op("visionssm::directional_scan", mutates_args=())
@autocast_off
def _directional_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    index_maps: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                    delta_bias: torch.Tensor | None, delta_softplus: bool, backend: str, save_checkpoints: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, last_state, checkpoints, the ungated sum when z is given and gradients are wanted)."""
    w = _wide(u)
    y, last, ckpt = _run_forward(backend, *_operands(backend, w, u, delta, A, B, C), _cast(D, w),
                                 _cast(delta_bias, w), delta_softplus, index_maps.long(), save_checkpoints)
    if z is None:
        return y.to(u.dtype), last, ckpt, u.new_empty(0)
    if save_checkpoints:  # the backward needs the ungated sum
        return (y * F.silu(z.to(w))).to(u.dtype), last, ckpt, y
    _gate_in_place(y, z)
    return y.to(u.dtype), last, ckpt, u.new_empty(0)


def _gate_in_place(y: torch.Tensor, z: torch.Tensor, block: int | None = None) -> None:
    """y *= silu(z) (y and z (batch, d, L)), ``block`` elements at a time (None: on a CPU 2**18, a few
    rows, so no temporary of y's size; elsewhere all at once: on a GPU the blocks were 37 launches a
    layer at Vim-T's batch 128, where the host, not the device, set the pace)."""
    if block is None:
        block = 1 << 18 if y.device.type == "cpu" else y.numel()
    rows_y, rows_z = y.view(-1, y.shape[-1]), z.reshape(-1, z.shape[-1])
    step = max(1, block // y.shape[-1])
    for i in range(0, rows_y.shape[0], step):
        rows_y[i:i + step].mul_(F.silu(rows_z[i:i + step].to(y.dtype)))


def _out_shape(u, delta, index_maps):
    return (u.shape[0], delta.shape[1] // index_maps.shape[0], u.shape[2])


@_directional_op.register_fake
def _(u, delta, A, B, C, index_maps, D, z, delta_bias, delta_softplus, backend, save_checkpoints):
    batch, kd, length = delta.shape
    state = A.shape[1]
    ck = _backend_module(backend).checkpoint_shape(batch, kd, length, state) if save_checkpoints else (0,)
    w = _wide(u)
    return (u.new_empty(_out_shape(u, delta, index_maps)), u.new_empty(batch, kd, state, dtype=w),
            u.new_empty(ck, dtype=w),
            u.new_empty(_out_shape(u, delta, index_maps) if z is not None and save_checkpoints else (0,), dtype=w))


@torch.library.custom_op("visionssm::directional_scan_backward", mutates_args=())
@autocast_off
def _directional_backward_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                             C: torch.Tensor, index_maps: torch.Tensor, D: torch.Tensor | None,
                             z: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
                             backend: str, checkpoints: torch.Tensor, y_sum: torch.Tensor, dout: torch.Tensor,
                             dlast: torch.Tensor | None) -> list[torch.Tensor]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias); an empty tensor where an input is None."""
    w = _wide(u)
    dout = dout.to(w)
    dz = None
    if z is not None:  # out = y_sum silu(z)
        zw = z.to(w)
        sz = torch.sigmoid(zw)
        dz = dout * y_sum * sz * (1 + zw * (1 - sz))
        dout = dout * zw * sz
    du, ddelta, dA, dB, dC, dD, ddelta_bias = _run_backward(
        backend, *_operands(backend, w, u, delta, A, B, C), _cast(D, w), _cast(delta_bias, w), delta_softplus,
        index_maps.long(), checkpoints, dout, _cast(dlast, w))
    return [du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), _ungrouped(dB, B), _ungrouped(dC, C),
            u.new_empty(0) if D is None else dD.to(D.dtype), u.new_empty(0) if z is None else dz.to(z.dtype),
            u.new_empty(0) if delta_bias is None else ddelta_bias.to(delta_bias.dtype)]


@_directional_backward_op.register_fake
def _(u, delta, A, B, C, index_maps, D, z, delta_bias, delta_softplus, backend, checkpoints, y_sum, dout, dlast):
    return [torch.empty_like(t) if t is not None else u.new_empty(0)
            for t in (u, delta, A, B, C, D, z, delta_bias)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, index_maps, D, z, delta_bias, delta_softplus, backend, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, index_maps, D, z, delta_bias, output[2], output[3])
    ctx.delta_softplus, ctx.backend = delta_softplus, backend


def _backward(ctx, dout, dlast, _dckpt, _dysum):
    u, delta, A, B, C, index_maps, D, z, delta_bias, ckpt, y_sum = ctx.saved_tensors
    batch, kd, length = delta.shape
    if tuple(ckpt.shape) != tuple(_backend_module(ctx.backend).checkpoint_shape(batch, kd, length, A.shape[1])):
        raise RuntimeError("directional_scan: backward called on a forward run without gradients enabled")
    if dout is None:
        dout = u.new_zeros(_out_shape(u, delta, index_maps))
    grads = _directional_backward_op(u, delta, A, B, C, index_maps, D, z, delta_bias, ctx.delta_softplus,
                                     ctx.backend, ckpt, y_sum, dout, dlast)
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = (
        g if t is not None else None for g, t in zip(grads, (u, delta, A, B, C, D, z, delta_bias)))
    return du, ddelta, dA, dB, dC, None, dD, dz, ddelta_bias, None, None, None


_directional_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.visionssm.directional_scan)
def _directional_flops(u_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    batch, kd, length = delta_shape  # K scans of d channels: K*d channels
    return 2 * scan_macs(batch, kd, length, A_shape[1])


@register_flop_formula(torch.ops.visionssm.directional_scan_backward)
def _directional_backward_flops(u_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    batch, kd, length = delta_shape
    return 4 * scan_macs(batch, kd, length, A_shape[1])


# ---------------------------------------------------------------------------------------------


def directional_scan(u, delta, A, B, C, index_maps, D=None, z=None, delta_bias=None, delta_softplus=False,
                     return_last_state=False, backend="auto"):
    """The selective scan along K walks of one map, summed back on the map (see the module doc).

    Shapes: index_maps (K, L) int64 or int32, each row a permutation of 0 .. L-1; u (batch, d, L)
    shared by the directions or (batch, K*d, L) one part per direction; delta (batch, K*d, L);
    A (K*d, state); B, C (batch, K*G, state, L) (a 3-D B, C is one group, for K = 1); D and
    delta_bias (K*d,); z (batch, d, L) gates the summed output. Returns y (batch, d, L) in u's
    dtype (and the last states (batch, K*d, state), float32 or float64, with ``return_last_state``).

    backend: as for :func:`visionssm.selective_scan`.
    """
    check_directional_inputs(u, delta, A, B, C, index_maps, D, z, delta_bias)
    name = _resolve_cached(backend, u.device.type)
    if name == "reference":
        y, last = directional_scan_reference(u, delta, A, B, C, index_maps, D, z, delta_bias, delta_softplus, True)
    else:
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
        y, last, _, _ = _directional_op(u, delta, A, B, C, index_maps, D, z, delta_bias, bool(delta_softplus),
                                        name, needs_grad)
    return (y, last) if return_last_state else y
