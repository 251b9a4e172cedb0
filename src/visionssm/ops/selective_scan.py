"""The public selective scan: input checks, backend choice, and one opaque ``torch.library`` op.

``selective_scan`` has the argument order and shapes of ``mamba_ssm.selective_scan_fn``. Every
backend but ``"reference"`` runs as the custom op ``visionssm::selective_scan`` with a hand-written
backward op, so that

* autograd saves only the inputs and the states at chunk boundaries (the backward recomputes the
  rest, as the papers' hardware-aware scan does), never a (batch, dim, length, state) tensor;
* ``FlopCounterMode`` counts it with the papers' formula (``register_flop_formula``);
* ``torch.compile`` and ``torch.export`` see one node instead of unrolling a loop over time.

A backend module provides ``checkpoint_shape(batch, dim, length, state)``,
``forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints)`` returning
``(y, last_state, checkpoints)`` and
``backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints, dout, dlast)``
returning ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)`` (None for an absent input), all in
float32 (float64 for float64 inputs) with B and C grouped (batch, groups, state, length). A module
with ``READS_HALF = True`` is handed float16 and bfloat16 operands (u, delta, B, C, z, dout) as
they are, A, D and delta_bias in float32, and returns y, du, ddelta and dz in their inputs' dtypes.
``visionssm.ops.scan_torch.delta_to_dt`` / ``dt_grad_to_delta`` do the softplus in PyTorch for a
backend that does not fuse it.
"""

from __future__ import annotations

import functools
import importlib

import torch
from torch.utils.flop_counter import register_flop_formula

from visionssm.ops.scan_reference import selective_scan_reference

BACKENDS = ("auto", "reference", "cpu", "torch", "triton")
_MODULES = {"cpu": "visionssm.ops.scan_cpu", "torch": "visionssm.ops.scan_torch",
            "triton": "visionssm.ops.scan_triton"}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _backend_module(name: str):
    return importlib.import_module(_MODULES[name])


def backend_unavailable_reason(name: str, device: torch.device) -> str | None:
    """None if ``name`` can run on ``device``, else why not."""
    if name in ("reference", "torch"):
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend runs on CPU tensors, got {device.type} tensors"
        try:
            _backend_module("cpu")
        except ImportError as e:  # numba missing or broken
            return f"the 'cpu' backend needs numba ({e})"
        return None
    if name == "triton":
        try:
            mod = _backend_module("triton")
        except ImportError as e:
            return f"the 'triton' backend needs triton ({e})"
        return mod.unavailable_reason(device)
    return f"unknown backend {name!r}"


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, in the order ``"auto"`` prefers them."""
    device = torch.device(device)
    order = ["triton", "cpu", "torch", "reference"] if device.type == "cuda" else ["cpu", "torch", "reference"]
    if device.type not in ("cpu", "cuda"):
        order = ["torch", "reference"]
    return [b for b in order if backend_unavailable_reason(b, device) is None]


_RESOLVED: dict[tuple[str, str], str] = {}


@torch.compiler.assume_constant_result  # torch.compile takes the answer as a constant
def _resolve_cached(backend: str, device_type: str) -> str:
    key = (backend, device_type)
    if key not in _RESOLVED:
        _RESOLVED[key] = resolve_backend(backend, torch.device(device_type))
    return _RESOLVED[key]


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return available_backends(device)[0]
    reason = backend_unavailable_reason(backend, device)
    if reason is not None:
        raise ValueError(f"backend: {backend!r} is not available ({reason}); "
                         f"available on {device.type}: {available_backends(device)}")
    return backend


# ---------------------------------------------------------------------------------------------
# input checks


def _need_tensor(name, t, ndim, optional=False):
    if t is None:
        if optional:
            return
        raise ValueError(f"{name}: expected a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise ValueError(f"{name}: expected a real floating tensor, got {t.dtype} "
                         "(complex A as in S4 is not supported)")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating dtype {_FLOAT_DTYPES}, got {t.dtype}")
    if t.dim() not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        raise ValueError(f"{name}: expected a {want} tensor, got shape {tuple(t.shape)}")


def _groups(M: torch.Tensor) -> int:
    return 1 if M.dim() == 3 else M.shape[1]


def check_inputs(u, delta, A, B, C, D, z, delta_bias, u_name="u"):
    """``u_name``: what to call ``u`` in messages (the directional scan checks its delta in u's place)."""
    _need_tensor(u_name, u, (3,))
    batch, dim, length = u.shape
    _need_tensor("delta", delta, (3,))
    _need_tensor("A", A, (2,))
    _need_tensor("B", B, (3, 4))
    _need_tensor("C", C, (3, 4))
    _need_tensor("D", D, (1,), optional=True)
    _need_tensor("z", z, (3,), optional=True)
    _need_tensor("delta_bias", delta_bias, (1,), optional=True)
    if A.shape[0] != dim:
        raise ValueError(f"A: expected shape ({dim}, state) to match {u_name}'s dim {dim}, got {tuple(A.shape)}")
    state = A.shape[1]
    if state == 0:
        raise ValueError(f"A: expected at least 1 state, got shape {tuple(A.shape)}")
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"{name}: expected shape {tuple(u.shape)} (same as {u_name}), got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name}: expected shape ({dim},), got {tuple(t.shape)}")
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3 and M.shape != (batch, state, length):
            raise ValueError(f"{name}: expected shape (batch, state, length) = {(batch, state, length)}, "
                             f"got {tuple(M.shape)}")
        if M.dim() == 4:
            groups = M.shape[1]
            if M.shape != (batch, groups, state, length):
                raise ValueError(f"{name}: expected shape (batch, groups, state, length) = "
                                 f"{(batch, groups, state, length)}, got {tuple(M.shape)}")
            if groups == 0 or dim % groups:
                raise ValueError(f"{name}: dim {dim} must be a multiple of groups, got groups={groups}")
    if _groups(B) != _groups(C):  # as in mamba_ssm, a 3-D B or C is one group
        raise ValueError(f"C: expected {_groups(B)} group(s) like B {tuple(B.shape)} (a 3-D B or C is one "
                         f"group), got {_groups(C)}: shape {tuple(C.shape)}")
    devices = {name: t.device for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C),
                                                ("D", D), ("z", z), ("delta_bias", delta_bias))
               if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {', '.join(f'{k}: {v}' for k, v in devices.items())}")


