"""The selective scan as standard ONNX, registered for ``torch.onnx.export(..., dynamo=True)``.

``visionssm::selective_scan`` is an opaque custom op (one node in ``torch.export``); this module
gives the ONNX exporter a translation of it into standard ONNX operators, so an exported model
runs in any ONNX runtime (onnxruntime's CPU provider included) with no custom operator.
``visionssm::directional_scan`` (``visionssm.ops.directional_scan``) is translated as the
composition it stands for: each direction's walk gathered (``Gather`` by its index map), the same
blocked scan over the K*d channels, the outputs gathered back through the inverse maps and summed.

Formulation: blocked sequential Scan, exact and overflow-free
-------------------------------------------------------------
The sequence is cut into blocks of at most ``BLOCK`` (128) steps, as even as the (static) length
allows; the tail is padded with dt = 0, i.e. decay 1 and input 0, identity steps. An outer ONNX
``Scan`` walks the blocks carrying the state h (batch, dim, state). For its block the body makes
the decays a_t = exp(dt_t A) and inputs b_t = dt_t B_t u_t in one vectorised pass, runs an inner
``Scan`` over the block's steps with the literal recurrence h_t = a_t * h_{t-1} + b_t (two nodes,
Mul and Add), and forms y_t = C_t . h_t for the whole block with one batched MatMul. The D skip
and the SiLU(z) gate are applied to all of y at the end.

* Exact: the same operations in the same order as the reference loop (``scan_reference``), so
  the exported scan agrees with it to float32 rounding (1e-6 on outputs of order 1), at any length.
* Finite: every factor is a per-step exp(dt A); nothing is divided by a cumulative decay, unlike
  the chunked cumsum "division trick" whose exp(-A cumsum dt) overflows float32 once
  |A| * sum(dt) > 88.
* Memory: one block's (batch, dim, 128, state) tensors at a time besides the inputs, never the
  (batch, dim, length, state) tensor of a one-level formulation (3 GB at 1024x1024 for VMamba's
  vanilla models).
* Speed, the price: onnxruntime pays about 6 microseconds per inner-loop iteration, so the scan
  costs about length x 6 us per layer however narrow it is. Vim-Ti's layer (dim 768, state 16,
  197 steps) runs at about PyTorch's speed; VMamba's narrow stage-1 scans (dim 384, state 1,
  3136 steps at 224) are 2-3x slower than the fused PyTorch kernel. Measured alternatives on the
  same 2-core CPU were slower: a Kogge-Stone (log-depth doubling) block body is 1.2-6x slower
  (log2(T) full passes over the block), a one-level chunked form more so, and a flat
  ``Scan`` per step with y reduced in the body (ReduceSum over a state of 16) is 2x slower.

The sequence length and the batch may be dynamic: the block count comes from the runtime shape.
``last_state`` is the true final state; ``checkpoints`` (saved for the backward only) is exported
as an empty tensor, since an ONNX graph is for inference.

Registration: the translation goes into onnxscript's torchlib registry, which
``torch.onnx.export(dynamo=True)`` reads on every export. Importing onnxscript costs about a
second, so :func:`install` (run when this module is imported) registers at once only if
onnxscript is already imported, and otherwise adds an import hook that registers the moment the
exporter imports onnxscript's registry. ``import visionssm`` is not slowed down and nothing needs
to be called by the user. Two couplings to the exporter's internals, both as in torch's own
translation of ``higher_order.scan``: the Scan node is appended to the exporter's current graph
(``torch.onnx._internal.exporter._core.current_tracer``), because onnxscript's ``op.Scan`` cannot
declare a variadic op's output count; and the registry is onnxscript's torchlib one. Tested with
torch 2.14 and onnxscript 0.7.
"""

import importlib.abc
import importlib.machinery
import sys

BLOCK = 128  # steps per outer iteration: amortises the outer body's cost, bounds its memory
_REGISTRY_MODULE = "onnxscript.function_libs.torch_lib.registration"
_OP_NAME = "visionssm::selective_scan"
_DIRECTIONAL_OP_NAME = "visionssm::directional_scan"
_state = {"registered": False}


