"""Multiply-adds of a model, counted with ``FlopCounterMode`` on fake tensors (nothing is computed),
with the formulas it lacks or gets wrong supplied here."""

from __future__ import annotations

import math

import torch


def _flop_mapping():
    """Formulas FlopCounterMode lacks or gets wrong (torch 2.4-2.14):

    * the CPU flash-attention kernel that SDPA runs on the CPU is not counted at all;
    * ``convolution_backward`` ignores ``groups`` for the weight gradient (a depthwise conv's
      backward counts as a dense conv: C times too much); each gradient costs one forward conv;
    * ``addcmul``: a multiply-add per output element, counted because Vim's depthwise convs are
      written as shifted ``addcmul_`` (``layers.mamba.bidirectional_conv_silu``: one per tap, over
      the steps that tap reaches). Their backward is elementwise multiplies and sums, which are not
      counted: 2 x 4 x length x d_inner x 2 per block, under 1% of a Vim's backward.
    """
    import torch.utils.flop_counter as fc

    aten = torch.ops.aten

    def sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(q, k, v)

    def sdpa_cpu_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    def conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                      _output_padding, _groups, output_mask, out_shape=None, **kwargs):
        # w_shape is (C_out, C_in / groups, *k), so the forward formula already accounts for groups
        one = fc.conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
        return one * (int(bool(output_mask[0])) + int(bool(output_mask[1])))

    def addcmul(self_shape, *args, out_shape=None, **kwargs):
        return 2 * math.prod(out_shape)

    return {aten.addcmul: addcmul, aten.addcmul_: addcmul,
            aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_cpu_backward,
            aten.convolution_backward: conv_backward}


def count_macs(model: torch.nn.Module, size: tuple[int, int], backward: bool = False,
               by_op: bool = False) -> float | dict:
    """Multiply-adds of one image through ``model`` (with ``backward``: forward plus backward).

    Counted by ``FlopCounterMode`` on fake tensors (nothing is computed or allocated), as
    FLOPs / 2, the papers' convention; the selective scan counts 9BLDN + BDL (forward) and twice
    that (backward). Elementwise ops are not counted. ``by_op`` returns {op name: MACs}.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    in_chans = getattr(model, "in_chans", None) or model.pretrained_cfg.get("input_size", (3,))[0]
    device = next(model.parameters()).device
    model.eval()  # no running-stat updates on fake tensors
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.randn(1, in_chans, *size, device=device)  # as in training: no input gradient
            with torch.set_grad_enabled(backward), FlopCounterMode(display=False,
                                                                    custom_mapping=_flop_mapping()) as counter:
                out = model(x)
                if backward:
                    out.float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)  # the fake backward left fake gradients behind
        model.train(was_training)
    if by_op:
        return {str(op): n / 2 for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / 2