# ---------------------------------------------------------------------------------------------
# the custom op


def _wide(u: torch.Tensor) -> torch.dtype:
    """The compute dtype: float32 for half, bfloat16 and float32 inputs, float64 for float64."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _reads_half(backend: str, w: torch.dtype) -> bool:
    return w == torch.float32 and getattr(_backend_module(backend), "READS_HALF", False)


def _operand(t, w, as_is: bool):
    """u, delta, B, C, z or dout for the backend: in the compute dtype ``w``, or as it is (float16,
    bfloat16 or float32) where the backend reads half precision itself (``as_is``: _reads_half)."""
    return t if as_is and t is not None and t.dtype in (torch.float16, torch.bfloat16, torch.float32) else _cast(t, w)


def _grouped(M: torch.Tensor) -> torch.Tensor:
    return M if M.dim() == 4 else M.unsqueeze(1)


def _operands(backend: str, w: torch.dtype, u, delta, A, B, C) -> tuple:
    """(u, delta, A, B, C) as the backend takes them: A in the compute dtype ``w``, B and C grouped."""
    half = _reads_half(backend, w)
    return (*(_operand(t, w, half) for t in (u, delta)), A.to(w), *(_operand(_grouped(M), w, half) for M in (B, C)))


def _ungrouped(dM: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """The gradient of B or C in that input's own layout and dtype (undoes ``_grouped``)."""
    return (dM.squeeze(1) if M.dim() == 3 else dM).to(M.dtype)


def autocast_off(op_body):
    """``op_body(u, ...)`` run with autocast off on u's device: the backends compute in the dtypes
    they are handed, but an autocast region around the op would still reach into them (the torch
    backend's float32 einsums would run in bfloat16 and then fail to mix with its float32 state)."""
    @functools.wraps(op_body)
    def body(u, *args, **kwargs):
        with torch.autocast(u.device.type, enabled=False):
            return op_body(u, *args, **kwargs)
    return body


@torch.library.custom_op("visionssm::selective_scan", mutates_args=())
@autocast_off
def _scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
             delta_softplus: bool, backend: str, save_checkpoints: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = _wide(u)
    y, last, ckpt = _backend_module(backend).forward(
        *_operands(backend, w, u, delta, A, B, C), _cast(D, w), _operand(z, w, _reads_half(backend, w)),
        _cast(delta_bias, w), delta_softplus, save_checkpoints)
    return y.to(u.dtype), last, ckpt