def _translation():
    """Build the onnxscript trace-only functions, by op name (imports onnxscript; call only when it is installed)."""
    import itertools

    import onnx_ir as ir
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat, TInt

    # onnxscript reads the signature from the source and resolves annotations in module globals
    globals().update(TFloat=TFloat, TInt=TInt)
    uid = itertools.count()

    def graph(name, inputs, outputs, tape):
        """A subgraph whose values all have names unique in the model (ONNX checks SSA across subgraphs)."""
        prefix = f"vssm_scan{next(uid)}_"
        for i, v in enumerate(inputs):
            v.name = f"{prefix}in{i}"
        for i, node in enumerate(tape.nodes):
            for j, v in enumerate(node.outputs):
                v.name = f"{prefix}{i}_{j}"
        return ir.Graph(inputs, outputs, nodes=tape.nodes, name=prefix + name)

    def values(n, dtype):
        return [ir.Value(type=ir.TensorType(dtype)) for _ in range(n)]

    def step_body(dtype):
        """One time step: state h (b, g, dg, n); inputs a, b (b, g, dg, n) -> h, h."""
        tape = ir.tape.Tape()
        h, a, bu = values(3, dtype)
        h_new = tape.op("Add", [tape.op("Mul", [a, h]), bu])
        h_out = tape.op("Identity", [h_new])
        return graph("step", [h, a, bu], [h_new, h_out], tape)

    def block_body(dtype):
        """One block of T steps: states h, A (g, dg, n); inputs dt, dt*u (T, b, g, dg), B (T, b, g, 1, n)
        and C (T, b, g, n, 1).

        The decays exp(dt A) and inputs dt B u of the block are made in one vectorised pass, then an
        inner Scan runs the recurrence step by step.
        """
        tape = ir.tape.Tape()
        h, A, dt, du, B, C = values(6, dtype)
        last = tape.op("Constant", [], {"value": ir.tensor([-1], dtype=ir.DataType.INT64)})
        a = tape.op("Exp", [tape.op("Mul", [tape.op("Unsqueeze", [dt, last]), A])])  # (T, b, g, dg, n)
        bu = tape.op("Mul", [tape.op("Unsqueeze", [du, last]), B])
        h_out, hs = tape.op_multi_out("Scan", [h, a, bu], {"body": step_body(dtype), "num_scan_inputs": 2},
                                      num_outputs=2)
        # y_t = C_t . h_t for the whole block as one batched MatMul: (T, b, g, dg, n) @ (T, b, g, n, 1)
        y = tape.op("Squeeze", [tape.op("MatMul", [hs, C]), last])
        A_out = tape.op("Identity", [A])
        return graph("block", [h, A, dt, du, B, C], [h_out, A_out, y], tape)

    def scan_node(inputs, body, num_scan_inputs):
        # onnxscript's op.Scan cannot be told how many outputs a variadic op has, so the node goes
        # straight into the exporter's graph, as torch's own translation of higher_order.scan does
        from torch.onnx._internal.exporter import _core

        tracer = _core.current_tracer
        if tracer is None:
            raise RuntimeError("selective_scan ONNX translation: called outside torch.onnx.export")
        attrs = ir.convenience.convert_attributes({"body": body, "num_scan_inputs": num_scan_inputs})
        node = ir.Node("", "Scan", inputs=inputs, attributes=attrs, num_outputs=len(body.outputs),
                       version=tracer.opset.version)
        tracer.nodes.append(node)
        return node.outputs

    def scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dim, state, groups, length, in_type):
        """The scan of u, delta (b, dim, L), B, C (b, groups, state, L): (y, last_state, checkpoints)."""
        wide = ir.DataType.DOUBLE if in_type == ir.DataType.DOUBLE else ir.DataType.FLOAT
        dg = dim // groups
        T = block_length(length if isinstance(length, int) else None)

        def cast(t):
            return op.Cast(t, to=wide)

        def const(values):
            return op.Constant(value_ints=list(values))

        u, delta, A, B, C = (cast(t) for t in (u, delta, A, B, C))
        x = delta if delta_bias is None else op.Add(delta, op.Unsqueeze(cast(delta_bias), [1]))
        dt = op.Softplus(x) if delta_softplus else x

        # pad L to a multiple of T with identity steps (dt = 0: decay 1, input 0)
        L = op.Shape(u, start=2, end=3)
        pads = op.Concat(const([0]), op.Sub(op.Mul(op.Div(op.Add(L, T - 1), T), T), L), axis=0)
        zero = op.Constant(value=ir.tensor(0.0, dtype=wide))

        def blocks(t):  # (b, d, L) -> (nc, T, b, g, dg)
            t = op.Reshape(op.Pad(t, pads, zero, [2]), const([0, groups, dg, -1, T]))
            return op.Transpose(t, perm=[3, 4, 0, 1, 2])

        def blocks_bc(t):  # (b, g, n, L) -> (nc, T, b, g, n)
            t = op.Reshape(op.Pad(t, pads, zero, [3]), const([0, groups, state, -1, T]))
            return op.Transpose(t, perm=[3, 4, 0, 1, 2])

        batch = op.Shape(u, start=0, end=1)
        h0 = op.Expand(zero, op.Concat(batch, const([groups, dg, state]), axis=0))
        A_g = op.Reshape(A, const([groups, dg, state]))
        h_last, _, y = scan_node([h0, A_g, blocks(dt), blocks(op.Mul(dt, u)), op.Unsqueeze(blocks_bc(B), [4]),
                                  op.Unsqueeze(blocks_bc(C), [5])],
                                 block_body(wide), num_scan_inputs=4)
        # (nc, T, b, g, dg) -> (b, g, dg, nc, T) -> (b, d, L)
        y = op.Reshape(op.Transpose(y, perm=[2, 3, 4, 0, 1]), const([0, dim, -1]))
        y = op.Slice(y, const([0]), L, const([2]))
        if D is not None:
            y = op.Add(y, op.Mul(op.Unsqueeze(cast(D), [1]), u))
        if z is not None:
            z = cast(z)
            y = op.Mul(y, op.Mul(z, op.Sigmoid(z)))
        last_state = op.Reshape(h_last, const([0, dim, state]))
        checkpoints = op.Cast(op.ConstantOfShape(const([0])), to=wide)
        return y, last_state, checkpoints

    def static_sizes(u, delta, A, B, C, index_maps=None):
        if any(t.shape is None for t in (u, delta, A, B, C)) or (index_maps is not None and index_maps.shape is None):
            raise ValueError("selective_scan ONNX export: the ranks of u, delta, A, B, C (and index_maps) "
                             "must be known")
        # a 3-D B or C is one group; the input checks made the group counts of B and C agree
        groups = next((t.shape[1] for t in (B, C) if len(t.shape) == 4), 1)
        sizes = (delta.shape[1], A.shape[1], groups) + (() if index_maps is None else (index_maps.shape[0],))
        if not all(isinstance(s, int) for s in sizes):
            raise ValueError(f"selective_scan ONNX export: dim, state, groups (and the number of directions) must "
                             f"be static, got delta {delta.shape}, A {A.shape}, B {B.shape}"
                             + ("" if index_maps is None else f", index_maps {index_maps.shape}"))
        return sizes

    def grouped(t):
        return op.Unsqueeze(t, [1]) if len(t.shape) == 3 else t  # (b, g, n, L)

    def selective_scan_onnx(
        u: TFloat, delta: TFloat, A: TFloat, B: TFloat, C: TFloat,
        D: TFloat | None = None, z: TFloat | None = None, delta_bias: TFloat | None = None,
        delta_softplus: bool = False, backend: str = "auto", save_checkpoints: bool = False,
    ):
        """visionssm::selective_scan -> (y, last_state, checkpoints) in standard ONNX (see the module doc)."""
        dim, state, groups = static_sizes(u, delta, A, B, C)
        y, last_state, checkpoints = scan(u, delta, A, grouped(B), grouped(C), D, z, delta_bias, delta_softplus,
                                          dim, state, groups, u.shape[2], u.dtype)
        return op.Cast(y, to=u.dtype), last_state, checkpoints

    def directional_scan_onnx(
        u: TFloat, delta: TFloat, A: TFloat, B: TFloat, C: TFloat, index_maps: TInt,
        D: TFloat | None = None, z: TFloat | None = None, delta_bias: TFloat | None = None,
        delta_softplus: bool = False, backend: str = "auto", save_checkpoints: bool = False,
    ):
        """visionssm::directional_scan -> (y, last_state, checkpoints, empty): every direction's walk
        gathered, one scan, the outputs gathered back through the inverse maps and summed."""
        kd, state, groups, K = static_sizes(u, delta, A, B, C, index_maps)
        d, shared = kd // K, u.shape[1] != kd
        maps = op.Cast(index_maps, to=ir.DataType.INT64)
        walks = [op.Gather(maps, op.Constant(value_int=k), axis=0) for k in range(K)]  # (L,) each

        def take(x, axis, shared_by_all=False):
            """Direction k's part of x (its 1/K of the channels, or all of a shared x) along walk k."""
            c = x.shape[1] if shared_by_all else x.shape[1] // K
            return op.Concat(*(op.Gather(x if shared_by_all else op.Slice(
                x, op.Constant(value_ints=[k * c]), op.Constant(value_ints=[(k + 1) * c]),
                op.Constant(value_ints=[1])), walks[k], axis=axis) for k in range(K)), axis=1)

        ys, last_state, checkpoints = scan(
            take(u, 2, shared), take(delta, 2), A, take(grouped(B), 3), take(grouped(C), 3), D, None, delta_bias,
            delta_softplus, kd, state, groups, u.shape[2], u.dtype)
        # inverse[k, maps[k, t]] = t: the step of walk k at each position (every entry is written)
        steps = op.Expand(op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(maps, start=1, end=2)),
                                   op.Constant(value_int=1)), op.Shape(maps))
        inverse = op.ScatterElements(maps, maps, steps, axis=1)
        y = None
        for k in range(K):
            part = op.Gather(op.Slice(ys, op.Constant(value_ints=[k * d]), op.Constant(value_ints=[(k + 1) * d]),
                                      op.Constant(value_ints=[1])),
                             op.Gather(inverse, op.Constant(value_int=k), axis=0), axis=2)
            y = part if y is None else op.Add(y, part)
        wide = ir.DataType.DOUBLE if u.dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT
        if z is not None:
            z = op.Cast(z, to=wide)
            y = op.Mul(y, op.Mul(z, op.Sigmoid(z)))
        return op.Cast(y, to=u.dtype), last_state, checkpoints, op.Cast(op.ConstantOfShape(
            op.Constant(value_ints=[0])), to=wide)

    return {_OP_NAME: selective_scan_onnx, _DIRECTIONAL_OP_NAME: directional_scan_onnx}


def block_length(length: int | None) -> int:
    """Steps per outer block: BLOCK for a dynamic length, else as even as possible (little padding)."""
    if length is None or length <= 0:
        return BLOCK
    n_blocks = -(-length // BLOCK)
    return -(-length // n_blocks)


def register() -> None:
    """Add the translation to onnxscript's torchlib registry (imports onnxscript); idempotent."""
    from onnxscript.function_libs.torch_lib.registration import torch_op  # may run the hook, which registers

    if _state["registered"]:
        return
    for name, fn in _translation().items():
        torch_op(name, trace_only=True)(fn)
    _state["registered"] = True


class _RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: once onnxscript's torchlib registry module is loaded, register the translation."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _REGISTRY_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _remove_hook()
        sys.modules[module.__name__] = module  # register() imports it by name
        try:
            register()
        except Exception as e:  # never break the exporter's import; it reports the op as missing
            import warnings

            warnings.warn(f"visionssm: could not register the ONNX translation of the selective scan: {e}",
                          stacklevel=2)


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterImport)]


def install() -> None:
    """Register now if onnxscript's registry is loaded, else when it is (no import cost now)."""
    if _state["registered"]:
        return
    if _REGISTRY_MODULE in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


install()
