"""INT8 linear layers for the transformers engine on CPU: dynamic W8A8, one scale per row.

Each ``nn.Linear`` inside the decoder blocks is replaced once, at load time: its weight is
stored in int8 with one symmetric scale per output channel (max-abs / 127), transposed so
that the product reads it row-major.  At run time every token's activation row gets its own
scale (its max-abs / 127), and the integer product runs through ``torch._int_mm`` (aten's
int8 × int8 → int32 matrix product: oneDNN with AVX512-VNNI / AMX on x86 CPUs), then is
rescaled by both scales in the activation's dtype.  Embeddings, norms, attention and the
label head stay in the model's dtype.

Why not a library wrapper: ``torch.ao.quantization.quantize_dynamic`` is deprecated for
removal in torch 2.13, and torchao's ``Int8DynamicActivationInt8WeightConfig`` ends in the same
``torch._int_mm`` but quantises the activations through its generic affine path, which
measured slower than fp32 on a 2-core AVX-512 CPU in eager mode (bench/RESULTS.md, "soi-small
on CPU").  Here the per-token quantisation is three native ops.
"""

from __future__ import annotations

import torch

from soi_batch.engines.quantize import copy_bias, replace_linears, rowwise_scale

INT8_MAX = 127.0


class Int8DynamicLinear(torch.nn.Module):
    """``y = x @ W.T (+ b)`` with W and x in int8 (symmetric, rowwise scales), int32 accumulation."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = rowwise_scale(w, INT8_MAX)
        q = torch.round(w / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.register_buffer("weight_int8_t", q.t().contiguous())
        """[in, out] int8: the second operand of ``torch._int_mm``, row-major."""
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())
        """[1, out] float32."""
        copy_bias(self, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.dtype != torch.float32:
            rows = rows.float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(INT8_MAX)
        x8 = torch.div(rows, scale).round_().to(torch.int8)
        y = torch.mul(torch._int_mm(x8, self.weight_int8_t), scale).mul_(self.weight_scale)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_decoder_int8(decoder_layers: torch.nn.ModuleList) -> int:
    """Replace every ``nn.Linear`` in ``decoder_layers`` in place; returns how many."""
    return replace_linears(decoder_layers, Int8DynamicLinear)