@_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, save_checkpoints):
    batch, dim, length = u.shape
    state = A.shape[1]
    ck = _backend_module(backend).checkpoint_shape(batch, dim, length, state) if save_checkpoints else (0,)
    return (torch.empty_like(u), u.new_empty(batch, dim, state, dtype=_wide(u)),
            u.new_empty(ck, dtype=_wide(u)))


@torch.library.custom_op("visionssm::selective_scan_backward", mutates_args=())
@autocast_off
def _scan_backward_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                      delta_bias: torch.Tensor | None, delta_softplus: bool, backend: str,
                      checkpoints: torch.Tensor, dout: torch.Tensor, dlast: torch.Tensor | None
                      ) -> list[torch.Tensor]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias); an empty tensor where an input is None."""
    w = _wide(u)
    half = _reads_half(backend, w)
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = _backend_module(backend).backward(
        *_operands(backend, w, u, delta, A, B, C), _cast(D, w), _operand(z, w, half), _cast(delta_bias, w),
        delta_softplus, checkpoints, _operand(dout, w, half), _cast(dlast, w))
    return [du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), _ungrouped(dB, B), _ungrouped(dC, C),
            u.new_empty(0) if D is None else dD.to(D.dtype), u.new_empty(0) if z is None else dz.to(z.dtype),
            u.new_empty(0) if delta_bias is None else ddelta_bias.to(delta_bias.dtype)]


@_scan_backward_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, checkpoints, dout, dlast):
    return [torch.empty_like(t) if t is not None else u.new_empty(0)
            for t in (u, delta, A, B, C, D, z, delta_bias)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.delta_softplus, ctx.backend = delta_softplus, backend


def _backward(ctx, dout, dlast, _dckpt):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    # compared by shape, not by emptiness: the checkpoints of an empty batch or sequence are empty too
    if tuple(ckpt.shape) != tuple(_backend_module(ctx.backend).checkpoint_shape(*u.shape, A.shape[1])):
        raise RuntimeError("selective_scan: backward called on a forward run without gradients enabled")
    if dout is None:
        dout = torch.zeros_like(u)
    grads = _scan_backward_op(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.backend,
                              ckpt, dout, dlast)
    grads = [g if t is not None else None for g, t in zip(grads, (u, delta, A, B, C, D, z, delta_bias))]
    return (*grads, None, None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def scan_macs(batch: int, dim: int, length: int, state: int) -> int:
    """Multiply-adds of one selective scan as the Mamba and VMamba papers count them: 9 per state
    update (9BLDN) plus one per output for the D skip (BDL)."""
    return 9 * batch * length * dim * state + batch * dim * length


@register_flop_formula(torch.ops.visionssm.selective_scan)
def _scan_flops(u_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    batch, dim, length = u_shape
    return 2 * scan_macs(batch, dim, length, A_shape[1])


@register_flop_formula(torch.ops.visionssm.selective_scan_backward)
def _scan_backward_flops(u_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    # recompute the states (one forward) plus the reverse scan and the gradient terms (about
    # twice a forward): counted as 2x the forward, like FlopCounterMode does for matmuls
    batch, dim, length = u_shape
    return 4 * scan_macs(batch, dim, length, A_shape[1])


# ---------------------------------------------------------------------------------------------


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """Mamba's selective scan (S6), with the arguments of ``mamba_ssm.selective_scan_fn``.

    Shapes: u, delta, z (batch, dim, length); A (dim, state), real; B, C (batch, state, length) or
    grouped (batch, groups, state, length) with dim a multiple of groups; D, delta_bias (dim,).

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t, y_t = C_t . h_t + D * u_t, y *= silu(z),
    with dt = softplus(delta + delta_bias) when ``delta_softplus``. The state is accumulated in
    float32 (float64 for float64 inputs); y has u's dtype; the last state (batch, dim, state) is
    float32 (float64).

    backend: "auto" (the fastest available for the device), "reference" (the plain loop, the
    specification), "cpu" (fused numba kernel), "torch" (blocked pure-PyTorch, any device),
    "triton" (GPU kernel).
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = _resolve_cached(backend, u.device.type)
    if name == "reference":
        y, last = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
    else:
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
        y, last, _ = _scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), name, needs_grad)
    return (y, last) if return_last_state else y
